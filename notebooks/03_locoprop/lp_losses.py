"""Matching losses: Bregman divergences induced by a transfer function f, with F' = f.

For a layer with pre-activation a_hat = W y + b and a post-activation target y_t, LocoProp-M
minimises the matching loss

    L_f(a_hat, y_t) = F(a_hat) - a_hat * y_t + F*(y_t) = D_F(a_hat, f^-1(y_t))   (elementwise, summed)

where F* is the convex conjugate of F. Its gradient in a_hat is f(a_hat) - y_t, so the gradient in W
is y^T (f(W y + b) - y_t): no derivative of f is ever needed. It is >= 0 and zero exactly when
f(a_hat) = y_t. Potentials F:  identity: a^2/2,  tanh: log cosh a,  sigmoid: softplus a,
relu: max(a, 0)^2 / 2.

Targets y_t = f(a) - gamma dL/da may leave f's range (|y_t| > 1 for tanh); then F*(y_t) is +inf,
but the part that depends on the weights, F(a_hat) - a_hat * y_t, and its gradient stay finite.
Training therefore uses `matching_loss(..., constant=False)` (or directly its gradient).
"""
from __future__ import annotations

import math

from keras import ops

TRANSFERS = ("identity", "tanh", "sigmoid", "relu")


def _check(name):
    if name not in TRANSFERS:
        raise ValueError(f"transfer {name!r}; use one of {TRANSFERS}")


def transfer(name: str, a):
    """f(a)."""
    _check(name)
    return {"identity": lambda: a, "tanh": lambda: ops.tanh(a), "sigmoid": lambda: ops.sigmoid(a),
            "relu": lambda: ops.relu(a)}[name]()


def potential(name: str, a):
    """F(a) with F' = f (numerically stable forms)."""
    _check(name)
    if name == "identity":
        return 0.5 * ops.square(a)
    if name == "tanh":   # log cosh a = |a| + log(1 + exp(-2|a|)) - log 2
        return ops.abs(a) + ops.softplus(-2.0 * ops.abs(a)) - math.log(2.0)
    if name == "sigmoid":
        return ops.softplus(a)
    return 0.5 * ops.square(ops.relu(a))


def _xlogx(x):
    """x log x with 0 log 0 = 0 (x >= 0)."""
    safe = ops.where(x > 0, x, ops.ones_like(x))
    return ops.where(x > 0, x * ops.log(safe), ops.zeros_like(x))


def conjugate(name: str, y):
    """F*(y) = sup_a (a y - F(a)); +inf outside f's range."""
    _check(name)
    y = ops.convert_to_tensor(y)
    inf = ops.full_like(y, float("inf"))
    if name == "identity":
        return 0.5 * ops.square(y)
    if name == "tanh":   # ((1+y) log(1+y) + (1-y) log(1-y)) / 2 on [-1, 1]
        inside = ops.abs(y) <= 1.0
        ys = ops.where(inside, y, ops.zeros_like(y))
        return ops.where(inside, 0.5 * (_xlogx(1.0 + ys) + _xlogx(1.0 - ys)), inf)
    if name == "sigmoid":  # y log y + (1-y) log(1-y) on [0, 1]
        inside = ops.logical_and(y >= 0.0, y <= 1.0)
        ys = ops.where(inside, y, ops.zeros_like(y))
        return ops.where(inside, _xlogx(ys) + _xlogx(1.0 - ys), inf)
    inside = y >= 0.0      # relu
    return ops.where(inside, 0.5 * ops.square(ops.where(inside, y, ops.zeros_like(y))), inf)


def bregman(name: str, a, a_ref):
    """D_F(a, a_ref) = F(a) - F(a_ref) - f(a_ref) (a - a_ref), summed: a divergence between pre-activations."""
    return ops.sum(potential(name, a) - potential(name, a_ref) - transfer(name, a_ref) * (a - a_ref))


def matching_loss(name: str, a_hat, y_target, constant: bool = True):
    """Summed matching loss of pre-activations `a_hat` against post-activation targets `y_target`.

    constant=False drops F*(y_target), which does not depend on the weights (and is +inf for targets
    outside f's range): same gradient, always finite.
    """
    core = potential(name, a_hat) - a_hat * y_target
    if constant:
        core = core + conjugate(name, y_target)
    return ops.sum(core)


def matching_loss_grad(name: str, a_hat, y_target):
    """d matching_loss / d a_hat = f(a_hat) - y_target (closed form used by the training step)."""
    return transfer(name, a_hat) - y_target


def squared_loss(a_hat, a_target):
    """LocoProp-S's local loss 1/2 ||a_hat - a_target||^2 (= the identity's matching loss)."""
    return 0.5 * ops.sum(ops.square(a_hat - a_target))
