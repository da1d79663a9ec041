import gzip
import struct

import numpy as np
import pytest
from keras import ops

import lp_backend
import lp_data
import lp_model
from lp_model import ARCH, glorot_init, layer_activations, reconstruction_loss


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_read_idx_roundtrip_and_errors(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", arr)
    np.testing.assert_array_equal(lp_data.read_idx(tmp_path / "train-images-idx3-ubyte.gz"), arr)
    imgs = lp_data.load_fashion_mnist(tmp_path, "train")
    assert imgs.shape == (5, 784) and imgs.dtype == np.float32 and imgs.max() <= 1.0
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00\x00\x00\x00")
    with pytest.raises(ValueError):
        lp_data.read_idx(tmp_path / "bad.gz")
    with pytest.raises(ValueError):
        lp_data.load_fashion_mnist(tmp_path, "valid")
    with pytest.raises(ValueError):
        lp_data.load_images("cifar")


def test_mnist_5k_from_the_registry():
    x = lp_data.load_images("mnist_5k")
    assert x.shape == (5000, 784) and x.dtype == np.float32
    assert 0.0 == x.min() and x.max() == 1.0
    assert 0.1 < x.mean() < 0.2          # MNIST's mean intensity is about 0.13


def test_epoch_orders_shared_and_deterministic():
    a = lp_data.epoch_orders(2500, 3, 1000, seed=4)
    b = lp_data.epoch_orders(2500, 3, 1000, seed=4)
    assert a.shape == (3, 2, 1000)
    np.testing.assert_array_equal(a, b)
    for epoch in a:
        assert len(np.unique(epoch)) == 2000          # no repeats within an epoch
    assert not np.array_equal(a[0], a[1])
    with pytest.raises(ValueError):
        lp_data.epoch_orders(10, 1, 20, 0)


def test_architecture_activations():
    assert layer_activations(ARCH) == ["tanh"] * 3 + ["identity"] + ["tanh"] * 3 + ["sigmoid"]
    assert layer_activations((9, 5, 3, 5, 9), "relu") == ["relu", "identity", "relu", "sigmoid"]
    with pytest.raises(ValueError):
        layer_activations((9, 5, 5, 9))
    with pytest.raises(ValueError):
        layer_activations((9, 5, 9), "gelu")


def test_glorot_limits_and_parameter_count():
    w, b = glorot_init((784, 100, 784), seed=0)[:2]
    assert w.shape == (784, 100) and b.shape == (100,)
    assert np.abs(w).max() <= np.sqrt(6 / 884) and np.abs(w).max() > 0.9 * np.sqrt(6 / 884)
    assert np.abs(b).max() <= np.sqrt(3 / 100)
    assert lp_model.n_params(ARCH) == sum(a.size for a in glorot_init(ARCH, 0)) == 2_837_314


def test_reconstruction_loss_is_summed_sigmoid_cross_entropy():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (4, 6)).astype(np.float32)
    z = rng.normal(size=(4, 6)).astype(np.float32) * 5
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    want = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum() / 4
    np.testing.assert_allclose(float(reconstruction_loss(ops.convert_to_tensor(z), ops.convert_to_tensor(x))),
                               want, rtol=1e-5)


@pytest.mark.parametrize("hidden", ["tanh", "relu"])
def test_explicit_backward_matches_autodiff(hidden):
    """dL/dW and dL/db from the written-out backward pass equal the backend's autodiff, for every layer."""
    widths = (12, 6, 3, 6, 12)
    acts = layer_activations(widths, hidden)
    params = [ops.convert_to_tensor(p) for p in glorot_init(widths, seed=2)]
    x = ops.convert_to_tensor(np.random.default_rng(3).uniform(0, 1, (9, 12)).astype(np.float32))
    loss, grads = lp_model.loss_and_grads(params, acts, x)
    for j in range(len(params)):
        def f(pj, j=j):
            return lp_model.batch_loss(params[:j] + [pj] + params[j + 1:], acts, x)
        value, auto = lp_backend.value_and_grad(f)(params[j])
        assert float(value) == pytest.approx(float(loss), rel=1e-6)
        np.testing.assert_allclose(np.asarray(grads[j]), np.asarray(auto), rtol=1e-4, atol=1e-6)
