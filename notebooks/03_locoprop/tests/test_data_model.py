import gzip
import struct

import numpy as np
import pytest
import tensorflow as tf

import lp_data
from lp_model import ARCH, Autoencoder, dataset_loss, glorot_init, layer_activations, reconstruction_loss


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


def test_glorot_limits_and_parameter_count():
    params = glorot_init((784, 100, 784), seed=0)
    w, b = params[0]
    assert w.shape == (784, 100) and b.shape == (100,)
    assert np.abs(w).max() <= np.sqrt(6 / 884) and np.abs(w).max() > 0.9 * np.sqrt(6 / 884)
    assert np.abs(b).max() <= np.sqrt(3 / 100)
    assert Autoencoder(ARCH).n_params == sum(i * o + o for i, o in zip(ARCH[:-1], ARCH[1:])) == 2_837_314


def test_reconstruction_loss_is_summed_sigmoid_cross_entropy():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (4, 6))
    z = rng.normal(size=(4, 6))
    p = 1 / (1 + np.exp(-z))
    want = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum() / 4
    np.testing.assert_allclose(reconstruction_loss(tf.constant(z), tf.constant(x)).numpy(), want, rtol=1e-10)


def test_model_reset_and_dataset_loss():
    model = Autoencoder((12, 6, 3, 6, 12), seed=0)
    x = np.random.default_rng(2).uniform(0, 1, (7, 12)).astype(np.float32)
    before = dataset_loss(model, x, chunk=3)
    np.testing.assert_allclose(before, float(model.loss(tf.constant(x))), rtol=1e-5)
    model.weights[0].assign_add(tf.ones_like(model.weights[0]))
    assert dataset_loss(model, x) != pytest.approx(before)
    model.reset()
    assert dataset_loss(model, x) == pytest.approx(before, rel=1e-6)
