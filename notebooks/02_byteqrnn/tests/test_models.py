"""The three byte models share the embedding + GBST front; sizes; pre-training transfer."""
import numpy as np
import pytest

import bq_models as M
import bq_pretrain as P
import bq_train as T
from bq_layers import OFFSET, UNK_ID, EOS_ID, encode_bytes
from backend_utils import N

TINY = M.ByteConfig(max_len=32, embed_dim=8, bottleneck=8, state=8, layers=2, heads=2,
                    gbst_downsample=2, funnel_blocks=2)


@pytest.mark.parametrize("enc", M.ENCODERS)
def test_models_build_and_share_the_front(enc):
    cfg = TINY.with_(encoder=enc)
    m = M.build_classifier(cfg)
    x = encode_bytes(["hola", "ciao a tutti"], 32)
    assert m(x).shape == (2, 1)
    enc_layer = m.byte_encoder
    assert type(enc_layer.embedding).__name__ == "QEmbedding" and enc_layer.embedding.vocab_size == 259
    assert type(enc_layer.gbst).__name__ == "GBST"
    assert type(enc_layer.encoder).__name__ == ("BiQRNNStack" if enc == "qrnn" else "TransformerEncoder")
    h, mask = m.byte_encoder(x)
    expect_t = 16 // (2 if enc == "funnel" else 1)
    assert h.shape[1] == expect_t and mask.shape == (2, expect_t)


def test_full_size_byteqrnn_matches_the_reference_size():
    """SeqFlowLite's ByteQRNN (128 wide, 3 bi-QRNN layers, state 128) has about 1.6M parameters."""
    m = M.build_classifier(M.ByteConfig(max_len=32))
    sizes = M.model_sizes(m)
    assert 1.5e6 < sizes["params"] < 1.7e6
    assert sizes["int8_mb"] < sizes["float_mb"] / 3.5


def test_corruption_touches_only_real_bytes():
    rng = np.random.default_rng(0)
    ids = encode_bytes(["x" * 50] * 40, 64)
    noisy, w = P.corrupt(ids, rng, rate=0.15)
    assert noisy.shape == ids.shape and w.shape == ids.shape
    assert (w[ids < OFFSET] == 0).all()                       # PAD and EOS never picked
    assert 0.1 < w[ids >= OFFSET].mean() < 0.2
    assert ((noisy == UNK_ID) <= (w > 0)).all()               # masks only at picked positions
    assert (noisy[w == 0] == ids[w == 0]).all()


def test_pretrain_reduces_loss_and_transfers_encoder():
    cfg = TINY.with_(encoder="qrnn", layers=1)
    pre = M.build_pretrainer(cfg)
    assert pre(encode_bytes(["abc"], 32)).shape == (1, 32, 259)
    texts = ["the cat sat on the mat", "a dog and a cat", "the mat is red"] * 40
    losses, ev = P.pretrain(pre, texts, max_len=32, steps=30, batch_size=16, lr=5e-3)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    clf = M.build_classifier(cfg)
    x = encode_bytes(["the cat"], 32)
    assert not np.allclose(N(clf.byte_encoder(x)[0]), N(pre.byte_encoder(x)[0]))
    P.transfer_encoder(pre, clf)
    assert np.allclose(N(clf.byte_encoder(x)[0]), N(pre.byte_encoder(x)[0]))


def test_predict_rejects_out_of_range_ids():
    m = M.build_classifier(TINY)
    x = encode_bytes(["hola"], 32)
    x[0, 5] = 259
    with pytest.raises(ValueError, match="0..258"):
        T.predict_logits(m, x)


WEIGHTS_SCRIPT = """
import sys, numpy as np
sys.path[:0] = sys.argv[3].split("|")
import bq_models as M, bq_train as T
from bq_layers import encode_bytes
x = encode_bytes(["hola amigos", "ciao", "el gato"] * 11, 32)
for quantize in (True, False):
    cfg = M.ByteConfig(max_len=32, embed_dim=8, bottleneck=8, state=8, layers=1, pooling=sys.argv[2],
                       quantize=quantize)
    m = M.build_classifier(cfg)
    T.train_classifier(m, x, np.array([[1.0], [0.0], [1.0]] * 11, np.float32), steps=1, batch_size=16,
                       jit_compile=False)
    path = sys.argv[1] + ("" if quantize else ".float")
    m.save_weights(path + ".weights.h5")
    np.savez(path + ".npz", out=np.asarray(m(x[:3], training=False)),
             **{f"w{i}": np.asarray(w) for i, w in enumerate(m.get_weights())})
"""


def test_weights_trained_under_the_other_backend_load_and_give_the_same_outputs(tmp_path):
    """.weights.h5 is backend-neutral: classifiers trained (1 step, scan pooling, the GPU form; no XLA compile
    to keep the test short) in a subprocess under the other backend load here, with the scan, the loop and the
    doubling pooling (the export form). Every variable (weights and the fake-quant ranges) arrives bit-identical; the
    float model gives the same logits; the 8-bit model the same logits up to quantization noise."""
    import os
    import subprocess
    import sys
    from backend_utils import BACKEND
    other = {"tensorflow": "jax", "jax": "tensorflow"}[BACKEND]
    base = str(tmp_path / "clf")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND=other)
    res = subprocess.run([sys.executable, "-c", WEIGHTS_SCRIPT, base, "scan", "|".join([here] + sys.path)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    x = encode_bytes(["hola amigos", "ciao", "el gato"], 32)
    for quantize, path in ((True, base), (False, base + ".float")):
        saved = np.load(path + ".npz")
        for pooling in ("scan", "loop", "doubling"):
            m = M.build_classifier(TINY.with_(layers=1, pooling=pooling, quantize=quantize))
            m.load_weights(path + ".weights.h5")
            weights = m.get_weights()
            assert len(weights) == len(saved.files) - 1
            for i, w in enumerate(weights):
                assert np.array_equal(np.asarray(w), saved[f"w{i}"]), (quantize, pooling, i)
            out = N(m(x, training=False))
            if not quantize:
                assert np.allclose(out, saved["out"], rtol=1e-4, atol=1e-6)
            else:
                # identical weights, but an activation within float rounding of an 8-bit step boundary can land
                # on either side under the other backend (TF's kernel rounds half up, Keras' JAX path rounds
                # half to even, and CPUs sum in different orders), so allow a few quantization steps
                assert np.allclose(out, saved["out"], atol=3e-3), (pooling, out, saved["out"])
