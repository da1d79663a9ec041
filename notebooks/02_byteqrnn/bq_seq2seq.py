"""Byte-level seq2seq: ByteQRNN encoder + Transformer decoder with a merged-attention sublayer.

Merged attention (SeqFlowLite's TransformerUniformAttnDecoder; Zhang et al. 2019 "MAtt"): the decoder's
self-attention is replaced by *uniform* attention over the prefix, i.e. the running mean
g_t = (1/t) sum_{s<=t} y_s, and it is summed with encoder-decoder attention in ONE sublayer. At decode
time the self-attention cache is the running sum: a fixed [B, 1, D] tensor per layer, so a step costs
the same at output length 16 or 256. A standard decoder's key/value cache grows by one row per step
(`StandardDecoder`, for the timing comparison).

Beam search follows SeqFlowLite's tflite_ops/beam_search.cc: top 2*beam candidates per step, EOS
candidates go to a finished list scored with the GNMT length penalty ((5+t)/6)^alpha; in the quantized
variant the decoder's logits are uint8 and per-step log-probabilities come from an exp lookup table
(`quantized_log_probs`).

Task: restore a byte string from a corrupted copy (deleted, substituted, duplicated, swapped
characters), from English fortunes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import keras
from keras import ops

from bq_layers import (EOS_ID, OFFSET, PAD_ID, UNK_ID, VOCAB_SIZE, ActivationQuant, QDense, QEmbedding,
                       check_ids, encode_bytes)
from bq_backend import jit
from bq_models import ByteConfig, ByteEncoder, MultiHeadAttention
from bq_train import ProgressCallback

START_ID = PAD_ID  # the decoder starts from PAD (T5 style)


# ----------------------------------------------------------------------------------------------
# Data: corrupted-text restoration
# ----------------------------------------------------------------------------------------------

def make_segments(texts, max_bytes: int, min_bytes: int = 12, rng=None) -> list:
    """Printable-ASCII segments of at most max_bytes, cut at spaces, from the texts."""
    rng = rng or np.random.default_rng(0)
    out = []
    for t in texts:
        words = "".join(c if 32 <= ord(c) < 127 else " " for c in t).split()
        cur = ""
        for w in words:
            if len(cur) + len(w) + 1 > max_bytes:
                if len(cur) >= min_bytes:
                    out.append(cur)
                cur = w[:max_bytes]
            else:
                cur = f"{cur} {w}" if cur else w
        if len(cur) >= min_bytes:
            out.append(cur)
    return out


def corrupt_text(s: str, rng: np.random.Generator, p: float = 0.08) -> str:
    """Per character, with probability p: delete, substitute (random lowercase letter), duplicate,
    or swap with the next character."""
    chars, out, i = list(s), [], 0
    while i < len(chars):
        c = chars[i]
        if rng.random() < p:
            k = rng.integers(4)
            if k == 0:
                pass
            elif k == 1:
                out.append(chr(int(rng.integers(97, 123))))
            elif k == 2:
                out += [c, c]
            elif i + 1 < len(chars):
                out += [chars[i + 1], c]
                i += 1
            else:
                out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def make_pairs(segments, src_len: int, tgt_len: int, rng, p: float = 0.08):
    """(src ids [N, src_len], decoder input [N, tgt_len], target [N, tgt_len]) for teacher forcing."""
    noisy = [corrupt_text(s, rng, p) for s in segments]
    src = encode_bytes(noisy, src_len)
    tgt = encode_bytes(segments, tgt_len)
    dec_in = np.concatenate([np.full((len(tgt), 1), START_ID, np.int32), tgt[:, :-1]], axis=1)
    dec_in[dec_in == EOS_ID] = PAD_ID  # nothing is fed after EOS
    return src, dec_in, tgt, noisy


# ----------------------------------------------------------------------------------------------
# Decoder layers
# ----------------------------------------------------------------------------------------------

class CrossAttention(keras.layers.Layer):
    """Encoder-decoder attention whose memory keys/values can be computed once per input."""

    def __init__(self, dim, heads, quantize, **kw):
        super().__init__(**kw)
        self.mha = MultiHeadAttention(dim, heads, quantize)

    def build(self, *shapes):  # sublayers build on first use
        self.built = True

    def memory_kv(self, mem, training=None):
        return (self.mha._split(self.mha.k(mem, training=training)),
                self.mha._split(self.mha.v(mem, training=training)))

    def call(self, y, k, v, mem_mask, training=None):
        m = self.mha
        q = m._split(m.q(y, training=training))
        return m.o(m.attend(q, k, v, mem_mask), training=training)


class MergedAttentionLayer(keras.layers.Layer):
    """One decoder layer: [uniform self-attention + cross-attention] (one merged sublayer) -> FFN."""

    def __init__(self, dim: int, heads: int, ffn_mult: int = 2, dropout: float = 0.1, quantize: bool = True,
                 seed: int = 0, **kw):
        super().__init__(**kw)
        self.dim = dim
        self.uniform = QDense(dim, use_bias=False, quantize=quantize)
        self.cross = CrossAttention(dim, heads, quantize)
        self.prx = QDense(dim, use_bias=False, quantize=quantize)
        self.q0 = ActivationQuant(quantize)
        self.ln1 = keras.layers.LayerNormalization()
        self.ln2 = keras.layers.LayerNormalization()
        self.up = QDense(dim * ffn_mult, activation="relu", quantize=quantize)
        self.down = QDense(dim, quantize=quantize)
        self.drop = keras.layers.Dropout(dropout, seed=seed)

    def _merge(self, y, avg, k, v, mem_mask, training):
        h = self.q0(self.uniform(avg, training=training) + self.cross(y, k, v, mem_mask, training=training),
                    training=training)
        y = self.ln1(y + self.drop(self.prx(h, training=training), training=training))
        return self.ln2(y + self.drop(self.down(self.up(y, training=training), training=training),
                                      training=training))

    def call(self, y, k, v, mem_mask, training=None):
        """Parallel form for training: the uniform attention is a cumulative mean over positions."""
        t = ops.arange(1, y.shape[1] + 1, dtype="float32")[None, :, None]
        avg = ops.cumsum(y, axis=1) / t
        return self._merge(y, avg, k, v, mem_mask, training)

    def step(self, y_t, t, cache_sum, k, v, mem_mask):
        """One decode step: y_t [B, 1, D], t (1-based float), cache_sum [B, 1, D] (fixed size)."""
        cache_sum = cache_sum + y_t
        return self._merge(y_t, cache_sum / t, k, v, mem_mask, False), cache_sum


class StandardDecoderLayer(keras.layers.Layer):
    """A standard Transformer decoder layer (causal self-attention, cross-attention, FFN: three
    sublayers) with a growing key/value cache; used to time decoding against merged attention."""

    def __init__(self, dim: int, heads: int, ffn_mult: int = 2, quantize: bool = False, **kw):
        super().__init__(**kw)
        self.self_att = MultiHeadAttention(dim, heads, quantize)
        self.cross = CrossAttention(dim, heads, quantize)
        self.ln0 = keras.layers.LayerNormalization()
        self.ln1 = keras.layers.LayerNormalization()
        self.ln2 = keras.layers.LayerNormalization()
        self.up = QDense(dim * ffn_mult, activation="relu", quantize=quantize)
        self.down = QDense(dim, quantize=quantize)

    def step(self, y_t, k_cache, v_cache, k, v, mem_mask):
        m = self.self_att
        k_cache = ops.concatenate([k_cache, m._split(m.k(y_t))], axis=2)   # [B, H, t, dh]: grows each step
        v_cache = ops.concatenate([v_cache, m._split(m.v(y_t))], axis=2)
        sa = m.o(m.attend(m._split(m.q(y_t)), k_cache, v_cache))
        y = self.ln0(y_t + sa)
        y = self.ln1(y + self.cross(y, k, v, mem_mask))
        return self.ln2(y + self.down(self.up(y))), k_cache, v_cache


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Seq2SeqConfig:
    src_len: int = 64
    tgt_len: int = 64
    dim: int = 128
    dec_layers: int = 2
    heads: int = 4
    ffn_mult: int = 2
    dropout: float = 0.1
    quantize: bool = True
    # LayerNorm (then 8-bit fake quant) on the encoder memory before the decoders' cross-attention keys/values.
    # Without it the memory's scale is free: in a full-size run on one H200 the 8-bit ranges tracked on the
    # cross-attention path grew to 26,000 wide (rounding steps of ~100), and the decoder fell to a unigram-like
    # predictor (results/seq2seq_recipe_probe.json).
    mem_norm: bool = True
    encoder: ByteConfig = field(default_factory=lambda: ByteConfig(
        max_len=64, embed_dim=64, bottleneck=64, gbst_downsample=2, state=64, layers=2, num_classes=0))


class ByteSeq2Seq(keras.Model):
    def __init__(self, cfg: Seq2SeqConfig, **kw):
        super().__init__(**kw)
        self.cfg = cfg
        self.byte_encoder = ByteEncoder(cfg.encoder.with_(max_len=cfg.src_len, quantize=cfg.quantize),
                                        name="byte_encoder")
        self.mem_proj = QDense(cfg.dim, quantize=cfg.quantize, name="mem_proj")
        if cfg.mem_norm:
            self.mem_ln = keras.layers.LayerNormalization(name="mem_norm")
            self.mem_q = ActivationQuant(cfg.quantize, name="mem_norm_q")
        self.embed = QEmbedding(VOCAB_SIZE, cfg.dim, quantize=cfg.quantize, name="dec_embedding")
        self.ln_in = keras.layers.LayerNormalization()
        self.in_q = ActivationQuant(cfg.quantize)
        self.dec = [MergedAttentionLayer(cfg.dim, cfg.heads, cfg.ffn_mult, cfg.dropout, cfg.quantize, seed=i,
                                         name=f"matt_{i}") for i in range(cfg.dec_layers)]
        self.out = QDense(VOCAB_SIZE, quantize=cfg.quantize, quantize_output=False, name="byte_logits")

    def build(self, input_shape=None):
        self.pos = self.add_weight(shape=(self.cfg.tgt_len, self.cfg.dim), name="dec_pos",
                                   initializer=keras.initializers.RandomNormal(stddev=0.02))

    def encode(self, src, training=None):
        h, mask = self.byte_encoder(src, training=training)
        mem = self.mem_proj(h, training=training)
        if self.cfg.mem_norm:
            mem = self.mem_q(self.mem_ln(mem), training=training)
        kv = [layer.cross.memory_kv(mem, training=training) for layer in self.dec]
        return kv, mask

    def _inputs(self, ids, pos, training):
        return self.in_q(self.ln_in(self.embed(ids) + pos), training=training)

    def call(self, inputs, training=None):
        src, dec_in = inputs
        kv, mask = self.encode(src, training=training)
        y = self._inputs(dec_in, self.pos[None, : dec_in.shape[1]], training)
        for layer, (k, v) in zip(self.dec, kv):
            y = layer(y, k, v, mask, training=training)
        return self.out(y, training=training)

    def step(self, prev_ids, t, caches, kv, mask):
        """prev_ids [B] int32, t scalar int32 (1-based) -> logits [B, 259], new caches."""
        y = self._inputs(prev_ids[:, None], ops.take(self.pos, t - 1, axis=0)[None, None], False)
        tf_t = ops.cast(t, "float32")
        new = []
        for layer, c, (k, v) in zip(self.dec, caches, kv):
            y, c = layer.step(y, tf_t, c, k, v, mask)
            new.append(c)
        return self.out(y)[:, 0], new


def widest_quant_range(model) -> float:
    """The widest range (max - min) any of the model's 8-bit activation quantizers tracks: its step is that / 255.
    A decoder whose ranges reach the thousands has lost its small signals to rounding."""
    widths = [float(layer.max_val.numpy()) - float(layer.min_val.numpy())
              for layer in model._flatten_layers(include_self=False, recursive=True)
              if isinstance(layer, ActivationQuant) and layer.quantize and layer.fixed_range is None]
    return max(widths, default=0.0)


def build_seq2seq(cfg: Seq2SeqConfig) -> ByteSeq2Seq:
    m = ByteSeq2Seq(cfg)
    m((np.zeros((1, cfg.src_len), np.int32), np.zeros((1, cfg.tgt_len), np.int32)))
    return m


class MaskedCE(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)


def train_seq2seq(model, src, dec_in, tgt, steps: int, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                  warmup_steps: int = 0, stop_after: int = None):
    """Adam (clipnorm 1.0), masked cross-entropy, the learning rate of bq_train.lr_schedule (linear decay to lr/20
    over `steps`, after a linear warmup over `warmup_steps`: without one, and without Seq2SeqConfig.mem_norm, the
    decoder fell to a unigram-like predictor at full size, results/seq2seq_recipe_probe.json). `stop_after` trains
    only the first that many of the `steps` (same batches and schedule: for probes). Returns Keras' running-mean
    loss per step."""
    from bq_train import lr_schedule
    rng = np.random.default_rng(seed)
    n = len(src)
    order = np.concatenate([rng.permutation(n) for _ in range(int(np.ceil(steps * batch_size / n)))])
    n_steps = min(steps, stop_after or steps)
    order = order[: n_steps * batch_size]
    w = (tgt != PAD_ID).astype(np.float32)
    model.compile(optimizer=keras.optimizers.Adam(lr_schedule(lr, steps, warmup_steps), clipnorm=1.0),
                  loss=MaskedCE())
    cb = ProgressCallback(n_steps, "seq2seq train")
    model.fit((src[order], dec_in[order]), tgt[order], sample_weight=w[order], batch_size=batch_size,
              epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    return cb.losses


# ----------------------------------------------------------------------------------------------
# Beam search (float vs uint8 scores)
# ----------------------------------------------------------------------------------------------

@dataclass
class UInt8Quant:
    """Affine uint8 quantization of logits: q = clip(round(x / scale) + zero, 0, 255)."""
    scale: float
    zero: int

    @classmethod
    def calibrate(cls, logits) -> "UInt8Quant":
        lo, hi = float(np.min(logits)), float(np.max(logits))
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max(hi - lo, 1e-6) / 255.0
        return cls(scale, int(np.clip(round(-lo / scale), 0, 255)))

    def quantize(self, x) -> np.ndarray:
        return np.clip(np.round(np.asarray(x) / self.scale) + self.zero, 0, 255).astype(np.uint8)


def float_log_probs(logits, mask) -> np.ndarray:
    x = np.where(mask, logits.astype(np.float64), -np.inf)
    m = x.max(axis=-1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))).astype(np.float32)


def quantized_log_probs(q: np.ndarray, scale: float, mask) -> np.ndarray:
    """log-softmax of uint8 logits with an exp lookup table, as SeqFlowLite's
    FindTopKQuantizedFromLogits: table[255 - v] = exp(-scale * v); the zero point cancels."""
    table = np.exp(-scale * np.arange(256, dtype=np.float64))[::-1]          # table[255 - v]
    qi = q.astype(np.int32)
    qmax = np.where(mask, qi, 0).max(axis=-1, keepdims=True)
    e = np.where(mask, table[255 - (qmax - qi).clip(0, 255)], 0.0)            # exp(scale*(q - qmax))
    lse = np.log(e.sum(axis=-1, keepdims=True))
    out = scale * (qi - qmax) - lse
    return np.where(mask, out, -np.inf).astype(np.float32)


def length_penalty(step: int, alpha: float) -> float:
    return ((5.0 + step) / 6.0) ** alpha


def beam_search(model, src, beam: int = 4, max_len: int = None, alpha: float = 0.6,
                quant: UInt8Quant = None, step_fn=None):
    """Batched beam search. Returns (list of best id sequences without EOS, list of their scores).
    With `quant`, the step logits are quantized to uint8 before scoring."""
    cfg = model.cfg
    max_len = max_len or cfg.tgt_len
    src = check_ids(src, cfg.src_len)
    n = len(src)
    kv, mask = model.encode(ops.convert_to_tensor(src), training=False)
    rep = lambda x: ops.repeat(x, beam, axis=0)
    kv = [(rep(k), rep(v)) for k, v in kv]
    mask = rep(mask)
    caches = [ops.zeros((n * beam, 1, cfg.dim)) for _ in model.dec]
    step_fn = step_fn or make_step_fn(model)
    vocab_mask = np.ones(VOCAB_SIZE, bool)
    vocab_mask[[PAD_ID, UNK_ID]] = False
    scores = np.full((n, beam), -np.inf, np.float64)
    scores[:, 0] = 0.0
    seqs = np.zeros((n, beam, max_len), np.int32)
    prev = np.full(n * beam, START_ID, np.int32)
    finished = [[] for _ in range(n)]
    done = np.zeros(n, bool)
    for i in range(max_len):
        logits, caches = step_fn(ops.convert_to_tensor(prev), ops.convert_to_tensor(np.int32(i + 1)), caches, kv, mask)
        logits = ops.convert_to_numpy(logits).reshape(n, beam, VOCAB_SIZE)
        if quant is None:
            logp = float_log_probs(logits, vocab_mask)
        else:
            logp = quantized_log_probs(quant.quantize(logits), quant.scale, vocab_mask)
        cand = (scores[:, :, None] + logp).reshape(n, -1)
        top = np.argsort(-cand, axis=1, kind="stable")[:, : 2 * beam]
        new_scores = np.full((n, beam), -np.inf)
        new_seqs = np.zeros_like(seqs)
        src_beam = np.zeros((n, beam), np.int64)
        new_prev = np.full((n, beam), PAD_ID, np.int32)
        lp, lp_max = length_penalty(i + 1, alpha), length_penalty(max_len, alpha)
        for b in range(n):
            if done[b]:
                continue
            k = 0
            for flat in top[b]:
                s = cand[b, flat]
                if not np.isfinite(s):
                    break
                ob, tok = divmod(int(flat), VOCAB_SIZE)
                if tok == EOS_ID:
                    finished[b].append((s / lp, seqs[b, ob, :i].copy()))
                elif k < beam:
                    new_scores[b, k] = s
                    new_seqs[b, k] = seqs[b, ob]
                    new_seqs[b, k, i] = tok
                    src_beam[b, k] = ob
                    new_prev[b, k] = tok
                    k += 1
            best_fin = max((f[0] for f in finished[b]), default=-np.inf)
            if k == 0 or new_scores[b, 0] / lp_max < best_fin:
                done[b] = True
        if done.all():
            break
        scores, seqs = new_scores, new_seqs
        gather = (np.arange(n)[:, None] * beam + src_beam).ravel()
        caches = [ops.take(c, ops.convert_to_tensor(gather), axis=0) for c in caches]
        prev = new_prev.ravel()
    best, best_scores = [], []
    for b in range(n):
        if finished[b]:
            s, seq = max(finished[b], key=lambda f: f[0])
        else:
            k = int(np.argmax(scores[b]))
            s, seq = scores[b, k] / length_penalty(max_len, alpha), seqs[b, k]
        best.append([int(t) for t in seq if t != PAD_ID])
        best_scores.append(float(s))
    return best, best_scores


def make_step_fn(model):
    """model.step compiled for the backend (tf.function / jax.jit; the weights are constants of the compiled
    step, which is right for decoding with fixed weights)."""
    return jit(model.step)


def byte_accuracy(pred_ids_list, targets) -> float:
    """Mean over examples of the fraction of target bytes reproduced at the same position
    (a length mismatch counts as errors)."""
    accs = []
    for pred, tgt in zip(pred_ids_list, targets):
        t = [int(x) for x in tgt if x >= OFFSET]
        p = list(pred)
        hit = sum(1 for a, b in zip(p, t) if a == b)
        accs.append(hit / max(len(t), len(p), 1))
    return float(np.mean(accs))


# ----------------------------------------------------------------------------------------------
# Decode step time: fixed-size (merged attention) vs growing (standard) cache
# ----------------------------------------------------------------------------------------------

def step_time_vs_length(lengths=(16, 32, 64, 128, 256), batch: int = 64, dim: int = 256, heads: int = 4,
                        layers: int = 2, mem_len: int = 32, repeat: int = 15, seed: int = 0) -> dict:
    """Seconds (best of `repeat`) of ONE decoder step when the output so far has t tokens, for a merged-attention
    decoder (cache [B, 1, D] per layer) and a standard decoder (key/value caches [B, H, t, D/H]).
    Both use the same width, heads, FFN and layers; random weights (timing only); no quantization; each step
    compiled for the backend (tf.function / jax.jit), timed until its result is on the host."""
    from labkit import time_it
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    normal = lambda *shape: ops.convert_to_tensor(rng.normal(size=shape).astype(np.float32))
    matt = [MergedAttentionLayer(dim, heads, 2, 0.0, quantize=False) for _ in range(layers)]
    std = [StandardDecoderLayer(dim, heads, 2, quantize=False) for _ in range(layers)]
    mem = normal(batch, mem_len, dim)
    mem_mask = ops.ones((batch, mem_len))
    y = normal(batch, 1, dim)
    dh = dim // heads
    for layer in matt:  # build
        k, v = layer.cross.memory_kv(mem)
        layer.step(y, 1.0, ops.zeros((batch, 1, dim)), k, v, mem_mask)
    for layer in std:
        k, v = layer.cross.memory_kv(mem)
        layer.step(y, ops.zeros((batch, heads, 1, dh)), ops.zeros((batch, heads, 1, dh)), k, v, mem_mask)
    kv_m = [layer.cross.memory_kv(mem) for layer in matt]
    kv_s = [layer.cross.memory_kv(mem) for layer in std]

    def matt_step(y, t, caches):
        for layer, c, (k, v) in zip(matt, caches, kv_m):
            y, _ = layer.step(y, t, c, k, v, mem_mask)
        return y

    def std_step(y, kc, vc):
        for layer, a, b, (k, v) in zip(std, kc, vc, kv_s):
            y, _, _ = layer.step(y, a, b, k, v, mem_mask)
        return y

    matt_step, std_step = jit(matt_step), jit(std_step)
    res = {"lengths": list(lengths), "fixed_s": [], "growing_s": []}
    for t in lengths:
        caches = [normal(batch, 1, dim) for _ in range(layers)]
        tt = ops.convert_to_tensor(np.float32(t))
        # best of `repeat` (the least disturbed by other processes on a shared machine)
        res["fixed_s"].append(min(time_it(lambda: ops.convert_to_numpy(matt_step(y, tt, caches)),
                                          repeat=repeat, warmup=3).samples))
        kc = [normal(batch, heads, t, dh) for _ in range(layers)]
        vc = [normal(batch, heads, t, dh) for _ in range(layers)]
        res["growing_s"].append(min(time_it(lambda: ops.convert_to_numpy(std_step(y, kc, vc)),
                                            repeat=repeat, warmup=3).samples))
    return res
