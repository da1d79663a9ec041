"""Byte-level pre-training: a denoising objective on unlabeled text.

15% of the real bytes are picked; 80% of those become the mask id (UNK = 2), 10% a random byte,
10% stay; the `BytePretrainer` (the classifier's ByteEncoder + a per-position head that predicts the
d_s bytes behind each GBST position) must restore the original ids at the picked positions. The
encoder's weights then initialise the classifier, which is fine-tuned as before.
"""
from __future__ import annotations

import numpy as np
import keras

from bq_layers import OFFSET, PAD_ID, UNK_ID, EOS_ID, encode_bytes
from bq_train import ProgressCallback, predict_padded


def corrupt(ids: np.ndarray, rng: np.random.Generator, rate: float = 0.15):
    """(corrupted ids, weights) where weights = 1 at the picked positions (only real bytes, never
    PAD/EOS). The same shape as ids."""
    ids = np.asarray(ids)
    real = ids >= OFFSET
    pick = real & (rng.random(ids.shape) < rate)
    r = rng.random(ids.shape)
    out = ids.copy()
    out[pick & (r < 0.8)] = UNK_ID
    rand = pick & (r >= 0.8) & (r < 0.9)
    out[rand] = rng.integers(OFFSET, 256 + OFFSET, size=int(rand.sum()))
    return out.astype(np.int32), pick.astype(np.float32)


def chunk_texts(texts, max_bytes: int, rng: np.random.Generator):
    """Texts longer than max_bytes are cut into pieces (at a random offset) so that pre-training sees
    full-length windows."""
    out = []
    for t in texts:
        b = t.encode("utf-8")
        if len(b) <= max_bytes:
            out.append(b)
            continue
        start = int(rng.integers(0, max(1, len(b) - max_bytes)))
        out.append(b[start:start + max_bytes])
    return out


class MaskedByteLoss(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)


def pretrain(pretrainer, texts, max_len: int, steps: int, batch_size: int = 32, lr: float = 2e-3,
             seed: int = 0, desc: str = "pre-train"):
    """Train `pretrainer` to restore corrupted bytes for `steps` batches. Returns (losses, eval)
    where eval = masked-byte accuracy on a held-out 5% of the texts before/after."""
    rng = np.random.default_rng(seed)
    texts = list(texts)
    order = rng.permutation(len(texts))
    n_hold = max(32, len(texts) // 20)
    hold = [texts[i] for i in order[:n_hold]]
    train = [texts[i] for i in order[n_hold:]]
    need = steps * batch_size
    reps = int(np.ceil(need / len(train)))
    pool = [train[i] for i in np.concatenate([rng.permutation(len(train)) for _ in range(reps)])[:need]]
    clean = encode_bytes(chunk_texts(pool, max_len - 1, rng), max_len)
    noisy, w = corrupt(clean, rng)
    hclean = encode_bytes(chunk_texts(hold, max_len - 1, rng), max_len)
    hnoisy, hw = corrupt(hclean, rng)

    def masked_acc():
        pred = np.argmax(predict_padded(pretrainer, hnoisy, 128), axis=-1)
        return float(((pred == hclean) * hw).sum() / max(hw.sum(), 1))

    before = masked_acc()
    sched = keras.optimizers.schedules.PolynomialDecay(lr, decay_steps=steps, end_learning_rate=lr * 0.05)
    pretrainer.compile(optimizer=keras.optimizers.Adam(sched, clipnorm=1.0), loss=MaskedByteLoss())
    cb = ProgressCallback(steps, desc)
    pretrainer.fit(noisy, clean, sample_weight=w, batch_size=batch_size, epochs=1, shuffle=False,
                   verbose=0, callbacks=[cb])
    return cb.losses, {"masked_byte_acc_before": before, "masked_byte_acc_after": masked_acc(),
                       "n_pretrain_texts": len(train)}


def transfer_encoder(pretrainer, classifier) -> None:
    """Copy the pre-trained ByteEncoder (embedding, bottleneck, GBST, QRNN stack, and their
    quantization ranges) into a classifier built with the same config."""
    src, dst = pretrainer.byte_encoder, classifier.byte_encoder
    assert len(src.weights) == len(dst.weights), "configs differ"
    dst.set_weights(src.get_weights())
