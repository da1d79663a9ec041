"""The building blocks of ByteQRNN (SeqFlowLite), written as Keras 3 layers on the TensorFlow backend.

- byte splitting: UTF-8 bytes -> ids = byte + 3 (0 pad, 1 EOS, 2 UNK); a numpy reference and a
  TF-graph layer (`ByteSplitter`) that agree;
- in-training quantization: `ActivationQuant` tracks the min/max of an activation (moving average)
  and fake-quantizes it to 8 bits; `QDense` / `QConv1D` fake-quantize their weights; the gradient is
  straight-through (1 inside the range, 0 outside), so the int8 model matches training;
- `GBST` (Charformer's gradient-based subword tokenization): candidate blocks of sizes 1..M, a score
  per block, softmax over block sizes per position, optional calibration, mean-pool by d_s;
- `QRNN` (Bradbury et al. 2016) with fo-pooling and zoneout, and `BiQRNNStack`;
- `AttentionPooling` (masked softmax over time of a learned score).

Masks are passed explicitly as float tensors [B, T] (1 = real position).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import keras

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
OFFSET = 3
VOCAB_SIZE = 256 + OFFSET  # 259


# ---------------------------------------------------------------------------------------------
# Byte splitting
# ---------------------------------------------------------------------------------------------

def _as_bytes(text) -> bytes:
    if isinstance(text, (bytes, bytearray)):
        return bytes(text)
    return str(text).encode("utf-8", errors="surrogatepass")


def encode_bytes(texts, max_len: int, add_eos: bool = True) -> np.ndarray:
    """Texts -> int32 ids [N, max_len]: byte + 3, then EOS (1) if it fits, then PAD (0).

    Longer texts are truncated (the EOS is kept as the last id when `add_eos`)."""
    out = np.zeros((len(texts), max_len), dtype=np.int32)
    for i, t in enumerate(texts):
        b = np.frombuffer(_as_bytes(t), dtype=np.uint8).astype(np.int32) + OFFSET
        n = min(len(b), max_len - (1 if add_eos else 0))
        out[i, :n] = b[:n]
        if add_eos:
            out[i, n] = EOS_ID
    return out


def values_to_ids(values) -> np.ndarray:
    """Integer 'byte values' -> ids; anything outside 0..255 becomes UNK (2)."""
    v = np.asarray(values, dtype=np.int64)
    ids = v + OFFSET
    return np.where((v >= 0) & (v <= 255), ids, UNK_ID).astype(np.int32)


def decode_ids(ids) -> str:
    """ids -> text: stops at EOS, skips PAD, UNK shows as U+FFFD; invalid UTF-8 is replaced."""
    out = bytearray()
    unk = "\ufffd".encode()
    for i in np.asarray(ids).ravel().tolist():
        if i == EOS_ID:
            break
        if i == PAD_ID:
            continue
        if i == UNK_ID or i >= VOCAB_SIZE or i < 0:
            out += unk
        else:
            out.append(i - OFFSET)
    return out.decode("utf-8", errors="replace")


class ByteSplitter(keras.layers.Layer):
    """tf.string [B] -> int32 ids [B, max_len], in the TF graph (same ids as `encode_bytes`)."""

    def __init__(self, max_len: int, add_eos: bool = True, **kw):
        super().__init__(**kw)
        self.max_len = int(max_len)
        self.add_eos = add_eos

    def call(self, texts):
        raw = tf.io.decode_raw(texts, tf.uint8, fixed_length=self.max_len)       # zero padded
        raw = tf.cast(raw, tf.int32)
        length = tf.strings.length(texts)                                         # bytes
        keep = self.max_len - (1 if self.add_eos else 0)
        n = tf.minimum(length, keep)[:, None]
        pos = tf.range(self.max_len)[None, :]
        ids = tf.where(pos < n, raw + OFFSET, PAD_ID)
        if self.add_eos:
            ids = tf.where(pos == n, EOS_ID, ids)
        return ids


def ids_mask(ids):
    """float mask [B, L]: 1 where the id is not PAD."""
    return tf.cast(tf.not_equal(ids, PAD_ID), tf.float32)


# ---------------------------------------------------------------------------------------------
# In-training quantization
# ---------------------------------------------------------------------------------------------

def fake_quant(x, lo, hi, num_bits: int = 8, narrow_range: bool = False):
    """8-bit fake quantization; TF's op has the straight-through gradient built in
    (d out / d x = 1 for lo <= x <= hi, else 0) and is what the TFLite converter turns into int8."""
    return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=num_bits,
                                                        narrow_range=narrow_range)


def fake_quant_reference(x, lo, hi, num_bits: int = 8, narrow_range: bool = False):
    """numpy reference of `fake_quant` (TF's nudged min/max, round half away from zero)."""
    f32 = np.float32
    x = np.asarray(x, dtype=f32)
    qmin = f32(1 if narrow_range else 0)
    qmax = f32(2 ** num_bits - 1)
    scale = (f32(hi) - f32(lo)) / (qmax - qmin)
    zp_from_min = qmin - f32(lo) / scale
    zp = qmin if zp_from_min < qmin else qmax if zp_from_min > qmax else np.floor(zp_from_min + f32(0.5))
    nlo, nhi = (qmin - zp) * scale, (qmax - zp) * scale
    xc = np.clip(x, nlo, nhi)
    return np.floor((xc - nlo) * (f32(1) / scale) + f32(0.5)) * scale + nlo   # float32, as TF


class ActivationQuant(keras.layers.Layer):
    """Track min/max of an activation with a moving average during training; fake-quantize to
    8 bits (straight-through gradient). The range always contains 0 (so 0 is exact in int8).
    With `quantize=False` it is the identity."""

    def __init__(self, quantize: bool = True, decay: float = 0.99, num_bits: int = 8,
                 fixed_range=None, **kw):
        super().__init__(**kw)
        self.quantize = quantize
        self.decay = decay
        self.num_bits = num_bits
        self.fixed_range = fixed_range  # e.g. (0, 1) for a sigmoid: no tracking needed

    def build(self, input_shape):
        self.min_val = self.add_weight(shape=(), initializer="zeros", trainable=False, name="min")
        self.max_val = self.add_weight(shape=(), initializer="zeros", trainable=False, name="max")
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")

    def call(self, x, training=None):
        if not self.quantize:
            return x
        if self.fixed_range is not None:
            return fake_quant(x, float(self.fixed_range[0]), float(self.fixed_range[1]), self.num_bits)
        if training:
            bmin = tf.minimum(tf.reduce_min(tf.stop_gradient(x)), 0.0)
            bmax = tf.maximum(tf.reduce_max(tf.stop_gradient(x)), 0.0)
            first = tf.equal(self.seen, 0.0)
            new_min = tf.where(first, bmin, self.decay * self.min_val + (1 - self.decay) * bmin)
            new_max = tf.where(first, bmax, self.decay * self.max_val + (1 - self.decay) * bmax)
            self.min_val.assign(new_min)
            self.max_val.assign(new_max)
            self.seen.assign(1.0)
            lo, hi = new_min, new_max
        else:
            lo, hi = tf.convert_to_tensor(self.min_val), tf.convert_to_tensor(self.max_val)
        hi = tf.maximum(hi, lo + 1e-6)
        return fake_quant(x, lo, hi, self.num_bits)


def quantize_weight(w, quantize: bool, num_bits: int = 8):
    """Symmetric per-tensor weight fake quantization (int8 in [-127, 127]) from the weight's own
    max |w|; the range is not differentiated (straight-through for w)."""
    if not quantize:
        return w
    a = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(w)), 1e-8))
    return fake_quant(w, -a, a, num_bits, narrow_range=True)


class QDense(keras.layers.Layer):
    """Dense layer with fake-quantized weights and (optionally) fake-quantized output."""

    def __init__(self, units: int, activation=None, use_bias: bool = True, quantize: bool = True,
                 quantize_output: bool = True, **kw):
        super().__init__(**kw)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.quantize = quantize
        self.out_q = ActivationQuant(quantize and quantize_output)

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.kernel = self.add_weight(shape=(d, self.units), initializer="glorot_uniform", name="kernel")
        self.bias = (self.add_weight(shape=(self.units,), initializer="zeros", name="bias")
                     if self.use_bias else None)

    def call(self, x, training=None):
        w = quantize_weight(self.kernel, self.quantize)
        if x.shape.rank == 2:
            y = tf.matmul(x, w)
        else:  # flatten to 2-D: einsum's gradient with broadcasting dims is far slower on CPU
            lead = tf.shape(x)[:-1]
            y = tf.reshape(tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), w),
                           tf.concat([lead, [self.units]], axis=0))
        if self.bias is not None:
            y = y + self.bias
        y = self.activation(y)
        return self.out_q(y, training=training)


class QConv1D(keras.layers.Layer):
    """1-D convolution ('same' or 'causal' padding) with fake-quantized weights and output."""

    def __init__(self, filters: int, kernel_size: int, padding: str = "same", activation=None,
                 quantize: bool = True, quantize_output: bool = True, **kw):
        super().__init__(**kw)
        assert padding in ("same", "causal")
        self.filters, self.kernel_size, self.padding = filters, kernel_size, padding
        self.activation = keras.activations.get(activation)
        self.quantize = quantize
        self.out_q = ActivationQuant(quantize and quantize_output)

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.kernel = self.add_weight(shape=(self.kernel_size, d, self.filters),
                                      initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")

    def call(self, x, training=None):
        k = self.kernel_size
        if self.padding == "causal":
            x = tf.pad(x, [[0, 0], [k - 1, 0], [0, 0]])
        else:
            x = tf.pad(x, [[0, 0], [(k - 1) // 2, k // 2], [0, 0]])
        y = tf.nn.conv1d(x, quantize_weight(self.kernel, self.quantize), stride=1, padding="VALID")
        y = self.activation(y + self.bias)
        return self.out_q(y, training=training)


class QEmbedding(keras.layers.Layer):
    """Embedding table with fake-quantized (int8) rows."""

    def __init__(self, vocab_size: int, dim: int, quantize: bool = True, **kw):
        super().__init__(**kw)
        self.vocab_size, self.dim, self.quantize = vocab_size, dim, quantize

    def build(self, input_shape):
        self.table = self.add_weight(shape=(self.vocab_size, self.dim),
                                     initializer=keras.initializers.RandomUniform(-0.1, 0.1), name="table")

    def call(self, ids):
        return tf.gather(quantize_weight(self.table, self.quantize), ids)


# ---------------------------------------------------------------------------------------------
# GBST
# ---------------------------------------------------------------------------------------------

def _masked_block_mean(x, mask, b):
    """Mean of each non-overlapping block of b positions (pads excluded), repeated back to length L.
    x [B, L, D], mask [B, L] -> [B, L, D] (L padded up to a multiple of b internally)."""
    L = x.shape[1]
    pad = (-L) % b
    xm = x * mask[..., None]
    if pad:
        xm = tf.pad(xm, [[0, 0], [0, pad], [0, 0]])
        mk = tf.pad(mask, [[0, 0], [0, pad]])
    else:
        mk = mask
    nb = (L + pad) // b
    s = tf.reduce_sum(tf.reshape(xm, [-1, nb, b, x.shape[2]]), axis=2)
    c = tf.reduce_sum(tf.reshape(mk, [-1, nb, b]), axis=2)
    blocks = s / tf.maximum(c, 1.0)[..., None]                     # [B, nb, D]
    rep = tf.reshape(tf.tile(blocks[:, :, None, :], [1, 1, b, 1]), [-1, nb * b, x.shape[2]])
    return rep[:, :L], blocks


def downsample_mean(x, mask, rate):
    """Masked mean-pool by `rate` along time: [B, L, D] -> [B, ceil(L/rate), D], mask -> max-pool."""
    if rate == 1:
        return x, mask
    L = x.shape[1]
    pad = (-L) % rate
    xm = x * mask[..., None]
    mk = mask
    if pad:
        xm = tf.pad(xm, [[0, 0], [0, pad], [0, 0]])
        mk = tf.pad(mk, [[0, 0], [0, pad]])
    n = (L + pad) // rate
    s = tf.reduce_sum(tf.reshape(xm, [-1, n, rate, x.shape[2]]), axis=2)
    c = tf.reduce_sum(tf.reshape(mk, [-1, n, rate]), axis=2)
    out = s / tf.maximum(c, 1.0)[..., None]
    return out, tf.cast(c > 0, tf.float32)


class GBST(keras.layers.Layer):
    """Gradient-based subword tokenization (Charformer, arXiv 2106.12672).

    For each block size b in 1..max_block_size: mean-pool the (conv-mixed) byte embeddings in blocks
    of b, score each block with one shared linear map to a scalar, repeat blocks and scores back to
    length L; softmax over b per position; optional calibration P <- softmax(P P^T) P; mix the
    candidates with those weights; mean-pool by `downsample_rate` d_s. Output [B, ceil(L/d_s), D].
    After a call, `self.last_scores` holds the block-size weights [B, L, M] (for plots/tests)."""

    def __init__(self, max_block_size: int = 4, downsample_rate: int = 2, conv_kernel_size: int = 5,
                 calibrate: bool = False, quantize: bool = True, **kw):
        super().__init__(**kw)
        self.max_block_size = max_block_size
        self.downsample_rate = downsample_rate
        self.conv_kernel_size = conv_kernel_size
        self.calibrate = calibrate
        self.quantize = quantize
        self.scorer = QDense(1, use_bias=False, quantize=quantize, quantize_output=False)
        self.score_q = ActivationQuant(quantize, fixed_range=(0.0, 1.0))
        self.out_q = ActivationQuant(quantize)
        self.last_scores = None

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.conv = (QConv1D(d, self.conv_kernel_size, padding="same", quantize=self.quantize)
                     if self.conv_kernel_size and self.conv_kernel_size > 1 else None)

    def call(self, x, mask, training=None):
        if self.conv is not None:
            x = self.conv(x, training=training) * mask[..., None]
        cands, logits = [], []
        for b in range(1, self.max_block_size + 1):
            rep, _ = _masked_block_mean(x, mask, b) if b > 1 else (x, None)
            cands.append(rep)
            logits.append(self.scorer(rep, training=training))            # [B, L, 1]
        cands = tf.stack(cands, axis=2)                                   # [B, L, M, D]
        scores = tf.nn.softmax(tf.concat(logits, axis=-1), axis=-1)        # [B, L, M]
        if self.calibrate:
            scores = tf.matmul(tf.nn.softmax(tf.matmul(scores, scores, transpose_b=True), axis=-1), scores)
        scores = self.score_q(scores, training=training)
        self.last_scores = scores
        mixed = tf.reduce_sum(cands * scores[..., None], axis=2) * mask[..., None]
        out, out_mask = downsample_mean(mixed, mask, self.downsample_rate)
        return self.out_q(out, training=training), out_mask


# ---------------------------------------------------------------------------------------------
# QRNN
# ---------------------------------------------------------------------------------------------

def fo_pool_loop(z, f, c0=None, quantize: bool = False):
    """fo-pooling c_t = f_t * c_{t-1} + (1 - f_t) * z_t, unrolled over the (static) time axis.
    z, f [B, T, C] -> c [B, T, C]. Unrolled so that it converts to plain int8 TFLite ops.
    With `quantize`, every intermediate is fake-quantized to 8 bits with a fixed range: z in [-1, 1]
    and f in [0, 1] make each product and the new state lie in [-1, 1] exactly, so the int8 model
    needs no float kernel (and no calibration) for the recurrence."""
    q = (lambda x, lo, hi: fake_quant(x, lo, hi)) if quantize else (lambda x, lo, hi: x)
    c = tf.zeros_like(z[:, 0]) if c0 is None else c0
    # f arrives mixed with the mask (f * m + 1 - m: still on the [0, 1] grid, so this is exact); an explicit
    # range here keeps the converter from leaving the unstack of f in float (it did so now and then)
    f = q(f, 0.0, 1.0)
    # the input term (1 - f_t) z_t for every t at once, and one unstack per sequence instead of a slice per
    # step: the unrolled int8 graph then holds two ops a step (mul, add) - a smaller, faster TFLite file
    u = q(q(1.0 - f, 0.0, 1.0) * z, -1.0, 1.0)
    out = []
    for f_t, u_t in zip(tf.unstack(f, axis=1), tf.unstack(u, axis=1)):
        c = q(q(f_t * c, -1.0, 1.0) + u_t, -1.0, 1.0)
        out.append(c)
    return tf.stack(out, axis=1)


def fo_pool_parallel(z, f):
    """The same recurrence in closed form: c_t = sum_{s<=t} (prod_{r=s+1..t} f_r) (1-f_s) z_s,
    computed in log space with a masked [T, T] matrix (parallel over time; for GPU training)."""
    T = z.shape[1]
    logf = tf.math.log(tf.maximum(f, 1e-12))
    cum = tf.cumsum(logf, axis=1)                                         # A_t = sum_{r<=t} log f_r
    diff = cum[:, :, None, :] - cum[:, None, :, :]                        # [B, t, s, C] = A_t - A_s
    tri = tf.linalg.band_part(tf.ones([T, T]), -1, 0)[None, :, :, None]   # s <= t
    w = tf.exp(tf.where(tri > 0, diff, -1e30 * tf.ones_like(diff)))
    return tf.einsum("btsc,bsc->btc", w, (1.0 - f) * z)


class QRNN(keras.layers.Layer):
    """One QRNN direction: Z = tanh(conv(X)), F = sigmoid(conv(X)), O = sigmoid(conv(X)) with a causal
    convolution of width k; fo-pooling; h_t = o_t * c_t. Zoneout (training only): with probability
    `zoneout` a unit keeps c_{t-1} (f_t := 1). Padded positions also keep the state (f := 1) and
    output 0. `go_backwards` runs over the reversed sequence and returns outputs in input order."""

    def __init__(self, units: int, kernel_width: int = 3, zoneout: float = 0.0, go_backwards: bool = False,
                 pooling: str = "loop", quantize: bool = True, seed=None, **kw):
        super().__init__(**kw)
        assert pooling in ("loop", "parallel")
        self.units, self.kernel_width, self.zoneout = units, kernel_width, zoneout
        self.go_backwards, self.pooling, self.quantize = go_backwards, pooling, quantize
        self.conv = QConv1D(3 * units, kernel_width, padding="causal", quantize=quantize)
        self.zq = ActivationQuant(quantize, fixed_range=(-1.0, 1.0))
        self.fq = ActivationQuant(quantize, fixed_range=(0.0, 1.0))
        self.oq = ActivationQuant(quantize, fixed_range=(0.0, 1.0))
        self.cq = ActivationQuant(quantize, fixed_range=(-1.0, 1.0))
        self.hq = ActivationQuant(quantize, fixed_range=(-1.0, 1.0))
        self.seed_gen = keras.random.SeedGenerator(seed if seed is not None else 0)

    def gates(self, x, mask, training=None):
        """z, f, o and the mask [B, T, 1], in this direction's own time order (reversed when backwards)."""
        x = x * mask[..., None]                  # pads are zeros, like the conv's own padding
        if self.go_backwards:
            x, mask = x[:, ::-1], mask[:, ::-1]
        zfo = self.conv(x, training=training)
        z_, f_, o_ = tf.split(zfo, 3, axis=-1)
        z = self.zq(tf.tanh(z_), training=training)
        f = self.fq(tf.sigmoid(f_), training=training)
        o = self.oq(tf.sigmoid(o_), training=training)
        m = mask[..., None]
        f = f * m + (1.0 - m)
        if training and self.zoneout > 0:
            keep = keras.random.uniform(tf.shape(f), seed=self.seed_gen) < self.zoneout
            f = tf.where(keep, tf.ones_like(f), f)
        return z, f, o, m

    def pool(self, z, f):
        return fo_pool_loop(z, f, quantize=self.quantize) if self.pooling == "loop" else fo_pool_parallel(z, f)

    def output(self, c, o, m, training=None):
        """h = o * c on valid positions, back in input order."""
        c = self.cq(c, training=training)
        h = self.hq(o * c, training=training) * m
        return h[:, ::-1] if self.go_backwards else h

    def call(self, x, mask, training=None):
        z, f, o, m = self.gates(x, mask, training)
        return self.output(self.pool(z, f), o, m, training)


class BiQRNNStack(keras.layers.Layer):
    """`num_layers` bidirectional QRNN layers (forward and backward outputs concatenated: 2*units);
    zoneout decays per layer: zoneout * decay**i."""

    def __init__(self, units: int, num_layers: int = 3, kernel_width: int = 3, zoneout: float = 1e-2,
                 zoneout_decay: float = 0.5, pooling: str = "loop", quantize: bool = True, **kw):
        super().__init__(**kw)
        self.units, self.num_layers = units, num_layers
        self.fwd, self.bwd = [], []
        for i in range(num_layers):
            zo = zoneout * zoneout_decay ** i
            self.fwd.append(QRNN(units, kernel_width, zo, False, pooling, quantize, seed=2 * i, name=f"fwd_{i}"))
            self.bwd.append(QRNN(units, kernel_width, zo, True, pooling, quantize, seed=2 * i + 1, name=f"bwd_{i}"))

    def call(self, x, mask, training=None):
        for f, b in zip(self.fwd, self.bwd):
            # both directions in ONE recurrence over 2*units channels (the backward gates are already in reversed
            # time; pooling is per channel): the same numbers as two, half the unrolled steps in the int8 graph
            zf, ff, of, mf = f.gates(x, mask, training)
            zb, fb, ob, mb = b.gates(x, mask, training)
            c = f.pool(tf.concat([zf, zb], -1), tf.concat([ff, fb], -1))
            cf, cb = tf.split(c, 2, axis=-1)
            x = tf.concat([f.output(cf, of, mf, training), b.output(cb, ob, mb, training)], axis=-1)
        return x


# ---------------------------------------------------------------------------------------------
# Attention pooling
# ---------------------------------------------------------------------------------------------

class AttentionPooling(keras.layers.Layer):
    """a = softmax over valid positions of a linear score; pooled = sum_t a_t h_t.
    After a call, `self.last_weights` holds a [B, T]."""

    def __init__(self, quantize: bool = True, **kw):
        super().__init__(**kw)
        self.score = QDense(1, quantize=quantize, quantize_output=False)
        self.wq = ActivationQuant(quantize, fixed_range=(0.0, 1.0))
        self.out_q = ActivationQuant(quantize)
        self.last_weights = None

    def call(self, h, mask, training=None):
        logits = self.score(h, training=training)[..., 0]                       # [B, T]
        logits = logits - tf.stop_gradient(tf.reduce_max(logits, axis=-1, keepdims=True))
        e = tf.exp(logits) * mask
        a = e / tf.maximum(tf.reduce_sum(e, axis=-1, keepdims=True), 1e-9)
        a = self.wq(a, training=training)
        self.last_weights = a
        return self.out_q(tf.einsum("bt,btd->bd", a, h), training=training)
