import numpy as np
import pytest
import tensorflow as tf

from lp_losses import bregman, conjugate, matching_loss, matching_loss_grad, squared_loss, transfer

rng = np.random.default_rng(0)
NAMES = ["tanh", "sigmoid", "relu", "identity"]


def _in_range_targets(name, shape):
    a = rng.normal(0, 1.5, shape)
    if name == "relu":
        a = np.abs(a) + 0.1
    return tf.constant(a), transfer(name, tf.constant(a))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("constant", [True, False])
def test_gradient_matches_autodiff(name, constant):
    a_hat = tf.constant(rng.normal(0, 2, (7, 5)))
    _, y_t = _in_range_targets(name, (7, 5))
    with tf.GradientTape() as tape:
        tape.watch(a_hat)
        loss = matching_loss(name, a_hat, y_t, constant=constant)
    auto = tape.gradient(loss, a_hat).numpy()
    np.testing.assert_allclose(auto, matching_loss_grad(name, a_hat, y_t).numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_with_out_of_range_targets_is_finite_and_exact(name):
    a_hat = tf.constant(rng.normal(0, 2, (6, 4)))
    y_t = tf.constant(rng.normal(0, 3, (6, 4)))      # gamma * dL/da pushes targets out of f's range
    with tf.GradientTape() as tape:
        tape.watch(a_hat)
        loss = matching_loss(name, a_hat, y_t, constant=False)
    assert np.isfinite(loss.numpy())
    np.testing.assert_allclose(tape.gradient(loss, a_hat).numpy(),
                               (transfer(name, a_hat) - y_t).numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_zero_exactly_at_target_and_positive_elsewhere(name):
    a, y_t = _in_range_targets(name, (50,))
    assert abs(matching_loss(name, a, y_t).numpy()) < 1e-9
    off = matching_loss(name, a + 0.3, y_t).numpy()
    assert off > 1e-3
    assert bregman(name, a, a).numpy() == 0.0


def test_relu_zero_target_with_negative_preactivation():
    a = tf.constant([-2.0, -0.5, -1e-3], tf.float64)
    assert matching_loss("relu", a, tf.zeros_like(a)).numpy() == 0.0


@pytest.mark.parametrize("name,inverse", [("tanh", np.arctanh), ("sigmoid", lambda y: np.log(y / (1 - y))),
                                          ("relu", lambda y: y), ("identity", lambda y: y)])
def test_matching_loss_is_the_bregman_divergence(name, inverse):
    a_hat = tf.constant(rng.normal(0, 1, (20,)))
    a_ref, y_t = _in_range_targets(name, (20,))
    np.testing.assert_allclose(matching_loss(name, a_hat, y_t).numpy(),
                               bregman(name, a_hat, tf.constant(inverse(y_t.numpy()))).numpy(), rtol=1e-8)
    np.testing.assert_allclose(matching_loss(name, a_hat, y_t).numpy(), bregman(name, a_hat, a_ref).numpy(), rtol=1e-8)


def test_conjugate_is_infinite_outside_range():
    assert np.isinf(conjugate("tanh", tf.constant([1.5], tf.float64)).numpy()).all()
    assert np.isinf(conjugate("sigmoid", tf.constant([-0.1], tf.float64)).numpy()).all()
    assert np.isinf(conjugate("relu", tf.constant([-0.1], tf.float64)).numpy()).all()


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "relu"])
def test_weight_gradient_is_y_transpose_delta(name):
    """The closed form the training step uses: d/dW sum L_f(yW + b, y_t) = y^T (f(yW + b) - y_t)."""
    y = tf.constant(rng.normal(0, 1, (8, 3)))
    W = tf.Variable(rng.normal(0, 1, (3, 4)))
    b = tf.Variable(rng.normal(0, 1, (4,)))
    y_t = tf.constant(rng.uniform(0.05, 0.95, (8, 4)))
    with tf.GradientTape() as tape:
        loss = matching_loss(name, y @ W + b, y_t, constant=False)
    gW, gb = tape.gradient(loss, [W, b])
    delta = transfer(name, y @ W + b) - y_t
    np.testing.assert_allclose(gW.numpy(), (tf.transpose(y) @ delta).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gb.numpy(), tf.reduce_sum(delta, 0).numpy(), rtol=1e-10, atol=1e-12)


def test_squared_loss_equals_identity_matching_loss():
    a, t = tf.constant(rng.normal(size=9)), tf.constant(rng.normal(size=9))
    np.testing.assert_allclose(squared_loss(a, t).numpy(), matching_loss("identity", a, t).numpy(), rtol=1e-12)
