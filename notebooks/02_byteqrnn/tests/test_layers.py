"""Each ByteQRNN building block on its own."""
import numpy as np
import pytest
import tensorflow as tf

import bq_layers as L


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


def test_tf_byte_splitter_matches_numpy():
    texts = ["", "a", "hé!", "x" * 40, "你好世界"]
    tf_ids = L.ByteSplitter(16)(tf.constant(texts)).numpy()
    assert np.array_equal(tf_ids, L.encode_bytes(texts, 16))


# ---------------------------------------------------------------- quantization

def test_fake_quant_matches_reference_and_has_256_levels():
    x = np.linspace(-3, 5, 2001).astype(np.float32)
    y = L.fake_quant(tf.constant(x), -2.0, 4.0).numpy()
    ref = L.fake_quant_reference(x, -2.0, 4.0)
    diff = np.abs(y - ref)
    step = 6.0 / 255
    # identical except at a few exact rounding ties, where they may differ by one level
    assert np.mean(diff > 1e-5) < 0.01 and np.all((diff < 1e-5) | (np.abs(diff - step) < 1e-4))
    assert len(np.unique(y)) <= 256
    inside = (x > -1.9) & (x < 3.9)
    assert np.max(np.abs(y[inside] - x[inside])) <= (6.0 / 255) / 2 + 1e-6


def test_fake_quant_straight_through_gradient():
    x = tf.constant(np.array([-5.0, -1.0, 0.3, 2.0, 9.0], np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(L.fake_quant(x, -2.0, 4.0) * 3.0)
    g = tape.gradient(y, x).numpy()
    assert g.tolist() == [0.0, 3.0, 3.0, 3.0, 0.0]  # identity inside the range, zero outside


def test_activation_quant_tracks_min_max_with_moving_average():
    q = L.ActivationQuant(decay=0.5)
    a = tf.constant([[-1.0, 2.0]])
    q(a, training=True)
    assert np.isclose(float(q.min_val.numpy()), -1.0) and np.isclose(float(q.max_val.numpy()), 2.0)
    q(tf.constant([[-3.0, 4.0]]), training=True)
    assert np.isclose(float(q.min_val.numpy()), -2.0) and np.isclose(float(q.max_val.numpy()), 3.0)
    q(tf.constant([[-100.0, 100.0]]), training=False)          # inference does not move the range
    assert np.isclose(float(q.max_val.numpy()), 3.0)
    y = q(tf.constant(np.linspace(-5, 5, 1000, dtype=np.float32)), training=False).numpy()
    assert y.min() >= -2.0 - 1e-5 and y.max() <= 3.0 + 1e-5 and len(np.unique(y)) <= 256


def test_activation_quant_range_contains_zero():
    q = L.ActivationQuant()
    q(tf.constant([2.0, 3.0]), training=True)
    assert float(q.min_val.numpy()) == 0.0


def test_qdense_weights_are_int8_and_trainable():
    layer = L.QDense(8, quantize=True, quantize_output=False)
    x = tf.random.normal([4, 16], seed=1)
    layer(x)
    wq = L.quantize_weight(layer.kernel, True).numpy()
    a = np.abs(layer.kernel.numpy()).max()
    levels = np.round(wq / (a / 127)).astype(int)
    assert np.allclose(wq, levels * a / 127, atol=1e-5) and np.abs(levels).max() <= 127
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    g = tape.gradient(loss, layer.kernel)
    assert g is not None and float(tf.reduce_sum(tf.abs(g))) > 0


# ---------------------------------------------------------------- GBST

def _embed(b=2, l=48, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.normal(size=(b, l, d)).astype(np.float32))


@pytest.mark.parametrize("ds", [1, 2, 4])
@pytest.mark.parametrize("calibrate", [False, True])
def test_gbst_output_length_and_scores_sum_to_one(ds, calibrate):
    x = _embed()
    mask = tf.ones(x.shape[:2])
    g = L.GBST(max_block_size=4, downsample_rate=ds, conv_kernel_size=3, calibrate=calibrate, quantize=False)
    out, out_mask = g(x, mask)
    assert out.shape == (2, 48 // ds, 8) and out_mask.shape == (2, 48 // ds)
    s = g.last_scores.numpy()
    assert s.shape == (2, 48, 4)
    assert np.allclose(s.sum(-1), 1.0, atol=1e-5) and (s >= 0).all()


def test_gbst_block_means_match_numpy():
    x = _embed(1, 12, 3)
    mask = np.ones((1, 12), np.float32)
    mask[0, 10:] = 0
    rep, blocks = L._masked_block_mean(x * mask[..., None], tf.constant(mask), 4)
    xn = x.numpy()[0]
    expect = np.stack([xn[0:4].mean(0), xn[4:8].mean(0), xn[8:10].mean(0)])  # pads excluded
    assert np.allclose(blocks.numpy()[0], expect, atol=1e-5)
    assert np.allclose(rep.numpy()[0, 5], expect[1], atol=1e-5)


def test_gbst_single_block_size_is_identity():
    x = _embed()
    g = L.GBST(max_block_size=1, downsample_rate=1, conv_kernel_size=0, quantize=False)
    out, _ = g(x, tf.ones(x.shape[:2]))
    assert np.allclose(out.numpy(), x.numpy(), atol=1e-6)


def test_gbst_mixes_candidates_with_the_softmax_weights():
    x = _embed(1, 8, 4)
    mask = tf.ones([1, 8])
    g = L.GBST(max_block_size=2, downsample_rate=1, conv_kernel_size=0, quantize=False)
    out, _ = g(x, mask)
    s = g.last_scores.numpy()[0]
    xn = x.numpy()[0]
    b2 = np.repeat(xn.reshape(4, 2, 4).mean(1), 2, axis=0)
    assert np.allclose(out.numpy()[0], s[:, :1] * xn + s[:, 1:] * b2, atol=1e-5)


# ---------------------------------------------------------------- QRNN

def _loop_reference(z, f, c0=None):
    b, t, c = z.shape
    out = np.zeros_like(z)
    state = np.zeros((b, c)) if c0 is None else c0
    for i in range(t):
        state = f[:, i] * state + (1 - f[:, i]) * z[:, i]
        out[:, i] = state
    return out


def test_fo_pooling_matches_python_loop():
    rng = np.random.default_rng(0)
    z = np.tanh(rng.normal(size=(3, 17, 5))).astype(np.float32)
    f = (1 / (1 + np.exp(-rng.normal(size=(3, 17, 5))))).astype(np.float32)
    ref = _loop_reference(z, f)
    assert np.allclose(L.fo_pool_loop(tf.constant(z), tf.constant(f)).numpy(), ref, atol=1e-5)
    assert np.allclose(L.fo_pool_parallel(tf.constant(z), tf.constant(f)).numpy(), ref, atol=1e-4)


def _qrnn_numpy(layer, x):
    """The QRNN forward pass recomputed in numpy from the layer's weights (quantize=False)."""
    k = layer.conv.kernel.numpy()
    bias = layer.conv.bias.numpy()
    kw = k.shape[0]
    xp = np.pad(x, [(0, 0), (kw - 1, 0), (0, 0)])
    zfo = np.stack([sum(xp[:, t + j] @ k[j] for j in range(kw)) for t in range(x.shape[1])], 1) + bias
    u = layer.units
    z, f, o = np.tanh(zfo[..., :u]), 1 / (1 + np.exp(-zfo[..., u:2 * u])), 1 / (1 + np.exp(-zfo[..., 2 * u:]))
    return o * _loop_reference(z, f)


def test_qrnn_layer_matches_numpy_recurrence():
    x = _embed(2, 10, 6).numpy()
    layer = L.QRNN(4, kernel_width=3, quantize=False)
    h = layer(tf.constant(x), tf.ones([2, 10]), training=False).numpy()
    assert np.allclose(h, _qrnn_numpy(layer, x), atol=1e-5)


def test_qrnn_parallel_pooling_equals_loop():
    x = _embed(2, 10, 6)
    a = L.QRNN(4, quantize=False, pooling="loop")
    ha = a(x, tf.ones([2, 10]))
    b = L.QRNN(4, quantize=False, pooling="parallel")
    b(x, tf.ones([2, 10]))
    b.set_weights(a.get_weights())
    assert np.allclose(ha.numpy(), b(x, tf.ones([2, 10])).numpy(), atol=1e-4)


def test_parallel_pooling_gradients_equal_loop():
    """Training with the parallel form (the full profile's) follows the same gradients as the loop,
    also over a long sequence where the products of forget gates underflow in the log-space form."""
    rng = np.random.default_rng(3)
    for T in (9, 128):
        z = tf.constant(np.tanh(rng.normal(size=(2, T, 3))).astype(np.float32))
        f = tf.constant((1 / (1 + np.exp(-2 * rng.normal(size=(2, T, 3))))).astype(np.float32))
        w = tf.constant(rng.normal(size=(2, T, 3)).astype(np.float32))
        grads = []
        for pool in (L.fo_pool_loop, L.fo_pool_parallel):
            with tf.GradientTape() as tape:
                tape.watch([z, f])
                loss = tf.reduce_sum(pool(z, f) * w)
            grads.append([g.numpy() for g in tape.gradient(loss, [z, f])])
        for g_loop, g_par in zip(*grads):
            assert np.all(np.isfinite(g_par))
            assert np.allclose(g_par, g_loop, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("pooling", ["loop", "parallel"])
def test_bidirectional_stack_runs_both_directions_in_one_loop_exactly(pooling):
    """BiQRNNStack pools both directions in one recurrence: the same outputs (8-bit fake quantization on)
    as running each direction's QRNN layer on its own and concatenating."""
    x = _embed(2, 12, 6)
    mask = tf.constant(np.r_[np.ones(12), np.r_[np.ones(9), np.zeros(3)]].reshape(2, 12).astype(np.float32))
    stack = L.BiQRNNStack(4, num_layers=2, pooling=pooling, quantize=True)
    out = stack(x, mask).numpy()
    h = x
    for f, b in zip(stack.fwd, stack.bwd):
        h = tf.concat([f(h, mask), b(h, mask)], axis=-1)
    assert out.shape == (2, 12, 8)
    assert np.allclose(out, h.numpy(), atol=1e-6)


def test_qrnn_zoneout_only_in_training():
    x = _embed(2, 10, 6)
    m = tf.ones([2, 10])
    layer = L.QRNN(4, zoneout=1.0, quantize=False)
    assert np.allclose(layer(x, m, training=True).numpy(), 0.0)       # every state zoned out: c stays 0
    h1, h2 = layer(x, m, training=False), layer(x, m, training=False)
    assert np.abs(h1.numpy()).max() > 0 and np.array_equal(h1.numpy(), h2.numpy())
    half = L.QRNN(4, zoneout=0.5, quantize=False)
    half(x, m)
    assert not np.allclose(half(x, m, training=True).numpy(), half(x, m, training=False).numpy())


def test_qrnn_backward_direction_and_padding():
    x = _embed(1, 10, 6)
    fwd = L.QRNN(4, quantize=False)
    bwd = L.QRNN(4, quantize=False, go_backwards=True)
    m = tf.ones([1, 10])
    fwd(x, m)
    bwd(x, m)
    bwd.set_weights(fwd.get_weights())
    assert np.allclose(bwd(x, m).numpy(), fwd(x[:, ::-1], m).numpy()[:, ::-1], atol=1e-6)
    # padding: outputs at pads are 0 and real positions equal the unpadded run, both directions
    xp = tf.concat([x[:, :7], tf.random.normal([1, 3, 6])], axis=1)
    mp = tf.constant([[1.0] * 7 + [0.0] * 3])
    for layer in (fwd, bwd):
        hp = layer(xp, mp).numpy()
        h7 = layer(x[:, :7], tf.ones([1, 7])).numpy()
        assert np.allclose(hp[:, 7:], 0) and np.allclose(hp[:, :7], h7, atol=1e-5)


def test_bidirectional_stack_shape_and_zoneout_decay():
    stack = L.BiQRNNStack(8, num_layers=3, zoneout=0.1, zoneout_decay=0.5, quantize=True)
    out = stack(_embed(2, 12, 6), tf.ones([2, 12]), training=True)
    assert out.shape == (2, 12, 16)
    assert [l.zoneout for l in stack.fwd] == pytest.approx([0.1, 0.05, 0.025])
    assert all(l.go_backwards for l in stack.bwd) and not any(l.go_backwards for l in stack.fwd)


# ---------------------------------------------------------------- attention pooling

def test_attention_pooling_masks_and_normalises():
    h = _embed(2, 6, 4)
    mask = tf.constant([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], tf.float32)
    pool = L.AttentionPooling(quantize=False)
    out = pool(h, mask).numpy()
    a = pool.last_weights.numpy()
    assert np.allclose(a.sum(-1), 1, atol=1e-5) and np.allclose(a[0, 3:], 0)
    assert np.allclose(out, np.einsum("bt,btd->bd", a, h.numpy()), atol=1e-5)
    pool.score.kernel.assign(tf.zeros_like(pool.score.kernel))     # uniform scores -> masked mean
    out = pool(h, mask).numpy()
    assert np.allclose(out[0], h.numpy()[0, :3].mean(0), atol=1e-5)
