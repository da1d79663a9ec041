import numpy as np
import pytest
from keras import ops

import lp_backend

from lp_losses import bregman, conjugate, matching_loss, matching_loss_grad, squared_loss, transfer

rng = np.random.default_rng(0)
NAMES = ["tanh", "sigmoid", "relu", "identity"]


def T(a):
    return ops.convert_to_tensor(np.asarray(a, np.float32))


def _in_range_targets(name, shape):
    a = rng.normal(0, 1.5, shape)
    if name == "relu":
        a = np.abs(a) + 0.1
    return T(a), transfer(name, T(a))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("constant", [True, False])
def test_gradient_matches_autodiff(name, constant):
    a_hat = T(rng.normal(0, 2, (7, 5)))
    _, y_t = _in_range_targets(name, (7, 5))
    _, auto = lp_backend.value_and_grad(lambda a: matching_loss(name, a, y_t, constant=constant))(a_hat)
    np.testing.assert_allclose(np.asarray(auto), np.asarray(matching_loss_grad(name, a_hat, y_t)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_with_out_of_range_targets_is_finite_and_exact(name):
    a_hat = T(rng.normal(0, 2, (6, 4)))
    y_t = T(rng.normal(0, 3, (6, 4)))      # gamma * dL/da pushes targets out of f's range
    loss, grad = lp_backend.value_and_grad(lambda a: matching_loss(name, a, y_t, constant=False))(a_hat)
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(transfer(name, a_hat) - y_t), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_zero_exactly_at_target_and_positive_elsewhere(name):
    a, y_t = _in_range_targets(name, (50,))
    assert abs(float(matching_loss(name, a, y_t))) < 1e-3       # float32: 50 terms of O(1)
    off = float(matching_loss(name, a + 0.3, y_t))
    assert off > 0.1
    assert float(bregman(name, a, a)) == 0.0


def test_relu_zero_target_with_negative_preactivation():
    a = T([-2.0, -0.5, -1e-3])
    assert float(matching_loss("relu", a, ops.zeros_like(a))) == 0.0


@pytest.mark.parametrize("name,inverse", [("tanh", np.arctanh), ("sigmoid", lambda y: np.log(y / (1 - y))),
                                          ("relu", lambda y: y), ("identity", lambda y: y)])
def test_matching_loss_is_the_bregman_divergence(name, inverse):
    a_hat = T(rng.normal(0, 1, (20,)))
    a_ref, y_t = _in_range_targets(name, (20,))
    ml = float(matching_loss(name, a_hat, y_t))
    np.testing.assert_allclose(ml, float(bregman(name, a_hat, T(inverse(np.asarray(y_t, np.float64))))), rtol=2e-3)
    np.testing.assert_allclose(ml, float(bregman(name, a_hat, a_ref)), rtol=2e-3)


def test_conjugate_is_infinite_outside_range():
    assert np.isinf(np.asarray(conjugate("tanh", T([1.5])))).all()
    assert np.isinf(np.asarray(conjugate("sigmoid", T([-0.1])))).all()
    assert np.isinf(np.asarray(conjugate("relu", T([-0.1])))).all()
    assert np.isfinite(np.asarray(conjugate("tanh", T([-1.0, 0.0, 1.0])))).all()   # 0 log 0 = 0 at the ends
    with pytest.raises(ValueError):
        conjugate("softmax", T([0.5]))


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "relu"])
def test_weight_gradient_is_y_transpose_delta(name):
    """The closed form the training step uses: d/dW sum L_f(yW + b, y_t) = y^T (f(yW + b) - y_t)."""
    y = T(rng.normal(0, 1, (8, 3)))
    W = T(rng.normal(0, 1, (3, 4)))
    b = T(rng.normal(0, 1, (4,)))
    y_t = T(rng.uniform(0.05, 0.95, (8, 4)))
    _, gW = lp_backend.value_and_grad(lambda w: matching_loss(name, ops.matmul(y, w) + b, y_t, constant=False))(W)
    delta = transfer(name, ops.matmul(y, W) + b) - y_t
    np.testing.assert_allclose(np.asarray(gW), np.asarray(ops.matmul(ops.transpose(y), delta)), rtol=1e-5, atol=1e-5)


def test_squared_loss_equals_identity_matching_loss():
    a, t = T(rng.normal(size=9)), T(rng.normal(size=9))
    np.testing.assert_allclose(float(squared_loss(a, t)), float(matching_loss("identity", a, t)), rtol=1e-5)
