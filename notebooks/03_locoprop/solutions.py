"""Solutions of the notebook's exercises (run by tests/test_solutions.py)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
from keras import ops

import lp_backend
import lp_model
import lp_train
from lp_analysis import aug_weights, cosine, kfac_direction
from lp_locoprop import locoprop


def relu_locoprop(images: np.ndarray, widths: Sequence[int], orders: np.ndarray, lr: float, num_epochs: int,
                  seed: int = 0) -> lp_train.Run:
    """Exercise 1: LocoProp-M on a relu autoencoder (the relu matching loss F = max(a, 0)^2 / 2).
    Returns the training Run (source schedule, 1 warm-up epoch); compare it with the tanh network's."""
    acts = lp_model.layer_activations(widths, "relu")
    opt = locoprop(acts, variant="M")
    return lp_train.train_grid(opt, acts, images, [lr], [lp_model.glorot_init(widths, seed)], [orders],
                               num_epochs, warmup=1)[0]


def _one_step(opt, params, x, lr):
    p = tuple(ops.convert_to_tensor(a) for a in params)
    new, _, _ = lp_backend.compile_step(opt.step)(p, opt.init(p), ops.convert_to_tensor(x), lp_backend.scalar(lr),
                                                  lp_backend.step_index(0))
    return [lp_backend.to_numpy(a) for a in new]


def update_norm_vs_prox(widths: Sequence[int], x: np.ndarray, etas: Sequence[Optional[float]], lr: float,
                        local_steps: int = 10, seed: int = 0) -> Dict[Optional[float], float]:
    """Exercise 2: norm of one LocoProp-M batch update from the same start, per proximal eta
    (None = no proximal term). A smaller eta pulls W towards W_t and shrinks the step."""
    acts = lp_model.layer_activations(widths)
    start = lp_model.glorot_init(widths, seed)
    out = {}
    for eta in etas:
        new = _one_step(locoprop(acts, variant="M", local_steps=local_steps, prox_eta=eta), start, x, lr)
        out[eta] = float(np.sqrt(sum(np.sum((n - s) ** 2) for n, s in zip(new, start))))
    return out


def cosine_vs_local_steps(widths: Sequence[int], x: np.ndarray, steps: Sequence[int], layer: int, lr: float,
                          damping: float, seed: int = 0) -> Dict[int, float]:
    """Exercise 3: cos(LocoProp-M update, K-FAC direction) of `layer` after one batch, per number of
    local steps T (fresh optimizer state, momentum off so only this batch's local steps count)."""
    acts = lp_model.layer_activations(widths)
    start = lp_model.glorot_init(widths, seed)
    (_, d), = kfac_direction(start, acts, x, [layer], damping, fisher="true", seed=seed).values()
    out = {}
    for T in steps:
        new = _one_step(locoprop(acts, variant="M", local_steps=T, momentum=0.0), start, x, lr)
        out[T] = cosine(aug_weights(start, layer) - aug_weights(new, layer), d)
    return out
