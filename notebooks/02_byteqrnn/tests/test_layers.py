"""Each ByteQRNN building block on its own."""
import numpy as np
import pytest
from keras import ops

import bq_layers as L
from backend_utils import N, T, grads, normal


# ---------------------------------------------------------------- byte splitting

def test_encode_bytes_offset_eos_pad():
    ids = L.encode_bytes(["hé", ""], 6)
    assert ids.shape == (2, 6) and ids.dtype == np.int32
    assert ids[0].tolist() == [ord("h") + 3, 0xC3 + 3, 0xA9 + 3, L.EOS_ID, L.PAD_ID, L.PAD_ID]
    assert ids[1].tolist() == [L.EOS_ID, 0, 0, 0, 0, 0]
    assert L.VOCAB_SIZE == 259 and ids.max() < L.VOCAB_SIZE


def test_encode_bytes_truncates_keeping_eos_and_roundtrips():
    ids = L.encode_bytes(["abcdefgh"], 5)
    assert ids[0].tolist() == [ord(c) + 3 for c in "abcd"] + [L.EOS_ID]
    text = "Ciao, ¿qué tal? 你好"
    assert L.decode_ids(L.encode_bytes([text], 64)[0]) == text


def test_unk_for_out_of_range_values():
    assert L.values_to_ids([0, 255, 256, -1]).tolist() == [3, 258, L.UNK_ID, L.UNK_ID]
    assert L.decode_ids([ord("a") + 3, L.UNK_ID, L.EOS_ID, ord("b") + 3]) == "a\ufffd"


@pytest.mark.parametrize("bad", [259, -1, 100000])
def test_check_ids_rejects_out_of_range_ids(bad):
    ids = L.encode_bytes(["hola"], 8)
    ids[0, 2] = bad
    with pytest.raises(ValueError, match=rf"0\.\.258.*\[{bad}\] at \[\(0, 2\)\]"):
        L.check_ids(ids, 8)


def test_check_ids_rejects_wrong_dtype_rank_and_length():
    ids = L.encode_bytes(["hola"], 8)
    assert L.check_ids(ids.astype(np.int64), 8).dtype == np.int32
    with pytest.raises(ValueError, match="integers"):
        L.check_ids(ids.astype(np.float32), 8)
    with pytest.raises(ValueError, match="2-D"):
        L.check_ids(ids[0], 8)
    with pytest.raises(ValueError, match="exactly 16"):
        L.check_ids(ids, 16)


# ---------------------------------------------------------------- quantization

def test_fake_quant_matches_reference_and_has_256_levels():
    x = np.linspace(-3, 5, 2001).astype(np.float32)
    y = N(L.fake_quant(T(x), -2.0, 4.0))
    ref = L.fake_quant_reference(x, -2.0, 4.0)
    diff = np.abs(y - ref)
    step = 6.0 / 255
    # identical except at a few exact rounding ties, where they may differ by one level
    assert np.mean(diff > 1e-5) < 0.01 and np.all((diff < 1e-5) | (np.abs(diff - step) < 1e-4))
    assert len(np.unique(y)) <= 256
    inside = (x > -1.9) & (x < 3.9)
    assert np.max(np.abs(y[inside] - x[inside])) <= (6.0 / 255) / 2 + 1e-6


def test_fake_quant_straight_through_gradient():
    (g,) = grads(lambda x: ops.sum(L.fake_quant(x, -2.0, 4.0) * 3.0), [-5.0, -1.0, 0.3, 2.0, 9.0])
    assert g.tolist() == [0.0, 3.0, 3.0, 3.0, 0.0]  # identity inside the range, zero outside


def test_activation_quant_tracks_min_max_with_moving_average():
    q = L.ActivationQuant(decay=0.5)
    q(T([[-1.0, 2.0]]), training=True)
    assert np.isclose(float(N(q.min_val)), -1.0) and np.isclose(float(N(q.max_val)), 2.0)
    q(T([[-3.0, 4.0]]), training=True)
    assert np.isclose(float(N(q.min_val)), -2.0) and np.isclose(float(N(q.max_val)), 3.0)
    q(T([[-100.0, 100.0]]), training=False)          # inference does not move the range
    assert np.isclose(float(N(q.max_val)), 3.0)
    y = N(q(T(np.linspace(-5, 5, 1000, dtype=np.float32)), training=False))
    assert y.min() >= -2.0 - 1e-5 and y.max() <= 3.0 + 1e-5 and len(np.unique(y)) <= 256


def test_activation_quant_range_contains_zero():
    q = L.ActivationQuant()
    q(T([2.0, 3.0]), training=True)
    assert float(N(q.min_val)) == 0.0


def test_qdense_weights_are_int8_and_trainable():
    layer = L.QDense(8, quantize=True, quantize_output=False)
    x = normal(4, 16, seed=1)
    layer(x)
    wq = N(L.quantize_weight(layer.kernel, True))
    a = np.abs(N(layer.kernel)).max()
    levels = np.round(wq / (a / 127)).astype(int)
    assert np.allclose(wq, levels * a / 127, atol=1e-5) and np.abs(levels).max() <= 127
    (g,) = grads(lambda w: ops.sum(ops.matmul(x, L.quantize_weight(w, True)) ** 2), N(layer.kernel))
    assert np.abs(g).sum() > 0           # straight-through: the int8 weights still learn


# ---------------------------------------------------------------- GBST

def _embed(b=2, l=48, d=8, seed=0):
    return normal(b, l, d, seed=seed)


@pytest.mark.parametrize("ds", [1, 2, 4])
@pytest.mark.parametrize("calibrate", [False, True])
def test_gbst_output_length_and_scores_sum_to_one(ds, calibrate):
    x = _embed()
    mask = ops.ones(x.shape[:2])
    g = L.GBST(max_block_size=4, downsample_rate=ds, conv_kernel_size=3, calibrate=calibrate, quantize=False)
    out, out_mask = g(x, mask)
    assert out.shape == (2, 48 // ds, 8) and out_mask.shape == (2, 48 // ds)
    s = N(g.last_scores)
    assert s.shape == (2, 48, 4)
    assert np.allclose(s.sum(-1), 1.0, atol=1e-5) and (s >= 0).all()


def test_gbst_block_means_match_numpy():
    x = _embed(1, 12, 3)
    mask = np.ones((1, 12), np.float32)
    mask[0, 10:] = 0
    rep, blocks = L._masked_block_mean(x * mask[..., None], T(mask), 4)
    xn = N(x)[0]
    expect = np.stack([xn[0:4].mean(0), xn[4:8].mean(0), xn[8:10].mean(0)])  # pads excluded
    assert np.allclose(N(blocks)[0], expect, atol=1e-5)
    assert np.allclose(N(rep)[0, 5], expect[1], atol=1e-5)


def test_gbst_single_block_size_is_identity():
    x = _embed()
    g = L.GBST(max_block_size=1, downsample_rate=1, conv_kernel_size=0, quantize=False)
    out, _ = g(x, ops.ones(x.shape[:2]))
    assert np.allclose(N(out), N(x), atol=1e-6)


def test_gbst_mixes_candidates_with_the_softmax_weights():
    x = _embed(1, 8, 4)
    g = L.GBST(max_block_size=2, downsample_rate=1, conv_kernel_size=0, quantize=False)
    out, _ = g(x, ops.ones((1, 8)))
    s = N(g.last_scores)[0]
    xn = N(x)[0]
    b2 = np.repeat(xn.reshape(4, 2, 4).mean(1), 2, axis=0)
    assert np.allclose(N(out)[0], s[:, :1] * xn + s[:, 1:] * b2, atol=1e-5)


def test_gbst_sfl_variant_averages_raw_scores_times_candidates():
    """SeqFlowLite's GBSTLayerV2 (block_mixing_mode=None): no softmax; mean over block sizes of score * block."""
    x = _embed(1, 8, 4)
    g = L.GBST(max_block_size=2, downsample_rate=1, conv_kernel_size=0, quantize=False, mixing="sfl")
    out, _ = g(x, ops.ones((1, 8)))
    xn = N(x)[0]
    w = N(g.scorer.kernel)[:, 0]
    b2 = np.repeat(xn.reshape(4, 2, 4).mean(1), 2, axis=0)
    s1, s2 = xn @ w, b2 @ w                                   # raw linear scores, not normalised
    assert np.allclose(N(g.last_scores)[0], np.stack([s1, s2], -1), atol=1e-5)
    assert np.allclose(N(out)[0], (s1[:, None] * xn + s2[:, None] * b2) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="mixing"):
        L.GBST(mixing="max")


# ---------------------------------------------------------------- QRNN

def _loop_reference(z, f, c0=None):
    b, t, c = z.shape
    out = np.zeros_like(z)
    state = np.zeros((b, c)) if c0 is None else c0
    for i in range(t):
        state = f[:, i] * state + (1 - f[:, i]) * z[:, i]
        out[:, i] = state
    return out


def test_fo_pooling_loop_scan_and_doubling_match_python_loop():
    rng = np.random.default_rng(0)
    for steps in (17, 1, 2, 64):      # not a power of 2, the shortest, and powers of 2 (the doubling's levels)
        z = np.tanh(rng.normal(size=(3, steps, 5))).astype(np.float32)
        f = (1 / (1 + np.exp(-rng.normal(size=(3, steps, 5))))).astype(np.float32)
        ref = _loop_reference(z, f)
        for pool in (L.fo_pool_loop, L.fo_pool_scan, L.fo_pool_doubling):
            assert np.allclose(N(pool(T(z), T(f))), ref, atol=1e-5), (pool.__name__, steps)


def test_fo_pooling_keeps_the_state_in_float():
    """f = 0.995, z = 1 over 128 steps: c_128 = 1 - 0.995^128 = 0.474 with a float state (SeqFlowLite's);
    an 8-bit state in [-1, 1] (step 2/255) cannot take the small increments and ends far off."""
    z, f = np.ones((1, 128, 1), np.float32), np.full((1, 128, 1), 0.995, np.float32)
    exact = 1 - 0.995 ** 128
    for pool in (L.fo_pool_loop, L.fo_pool_scan, L.fo_pool_doubling):
        assert abs(float(N(pool(T(z), T(f)))[0, -1, 0]) - exact) < 1e-4
    eight_bit = float(N(L.fo_pool_loop(T(z), T(f), quantize_state=True))[0, -1, 0])
    assert abs(eight_bit - exact) > 0.1


def _qrnn_numpy(layer, x):
    """The QRNN forward pass recomputed in numpy from the layer's weights (quantize=False)."""
    k = N(layer.conv.kernel)
    bias = N(layer.conv.bias)
    kw = k.shape[0]
    xp = np.pad(x, [(0, 0), (kw - 1, 0), (0, 0)])
    zfo = np.stack([sum(xp[:, t + j] @ k[j] for j in range(kw)) for t in range(x.shape[1])], 1) + bias
    u = layer.units
    z, f, o = np.tanh(zfo[..., :u]), 1 / (1 + np.exp(-zfo[..., u:2 * u])), 1 / (1 + np.exp(-zfo[..., 2 * u:]))
    return o * _loop_reference(z, f)


def test_qrnn_layer_matches_numpy_recurrence():
    x = N(_embed(2, 10, 6))
    layer = L.QRNN(4, kernel_width=3, quantize=False)
    h = N(layer(T(x), ops.ones((2, 10)), training=False))
    assert np.allclose(h, _qrnn_numpy(layer, x), atol=1e-5)


@pytest.mark.parametrize("pooling", ["scan", "doubling"])
def test_qrnn_scan_and_doubling_pooling_equal_loop(pooling):
    x = _embed(2, 10, 6)
    a = L.QRNN(4, quantize=False, pooling="loop")
    ha = a(x, ops.ones((2, 10)))
    b = L.QRNN(4, quantize=False, pooling=pooling)
    b(x, ops.ones((2, 10)))
    b.set_weights(a.get_weights())
    assert np.allclose(N(ha), N(b(x, ops.ones((2, 10)))), atol=1e-5)


def test_scan_pooling_gradients_equal_loop():
    """Training with the scan form (the GPU profile's) follows the same gradients as the loop, also over a
    long sequence."""
    rng = np.random.default_rng(3)
    for t in (9, 48):
        z = np.tanh(rng.normal(size=(2, t, 3))).astype(np.float32)
        f = (1 / (1 + np.exp(-2 * rng.normal(size=(2, t, 3))))).astype(np.float32)
        w = T(rng.normal(size=(2, t, 3)).astype(np.float32))
        g_loop = grads(lambda z, f: ops.sum(L.fo_pool_loop(z, f) * w), z, f)
        g_scan = grads(lambda z, f: ops.sum(L.fo_pool_scan(z, f) * w), z, f)
        for a, b in zip(g_loop, g_scan):
            assert np.all(np.isfinite(b)) and np.allclose(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pooling", ["loop", "scan", "doubling"])
def test_bidirectional_stack_runs_both_directions_in_one_loop_exactly(pooling):
    """BiQRNNStack pools both directions in one recurrence: the same outputs (8-bit fake quantization on)
    as running each direction's QRNN layer on its own and concatenating."""
    x = _embed(2, 12, 6)
    mask = T(np.r_[np.ones(12), np.r_[np.ones(9), np.zeros(3)]].reshape(2, 12).astype(np.float32))
    stack = L.BiQRNNStack(4, num_layers=2, pooling=pooling, quantize=True)
    out = N(stack(x, mask))
    h = x
    for f, b in zip(stack.fwd, stack.bwd):
        h = ops.concatenate([f(h, mask), b(h, mask)], axis=-1)
    assert out.shape == (2, 12, 8)
    assert np.allclose(out, N(h), atol=1e-6)


def test_qrnn_zoneout_only_in_training():
    x = _embed(2, 10, 6)
    m = ops.ones((2, 10))
    layer = L.QRNN(4, zoneout=1.0, quantize=False)
    assert np.allclose(N(layer(x, m, training=True)), 0.0)       # every state zoned out: c stays 0
    h1, h2 = N(layer(x, m, training=False)), N(layer(x, m, training=False))
    assert np.abs(h1).max() > 0 and np.array_equal(h1, h2)
    half = L.QRNN(4, zoneout=0.5, quantize=False)
    half(x, m)
    assert not np.allclose(N(half(x, m, training=True)), N(half(x, m, training=False)))


def test_qrnn_backward_direction_and_padding():
    x = _embed(1, 10, 6)
    fwd = L.QRNN(4, quantize=False)
    bwd = L.QRNN(4, quantize=False, go_backwards=True)
    m = ops.ones((1, 10))
    fwd(x, m)
    bwd(x, m)
    bwd.set_weights(fwd.get_weights())
    assert np.allclose(N(bwd(x, m)), N(fwd(x[:, ::-1], m))[:, ::-1], atol=1e-6)
    # padding: outputs at pads are 0 and real positions equal the unpadded run, both directions
    xp = ops.concatenate([x[:, :7], normal(1, 3, 6, seed=5)], axis=1)
    mp = T([[1.0] * 7 + [0.0] * 3])
    for layer in (fwd, bwd):
        hp = N(layer(xp, mp))
        h7 = N(layer(x[:, :7], ops.ones((1, 7))))
        assert np.allclose(hp[:, 7:], 0) and np.allclose(hp[:, :7], h7, atol=1e-5)


def test_bidirectional_stack_shape_and_zoneout_decay():
    stack = L.BiQRNNStack(8, num_layers=3, zoneout=0.1, zoneout_decay=0.5, quantize=True)
    out = stack(_embed(2, 12, 6), ops.ones((2, 12)), training=True)
    assert out.shape == (2, 12, 16)
    assert [l.zoneout for l in stack.fwd] == pytest.approx([0.1, 0.05, 0.025])
    assert all(l.go_backwards for l in stack.bwd) and not any(l.go_backwards for l in stack.fwd)
    with pytest.raises(ValueError, match="pooling"):
        L.QRNN(4, pooling="parallel")


# ---------------------------------------------------------------- attention pooling

def test_attention_pooling_masks_and_normalises():
    h = _embed(2, 6, 4)
    mask = T([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], np.float32)
    pool = L.AttentionPooling(quantize=False)
    out = N(pool(h, mask))
    a = N(pool.last_weights)
    assert np.allclose(a.sum(-1), 1, atol=1e-5) and np.allclose(a[0, 3:], 0)
    assert np.allclose(out, np.einsum("bt,btd->bd", a, N(h)), atol=1e-5)
    pool.score.kernel.assign(np.zeros(pool.score.kernel.shape, np.float32))     # uniform scores -> masked mean
    out = N(pool(h, mask))
    assert np.allclose(out[0], N(h)[0, :3].mean(0), atol=1e-5)


def test_attention_pooling_of_an_all_padding_input_is_zero():
    h = _embed(2, 6, 4)
    mask = T([[0] * 6, [1] * 6], np.float32)
    pool = L.AttentionPooling(quantize=False)
    out = N(pool(h, mask))
    assert np.all(np.isfinite(out)) and np.allclose(out[0], 0) and np.abs(out[1]).max() > 0
