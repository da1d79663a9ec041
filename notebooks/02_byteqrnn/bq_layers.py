"""The building blocks of ByteQRNN (SeqFlowLite), written as Keras 3 layers for any backend
(`keras.ops` only: TensorFlow, the default, or JAX for the GPU).

- byte splitting: UTF-8 bytes -> ids = byte + 3 (0 pad, 1 EOS, 2 UNK), in numpy; `check_ids` rejects
  ids outside 0..258 with a clear error (the TF-graph splitter lives in `bq_export`, being TF only);
- in-training quantization: `ActivationQuant` tracks the min/max of an activation (moving average)
  and fake-quantizes it to 8 bits; `QDense` / `QConv1D` fake-quantize their weights; the gradient is
  straight-through (1 inside the range, 0 outside), so the int8 model matches training;
- `GBST` in two variants: Charformer's (softmax over block sizes per position) and SeqFlowLite's
  `GBSTLayerV2` (raw block scores, averaged over block sizes, causal conv);
- `QRNN` (Bradbury et al. 2016) with fo-pooling (float state, as SeqFlowLite's pooling op) and zoneout,
  and `BiQRNNStack`; the pooling runs as an unrolled loop (the plain reading), as `keras.ops.associative_scan`
  (parallel over time: the fast form for GPU training) or by recursive doubling (log-depth, static slices: what
  the int8 export converts);
- `AttentionPooling` (masked softmax over time of a learned score).

Masks are passed explicitly as float tensors [B, T] (1 = real position).
"""
from __future__ import annotations

import numpy as np
import keras
from keras import ops

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


def check_ids(ids, max_len: int = None) -> np.ndarray:
    """ids as int32 [N, L], or ValueError saying what is wrong: not integers, not 2-D, a length other than
    `max_len`, or ids outside 0..258 (the embedding's gather would fail or, worse, wrap around)."""
    a = np.asarray(ids)
    if a.dtype.kind not in "iu":
        raise ValueError(f"byte ids must be integers (dtype {a.dtype} given); use encode_bytes(texts, max_len)")
    if a.ndim != 2:
        raise ValueError(f"byte ids must be a 2-D array [examples, length]; got shape {a.shape}")
    if max_len is not None and a.shape[1] != max_len:
        raise ValueError(f"byte ids have length {a.shape[1]}; this model reads exactly {max_len}")
    bad = (a < 0) | (a >= VOCAB_SIZE)
    if bad.any():
        where = np.argwhere(bad)[:3]
        vals = sorted({int(a[tuple(w)]) for w in np.argwhere(bad)})[:5]
        raise ValueError(f"byte ids must lie in 0..{VOCAB_SIZE - 1} (0 pad, 1 EOS, 2 UNK, byte + 3); "
                         f"found {vals} at {[tuple(int(i) for i in w) for w in where]}")
    return a.astype(np.int32)


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


def ids_mask(ids):
    """float mask [B, L]: 1 where the id is not PAD."""
    return ops.cast(ops.not_equal(ids, PAD_ID), "float32")


# ---------------------------------------------------------------------------------------------
# In-training quantization
# ---------------------------------------------------------------------------------------------

def fake_quant(x, lo, hi, num_bits: int = 8, narrow_range: bool = False):
    """8-bit fake quantization with a straight-through gradient (d out / d x = 1 for lo <= x <= hi,
    else 0). Under TensorFlow, Keras calls `tf.quantization.fake_quant_with_min_max_vars`, which the
    TFLite converter turns into int8 tensors; under JAX Keras computes the same nudged grid itself."""
    return keras.quantizers.fake_quant_with_min_max_vars(x, lo, hi, num_bits=num_bits,
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
            bmin = ops.minimum(ops.min(ops.stop_gradient(x)), 0.0)
            bmax = ops.maximum(ops.max(ops.stop_gradient(x)), 0.0)
            first = ops.equal(self.seen, 0.0)
            new_min = ops.where(first, bmin, self.decay * self.min_val + (1 - self.decay) * bmin)
            new_max = ops.where(first, bmax, self.decay * self.max_val + (1 - self.decay) * bmax)
            self.min_val.assign(new_min)
            self.max_val.assign(new_max)
            self.seen.assign(1.0)
            lo, hi = new_min, new_max
        else:
            lo, hi = ops.convert_to_tensor(self.min_val), ops.convert_to_tensor(self.max_val)
        hi = ops.maximum(hi, lo + 1e-6)
        return fake_quant(x, lo, hi, self.num_bits)


def quantize_weight(w, quantize: bool, num_bits: int = 8):
    """Symmetric per-tensor weight fake quantization (int8 in [-127, 127]) from the weight's own
    max |w|; the range is not differentiated (straight-through for w)."""
    if not quantize:
        return w
    a = ops.stop_gradient(ops.maximum(ops.max(ops.abs(w)), 1e-8))
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
        if len(x.shape) == 2:
            y = ops.matmul(x, w)
        else:  # flatten to 2-D: one FULLY_CONNECTED in TFLite, and a plain GEMM everywhere
            lead = ops.shape(x)[:-1]
            y = ops.reshape(ops.matmul(ops.reshape(x, (-1, x.shape[-1])), w), (*lead, self.units))
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
        left = k - 1 if self.padding == "causal" else (k - 1) // 2
        x = ops.pad(x, [[0, 0], [left, k - 1 - left], [0, 0]])
        y = ops.conv(x, quantize_weight(self.kernel, self.quantize), strides=1, padding="valid")
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
        return ops.take(quantize_weight(self.table, self.quantize), ids, axis=0)


# ---------------------------------------------------------------------------------------------
# GBST
# ---------------------------------------------------------------------------------------------

def _block_sums(x, mask, b):
    """Masked sums and counts of non-overlapping blocks of b positions (L padded up to a multiple of b)."""
    L, D = x.shape[1], x.shape[2]
    pad = (-L) % b
    xm, mk = x * mask[..., None], mask
    if pad:
        xm = ops.pad(xm, [[0, 0], [0, pad], [0, 0]])
        mk = ops.pad(mk, [[0, 0], [0, pad]])
    nb = (L + pad) // b
    return ops.sum(ops.reshape(xm, (-1, nb, b, D)), axis=2), ops.sum(ops.reshape(mk, (-1, nb, b)), axis=2)


def _masked_block_mean(x, mask, b):
    """Mean of each non-overlapping block of b positions (pads excluded), repeated back to length L.
    x [B, L, D], mask [B, L] -> ([B, L, D], blocks [B, ceil(L/b), D])."""
    s, c = _block_sums(x, mask, b)
    blocks = s / ops.maximum(c, 1.0)[..., None]                   # [B, nb, D]
    nb, D = blocks.shape[1], x.shape[2]
    rep = ops.reshape(ops.tile(blocks[:, :, None, :], (1, 1, b, 1)), (-1, nb * b, D))
    return rep[:, : x.shape[1]], blocks


def downsample_mean(x, mask, rate):
    """Masked mean-pool by `rate` along time: [B, L, D] -> [B, ceil(L/rate), D], mask -> max-pool."""
    if rate == 1:
        return x, mask
    s, c = _block_sums(x, mask, rate)
    return s / ops.maximum(c, 1.0)[..., None], ops.cast(c > 0, "float32")


GBST_MIXING = ("softmax", "sfl")


class GBST(keras.layers.Layer):
    """Gradient-based subword tokenization, in two variants (`mixing`):

    - "softmax" (Charformer, arXiv 2106.12672): a position-wise conv ("same" padding), then for each block
      size b in 1..M the masked mean of blocks of b, scored by one shared linear map; softmax over b per
      position; optional calibration P <- softmax(P P^T) P; candidates mixed with those weights.
    - "sfl" (SeqFlowLite's `GBSTLayerV2`, research/seq_flow_lite/layers/misc_layers.py, default
      block_mixing_mode=None): a causal conv, the same candidates and linear scores, but no softmax: each
      candidate is multiplied by its raw score and the products are averaged over the M block sizes.

    Both then mean-pool by `downsample_rate` d_s. Output [B, ceil(L/d_s), D]. After a call, `self.last_scores`
    holds the block-size weights [B, L, M] (softmax weights or raw scores; for plots/tests)."""

    def __init__(self, max_block_size: int = 4, downsample_rate: int = 2, conv_kernel_size: int = 5,
                 calibrate: bool = False, quantize: bool = True, mixing: str = "softmax", **kw):
        super().__init__(**kw)
        if mixing not in GBST_MIXING:
            raise ValueError(f"mixing={mixing!r}; use one of {GBST_MIXING}")
        if calibrate and mixing != "softmax":
            raise ValueError("calibrate=True is Charformer's (mixing='softmax') option")
        self.max_block_size = max_block_size
        self.downsample_rate = downsample_rate
        self.conv_kernel_size = conv_kernel_size
        self.calibrate = calibrate
        self.quantize = quantize
        self.mixing = mixing
        self.scorer = QDense(1, use_bias=False, quantize=quantize, quantize_output=False)
        # softmax weights lie in [0, 1]; SFL's raw scores are unbounded: their range is tracked
        self.score_q = ActivationQuant(quantize, fixed_range=(0.0, 1.0) if mixing == "softmax" else None)
        self.out_q = ActivationQuant(quantize)
        self.last_scores = None

    def build(self, input_shape):
        d = int(input_shape[-1])
        padding = "same" if self.mixing == "softmax" else "causal"
        self.conv = (QConv1D(d, self.conv_kernel_size, padding=padding, quantize=self.quantize)
                     if self.conv_kernel_size and self.conv_kernel_size > 1 else None)

    def call(self, x, mask, training=None):
        if self.conv is not None:
            x = self.conv(x, training=training) * mask[..., None]
        cands, logits = [], []
        for b in range(1, self.max_block_size + 1):
            rep = _masked_block_mean(x, mask, b)[0] if b > 1 else x
            cands.append(rep)
            logits.append(self.scorer(rep, training=training))            # [B, L, 1]
        cands = ops.stack(cands, axis=2)                                  # [B, L, M, D]
        scores = ops.concatenate(logits, axis=-1)                         # [B, L, M]
        if self.mixing == "softmax":
            scores = ops.softmax(scores, axis=-1)
            if self.calibrate:
                scores = ops.matmul(ops.softmax(ops.matmul(scores, ops.swapaxes(scores, 1, 2)), axis=-1), scores)
        scores = self.score_q(scores, training=training)
        self.last_scores = scores
        mixed = ops.sum(cands * scores[..., None], axis=2)
        if self.mixing == "sfl":
            mixed = mixed / float(self.max_block_size)                    # SFL: reduce_mean over block sizes
        out, out_mask = downsample_mean(mixed * mask[..., None], mask, self.downsample_rate)
        return self.out_q(out, training=training), out_mask


# ---------------------------------------------------------------------------------------------
# QRNN
# ---------------------------------------------------------------------------------------------

def fo_pool_loop(z, f, quantize_state: bool = False):
    """fo-pooling c_t = f_t * c_{t-1} + (1 - f_t) * z_t, unrolled over the (static) time axis, state in
    float as SeqFlowLite's pooling (research/seq_flow_lite/layers/qrnn_layers.py: `state * m + c`).
    z, f [B, T, C] -> c [B, T, C]. The plain reading of the recurrence (one unstack, then a MUL and an ADD per
    step). `quantize_state=True` fake-quantizes the state to 8 bits in [-1, 1] at every step: kept only to show
    what that does to long memory."""
    u = (1.0 - f) * z                     # the input term for every t at once
    c = ops.zeros_like(z[:, 0])
    out = []
    for f_t, u_t in zip(ops.unstack(f, axis=1), ops.unstack(u, axis=1)):
        c = f_t * c + u_t
        if quantize_state:
            c = fake_quant(c, -1.0, 1.0)
        out.append(c)
    return ops.stack(out, axis=1)


def fo_pool_scan(z, f):
    """The same recurrence as a parallel prefix scan: element t is the affine map c -> f_t c + u_t and
    composing two maps is associative: (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2). log2(T) depth
    (`keras.ops.associative_scan`: jax.lax.associative_scan under JAX); float state."""
    def combine(p, q):
        return p[0] * q[0], q[0] * p[1] + q[1]
    c = ops.associative_scan(combine, (f, (1.0 - f) * z), axis=1)[1]
    return ops.reshape(c, (-1, z.shape[1], z.shape[2]))   # TF's scan loses the static shape


def _shift_time(x, k: int, fill: float):
    """x [B, T, C] shifted k steps later along time, the first k steps filled with `fill`."""
    return ops.pad(x[:, :-k], [[0, 0], [k, 0], [0, 0]], constant_values=fill)


def fo_pool_doubling(z, f):
    """The same recurrence by recursive doubling (Hillis & Steele 1986): (a_t, b_t) starts as the map
    c -> f_t c + u_t and each level composes it with the map ending k steps earlier (k = 1, 2, 4, ...; steps before
    the start are the identity: a = 1, b = 0), so after ceil(log2 T) levels b_t = c_t (c_0 = 0). Whole-tensor
    MUL/ADD/PAD/STRIDED_SLICE with static shapes, float state, no control flow: about 7 TFLite ops a level
    instead of 2 a step, so it is what the int8 export converts (T = 128: 46 ops against 256 unrolled), and
    `bq_export` keeps every op of it in float (see FLOAT_SCOPE)."""
    a, b = f, (1.0 - f) * z
    steps, k = z.shape[1], 1
    while k < steps:
        b = a * _shift_time(b, k, 0.0) + b
        if 2 * k < steps:          # the last level needs no product of f
            a = a * _shift_time(a, k, 1.0)
        k *= 2
    return b


POOLINGS = ("loop", "scan", "doubling")
# The pooling runs inside this name scope: the int8 export finds its ops by it and keeps them in float (the
# recurrent state of SeqFlowLite's TFLite pooling op is float32: research/seq_flow_lite/tflite_ops/tflite_qrnn_pooling.cc)
FLOAT_SCOPE = "fo_pool_float_state"


class QRNN(keras.layers.Layer):
    """One QRNN direction: Z = tanh(conv(X)), F = sigmoid(conv(X)), O = sigmoid(conv(X)) with a causal
    convolution of width k; fo-pooling; h_t = o_t * c_t. Zoneout (training only): with probability
    `zoneout` a unit keeps c_{t-1} (f_t := 1). Padded positions also keep the state (f := 1) and
    output 0. `go_backwards` runs over the reversed sequence and returns outputs in input order."""

    def __init__(self, units: int, kernel_width: int = 3, zoneout: float = 0.0, go_backwards: bool = False,
                 pooling: str = "loop", quantize: bool = True, seed=None, **kw):
        super().__init__(**kw)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; use one of {POOLINGS}")
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
        z_, f_, o_ = ops.split(zfo, 3, axis=-1)
        z = self.zq(ops.tanh(z_), training=training)
        f = self.fq(ops.sigmoid(f_), training=training)
        o = self.oq(ops.sigmoid(o_), training=training)
        m = mask[..., None]
        f = f * m + (1.0 - m)
        if training and self.zoneout > 0:
            keep = keras.random.uniform(ops.shape(f), seed=self.seed_gen) < self.zoneout
            f = ops.where(keep, ops.ones_like(f), f)
        return z, f, o, m

    def pool(self, z, f):
        with keras.name_scope(FLOAT_SCOPE):
            if self.pooling == "loop":
                return fo_pool_loop(z, f)
            return fo_pool_scan(z, f) if self.pooling == "scan" else fo_pool_doubling(z, f)

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
            c = f.pool(ops.concatenate([zf, zb], -1), ops.concatenate([ff, fb], -1))
            cf, cb = ops.split(c, 2, axis=-1)
            x = ops.concatenate([f.output(cf, of, mf, training), b.output(cb, ob, mb, training)], axis=-1)
        return x


# ---------------------------------------------------------------------------------------------
# Attention pooling
# ---------------------------------------------------------------------------------------------

class AttentionPooling(keras.layers.Layer):
    """a = softmax over valid positions of a linear score; pooled = sum_t a_t h_t.
    An input with no valid position (all padding) pools to 0: the denominator gets 1 - max_t(mask), which is
    0 for any real input and 1 for an all-padding one, fake-quantized on [0, 1] so that int8 keeps the 1 (a floor
    such as 1e-9 would round to 0 in int8, and the int8 division would fail). After a call, `self.last_weights` holds a [B, T]."""

    def __init__(self, quantize: bool = True, **kw):
        super().__init__(**kw)
        self.score = QDense(1, quantize=quantize, quantize_output=False)
        self.wq = ActivationQuant(quantize, fixed_range=(0.0, 1.0))
        self.out_q = ActivationQuant(quantize)
        self.last_weights = None

    def call(self, h, mask, training=None):
        logits = self.score(h, training=training)[..., 0]                       # [B, T]
        logits = logits - ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True))
        e = ops.exp(logits) * mask
        empty = 1.0 - ops.max(mask, axis=-1, keepdims=True)
        if self.wq.quantize:  # a fixed int8 range: calibration data never holds an all-padding input
            empty = fake_quant(empty, 0.0, 1.0)
        a = e / (ops.sum(e, axis=-1, keepdims=True) + empty)
        a = self.wq(a, training=training)
        self.last_weights = a
        return self.out_q(ops.einsum("bt,btd->bd", a, h), training=training)
