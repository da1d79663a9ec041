"""Why LocoProp works: compare its combined per-batch update with the K-FAC (natural-gradient) direction.

For a chosen layer and batch, at the current weights:
- g: the plain gradient of the global loss (for W_aug = [W; b]);
- d_kfac = (A kron G + lambda I)^-1 g, with A, G the Kronecker factors of that batch (lp_second_order);
- u: LocoProp-M's actual combined update over its T local steps (W_aug before - W_aug after).
The probe records cos(u, d_kfac) and cos(g, d_kfac) along training. If LocoProp's local steps act as
a preconditioner, the first should be clearly larger than the second.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence

import numpy as np
import tensorflow as tf

from lp_second_order import kfac_precondition, layer_grads, symmetric_eig


def cosine(u, v) -> float:
    u = np.ravel(np.asarray(u, np.float64))
    v = np.ravel(np.asarray(v, np.float64))
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-300))


def aug_weights(model, layer: int) -> np.ndarray:
    return np.concatenate([model.weights[layer].numpy(), model.biases[layer].numpy()[None, :]], axis=0)


def kfac_direction(model, x, layers: Sequence[int], damping: float, fisher: str = "true", rng=None,
                   relative: bool = True):
    """{layer: (gradient, K-FAC direction)} for W_aug of each layer, from this batch's statistics.

    lambda = damping * mean(eig A) * mean(eig G) when `relative` (as the K-FAC baseline), else damping."""
    if fisher == "true" and rng is None:
        rng = tf.random.Generator.from_seed(0)
    _, Y, dl_da, s = layer_grads(model, x, fisher, rng)
    batch = float(x.shape[0])
    out = {}
    for i in layers:
        grad = tf.matmul(Y[i], dl_da[i], transpose_a=True)
        eA, UA = symmetric_eig(tf.matmul(Y[i], Y[i], transpose_a=True) / batch)
        eG, UG = symmetric_eig(tf.matmul(s[i], s[i], transpose_a=True) / batch)
        lam = damping * tf.reduce_mean(eA) * tf.reduce_mean(eG) if relative else tf.constant(damping, tf.float64)
        d = kfac_precondition(tf.cast(grad, tf.float64), UA, eA, UG, eG, lam)
        out[i] = (grad.numpy(), d.numpy())
    return out


@dataclass
class CosineProbe:
    """Wraps an optimizer's step: every `every` steps, measures the cosines before/after the step."""
    opt: object
    layers: Sequence[int]
    damping: float
    every: int = 1
    fisher: str = "true"
    relative: bool = True
    seed: int = 0
    steps: List[int] = field(default_factory=list)
    cos_update: dict = field(default_factory=dict)      # layer -> [cos(update, K-FAC direction)]
    cos_gradient: dict = field(default_factory=dict)    # layer -> [cos(gradient, K-FAC direction)]

    def __post_init__(self):
        self.rng = tf.random.Generator.from_seed(self.seed)

    def __call__(self, step: int, x, lr):
        if step % self.every:
            return self.opt.step(x, lr)
        model = self.opt.model
        before = {i: aug_weights(model, i) for i in self.layers}
        dirs = kfac_direction(model, x, self.layers, self.damping, self.fisher, self.rng, self.relative)
        loss = self.opt.step(x, lr)
        self.steps.append(step)
        for i in self.layers:
            update = before[i] - aug_weights(model, i)      # the descent step actually taken
            grad, d = dirs[i]
            self.cos_update.setdefault(i, []).append(cosine(update, d))
            self.cos_gradient.setdefault(i, []).append(cosine(grad, d))
        return loss

    def summary(self) -> dict:
        """Mean cosines per layer: {layer: (mean cos(update, K-FAC), mean cos(gradient, K-FAC))}."""
        return {i: (float(np.mean(self.cos_update[i])), float(np.mean(self.cos_gradient[i]))) for i in self.layers}
