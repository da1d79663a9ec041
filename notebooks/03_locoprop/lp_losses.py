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

import tensorflow as tf

TRANSFERS = ("identity", "tanh", "sigmoid", "relu")


def _check(name):
    if name not in TRANSFERS:
        raise ValueError(f"transfer {name!r}; use one of {TRANSFERS}")


def transfer(name: str, a):
    """f(a)."""
    _check(name)
    return {"identity": lambda: a, "tanh": lambda: tf.tanh(a), "sigmoid": lambda: tf.sigmoid(a),
            "relu": lambda: tf.nn.relu(a)}[name]()


def potential(name: str, a):
    """F(a) with F' = f (numerically stable forms)."""
    _check(name)
    if name == "identity":
        return 0.5 * tf.square(a)
    if name == "tanh":   # log cosh a = |a| + log(1 + exp(-2|a|)) - log 2
        return tf.abs(a) + tf.nn.softplus(-2.0 * tf.abs(a)) - math.log(2.0)
    if name == "sigmoid":
        return tf.nn.softplus(a)
    return 0.5 * tf.square(tf.nn.relu(a))


def conjugate(name: str, y):
    """F*(y) = sup_a (a y - F(a)); +inf outside f's range."""
    _check(name)
    inf = tf.constant(float("inf"), y.dtype)
    if name == "identity":
        return 0.5 * tf.square(y)
    if name == "tanh":   # ((1+y) log(1+y) + (1-y) log(1-y)) / 2 on [-1, 1]
        inside = tf.abs(y) <= 1.0
        ys = tf.where(inside, y, tf.zeros_like(y))
        val = 0.5 * (tf.math.xlogy(1.0 + ys, 1.0 + ys) + tf.math.xlogy(1.0 - ys, 1.0 - ys))
        return tf.where(inside, val, inf)
    if name == "sigmoid":  # y log y + (1-y) log(1-y) on [0, 1]
        inside = (y >= 0.0) & (y <= 1.0)
        ys = tf.where(inside, y, tf.zeros_like(y))
        return tf.where(inside, tf.math.xlogy(ys, ys) + tf.math.xlogy(1.0 - ys, 1.0 - ys), inf)
    inside = y >= 0.0      # relu
    return tf.where(inside, 0.5 * tf.square(tf.where(inside, y, tf.zeros_like(y))), inf)


def bregman(name: str, a, a_ref):
    """D_F(a, a_ref) = F(a) - F(a_ref) - f(a_ref) (a - a_ref), summed: a divergence between pre-activations."""
    return tf.reduce_sum(potential(name, a) - potential(name, a_ref) - transfer(name, a_ref) * (a - a_ref))


def matching_loss(name: str, a_hat, y_target, constant: bool = True):
    """Summed matching loss of pre-activations `a_hat` against post-activation targets `y_target`.

    constant=False drops F*(y_target), which does not depend on the weights (and is +inf for targets
    outside f's range): same gradient, always finite.
    """
    core = potential(name, a_hat) - a_hat * y_target
    if constant:
        core = core + conjugate(name, y_target)
    return tf.reduce_sum(core)


def matching_loss_grad(name: str, a_hat, y_target):
    """d matching_loss / d a_hat = f(a_hat) - y_target (closed form used by the training step)."""
    return transfer(name, a_hat) - y_target


def squared_loss(a_hat, a_target):
    """LocoProp-S's local loss 1/2 ||a_hat - a_target||^2 (= the identity's matching loss)."""
    return 0.5 * tf.reduce_sum(tf.square(a_hat - a_target))
