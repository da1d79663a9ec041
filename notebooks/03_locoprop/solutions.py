"""Solutions of the notebook's exercises (run by tests/test_solutions.py)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from lp_analysis import aug_weights, cosine, kfac_direction
from lp_locoprop import LocoProp
from lp_model import Autoencoder
from lp_train import train_run


def relu_locoprop(images: np.ndarray, widths: Sequence[int], orders: np.ndarray, lr: float, seed: int = 0):
    """Exercise 1: LocoProp-M on a relu autoencoder (the relu matching loss F = max(a, 0)^2 / 2).
    Returns the training Run; compare its curve with the tanh network's."""
    model = Autoencoder(widths, hidden="relu", seed=seed)
    return train_run(model, LocoProp(model, variant="M"), images, orders, lr, warmup=1)


def update_norm_vs_prox(widths: Sequence[int], x: np.ndarray, etas: Sequence[Optional[float]], lr: float,
                        local_steps: int = 10, seed: int = 0) -> Dict[Optional[float], float]:
    """Exercise 2: norm of one LocoProp-M batch update from the same start, per proximal eta
    (None = no proximal term). A smaller eta pulls W towards W_t and shrinks the step."""
    out = {}
    for eta in etas:
        model = Autoencoder(widths, seed=seed)
        start = [v.numpy().copy() for v in model.variables]
        LocoProp(model, variant="M", local_steps=local_steps, prox_eta=eta).step(tf.constant(x), tf.constant(lr))
        out[eta] = float(np.sqrt(sum(np.sum((v.numpy() - s) ** 2) for v, s in zip(model.variables, start))))
    return out


def cosine_vs_local_steps(widths: Sequence[int], x: np.ndarray, steps: Sequence[int], layer: int, lr: float,
                          damping: float, seed: int = 0) -> Dict[int, float]:
    """Exercise 3: cos(LocoProp-M update, K-FAC direction) of `layer` after one batch, per number of
    local steps T (fresh optimizer state, momentum off so only this batch's local steps count)."""
    out = {}
    for T in steps:
        model = Autoencoder(widths, seed=seed)
        (_, d), = kfac_direction(model, tf.constant(x), [layer], damping, fisher="true").values()
        before = aug_weights(model, layer)
        LocoProp(model, variant="M", local_steps=T, momentum=0.0).step(tf.constant(x), tf.constant(lr))
        out[T] = cosine(before - aug_weights(model, layer), d)
    return out
