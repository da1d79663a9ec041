"""Every optimizer of the comparison as a pair of pure functions on tuples of arrays (any Keras backend).

    init(params) -> state,     step(params, state, x, lr, t) -> (params, state, loss)

`t` is the global step index (0, 1, ...), the same for all members of a learning-rate grid; Adam's
bias correction uses t + 1, Shampoo and K-FAC refresh their inverses when t % k == 0.

First-order baselines come in two settings, both stated in the results:
- Keras 3 defaults (the same update rules as `keras.optimizers.*`, checked by the tests);
- the official LocoProp code's flags (google-research `locoprop/locoprop_training.ipynb`, TF1
  `tf.train.*Optimizer`): momentum 1 - one_minus_beta1 = 0.999; RMSProp decay 1 - one_minus_beta2
  = 0.9, momentum 0.999, epsilon 1e-5 inside the square root, mean square initialised to 1; Adam
  beta1 0.999, beta2 0.9, epsilon 1e-5; AdaGrad initial accumulator 1e-5 (the `epsilon` flag), no
  epsilon. TF1's momentum accumulates raw gradients (a = mu a + g; w -= lr a) while Keras
  accumulates lr-scaled ones (m = mu m - lr g; w += m): they differ once the learning rate changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Sequence

import numpy as np
from keras import ops

import lp_model

FIRST_ORDER: Dict[str, dict] = {
    "SGD": dict(kind="sgd"),
    "Momentum": dict(kind="momentum", mu=0.9, form="keras"),
    "Momentum (source)": dict(kind="momentum", mu=0.999, form="tf1"),
    "AdaGrad": dict(kind="adagrad", init=0.1, eps=1e-7),
    "AdaGrad (source)": dict(kind="adagrad", init=1e-5, eps=0.0),
    "RMSProp": dict(kind="rmsprop", decay=0.9, momentum=0.0, eps=1e-7, ms_init=0.0),
    "RMSProp (source)": dict(kind="rmsprop", decay=0.9, momentum=0.999, eps=1e-5, ms_init=1.0),
    "Adam": dict(kind="adam", beta1=0.9, beta2=0.999, eps=1e-7),
    "Adam (source)": dict(kind="adam", beta1=0.999, beta2=0.9, eps=1e-5),
}
SECOND_ORDER = ("Shampoo", "K-FAC")
LOCOPROP = ("LocoProp-S", "LocoProp-M")
OPTIMIZERS = tuple(FIRST_ORDER) + SECOND_ORDER + LOCOPROP


@dataclass(frozen=True)
class Optimizer:
    name: str
    init: Callable
    step: Callable
    settings: str

    def state_bytes(self, params: Sequence[np.ndarray]) -> int:
        """Optimizer-state memory (float32) for these parameters."""
        leaves = _leaves(self.init(tuple(ops.convert_to_tensor(p) for p in params)))
        return int(sum(int(np.prod(ops.shape(a))) * 4 for a in leaves))


def _leaves(tree):
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in _leaves(item)]
    return [tree]


def key(name: str) -> str:
    """Results-file key: 'RMSProp (source)' -> 'rmsprop_source', 'K-FAC' -> 'kfac'."""
    return name.lower().replace(" (source)", "_source").replace("k-fac", "kfac").replace("-", "_")


def rmsprop_update(p, g, ms, mom, lr, decay, momentum, eps):
    """TF1 / Keras RMSProp for one array: ms = d ms + (1-d) g^2; inc = lr g / sqrt(ms + eps);
    with momentum: mom = mu mom + inc, p -= mom; without: p -= inc (mom is None)."""
    ms = decay * ms + (1.0 - decay) * ops.square(g)
    inc = lr * g / ops.sqrt(ms + eps)
    if mom is None:
        return p - inc, ms, None
    mom = momentum * mom + inc
    return p - mom, ms, mom


def first_order(name: str, acts: Sequence[str]) -> Optimizer:
    """One of FIRST_ORDER for a network with activations `acts`."""
    if name not in FIRST_ORDER:
        raise ValueError(f"{name!r} is not a first-order baseline; use one of {tuple(FIRST_ORDER)}")
    cfg = FIRST_ORDER[name]
    kind = cfg["kind"]
    settings = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "kind") or "plain gradient step"

    def init(params):
        z = tuple(ops.zeros_like(p) for p in params)
        if kind == "sgd":
            return ()
        if kind == "momentum":
            return (z,)
        if kind == "adagrad":
            return (tuple(ops.full_like(p, cfg["init"]) for p in params),)
        if kind == "rmsprop":
            ms = tuple(ops.full_like(p, cfg["ms_init"]) for p in params)
            return (ms, z) if cfg["momentum"] > 0 else (ms,)
        return (z, tuple(ops.zeros_like(p) for p in params))     # adam: m, v

    def step(params, state, x, lr, t):
        loss, grads = lp_model.loss_and_grads(params, acts, x)
        if kind == "sgd":
            return tuple(p - lr * g for p, g in zip(params, grads)), state, loss
        if kind == "momentum":
            mu, (m,) = cfg["mu"], state
            if cfg["form"] == "keras":
                m = tuple(mu * mi - lr * g for mi, g in zip(m, grads))
                new = tuple(p + mi for p, mi in zip(params, m))
            else:
                m = tuple(mu * mi + g for mi, g in zip(m, grads))
                new = tuple(p - lr * mi for p, mi in zip(params, m))
            return new, (m,), loss
        if kind == "adagrad":
            acc = tuple(a + ops.square(g) for a, g in zip(state[0], grads))
            new = tuple(p - lr * g / ops.sqrt(a + cfg["eps"]) for p, g, a in zip(params, grads, acc))
            return new, (acc,), loss
        if kind == "rmsprop":
            moms = state[1] if len(state) > 1 else (None,) * len(params)
            out = [rmsprop_update(p, g, ms, mo, lr, cfg["decay"], cfg["momentum"], cfg["eps"])
                   for p, g, ms, mo in zip(params, grads, state[0], moms)]
            new = tuple(o[0] for o in out)
            ms = tuple(o[1] for o in out)
            return new, ((ms, tuple(o[2] for o in out)) if len(state) > 1 else (ms,)), loss
        b1, b2, eps = cfg["beta1"], cfg["beta2"], cfg["eps"]       # adam (Keras 3 == TF1 form)
        n = ops.cast(t + 1, "float32")
        alpha = lr * ops.sqrt(1.0 - ops.power(b2, n)) / (1.0 - ops.power(b1, n))
        m = tuple(mi + (g - mi) * (1.0 - b1) for mi, g in zip(state[0], grads))
        v = tuple(vi + (ops.square(g) - vi) * (1.0 - b2) for vi, g in zip(state[1], grads))
        new = tuple(p - alpha * mi / (ops.sqrt(vi) + eps) for p, mi, vi in zip(params, m, v))
        return new, (m, v), loss

    return Optimizer(name, init, step, settings)


def make_optimizer(name: str, acts: Sequence[str], **options) -> Optimizer:
    """Any of OPTIMIZERS; keyword options go to Shampoo, K-FAC or LocoProp."""
    if name in FIRST_ORDER:
        if options:
            raise ValueError(f"{name} takes no options (got {sorted(options)})")
        return first_order(name, acts)
    if name == "Shampoo":
        from lp_second_order import shampoo
        return shampoo(acts, **options)
    if name == "K-FAC":
        from lp_second_order import kfac
        return kfac(acts, **options)
    if name in LOCOPROP:
        from lp_locoprop import locoprop
        return locoprop(acts, variant=name[-1], **options)
    raise ValueError(f"optimizer {name!r}; use one of {OPTIMIZERS}")
