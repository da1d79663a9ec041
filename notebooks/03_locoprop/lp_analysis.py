"""Why LocoProp works: compare its combined per-batch update with the K-FAC (natural-gradient) direction.

For a chosen layer and batch, at the current weights:
- g: the plain gradient of the global loss (for W_aug = [W; b]);
- d_kfac = (A kron G + lambda I)^-1 g, with A, G the Kronecker factors of that batch (true Fisher,
  pixels sampled from the model) and EXACT damping lambda = damping * mean eig A * mean eig G, in float64;
- u: LocoProp-M's actual combined update over its T local steps (W_aug before - W_aug after).
The probe records cos(u, d_kfac) and cos(g, d_kfac). If LocoProp's local steps act as a
preconditioner, the first should be clearly larger than the second. The probe looks at the first
batch of every `every`-th epoch; it computes that batch's step on a copy, so the training run itself
is exactly the unprobed one.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
from keras import ops

import lp_backend
import lp_model
import lp_train


def cosine(u, v) -> float:
    u = np.ravel(np.asarray(u, np.float64))
    v = np.ravel(np.asarray(v, np.float64))
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-300))


def aug_weights(params: Sequence, layer: int) -> np.ndarray:
    return np.concatenate([np.asarray(params[2 * layer]), np.asarray(params[2 * layer + 1])[None, :]], axis=0)


def kfac_precondition(grad, eA, UA, eG, UG, damping):
    """(A kron G + damping I)^-1 vec(grad) in matrix form, from A's and G's eigendecompositions."""
    rot = UA.T @ grad @ UG
    return UA @ (rot / (eA[:, None] * eG[None, :] + damping)) @ UG.T


def kfac_direction(params: Sequence[np.ndarray], acts: Sequence[str], x: np.ndarray, layers: Sequence[int],
                   damping: float, fisher: str = "true", seed: int = 0, relative: bool = True) -> Dict[int, tuple]:
    """{layer: (gradient, K-FAC direction)} for W_aug of each layer, from this batch's statistics (float64)."""
    if fisher not in ("true", "empirical"):
        raise ValueError(f"fisher={fisher!r}; use 'true' or 'empirical'")
    p = [ops.convert_to_tensor(a) for a in params]
    xt = ops.convert_to_tensor(x)
    _, inputs, pre, dl_da = lp_model.loss_and_layer_grads(p, acts, xt)
    if fisher == "true":
        logits = lp_backend.to_numpy(pre[-1]).astype(np.float64)
        rng = np.random.default_rng(seed)
        sample = (rng.uniform(size=logits.shape) < 1 / (1 + np.exp(-logits))).astype(np.float32)
        s = lp_model.backward(p, acts, pre, lp_model.loss_gradient(pre[-1], ops.convert_to_tensor(sample)))
    else:
        s = dl_da
    B = len(x)
    out = {}
    for i in layers:
        Y = np.concatenate([lp_backend.to_numpy(inputs[i]), np.ones((B, 1), np.float32)], 1).astype(np.float64)
        S = lp_backend.to_numpy(s[i]).astype(np.float64) * B
        g = Y.T @ lp_backend.to_numpy(dl_da[i]).astype(np.float64)
        eA, UA = np.linalg.eigh(Y.T @ Y / B)
        eG, UG = np.linalg.eigh(S.T @ S / B)
        eA, eG = np.maximum(eA, 0.0), np.maximum(eG, 0.0)
        lam = damping * eA.mean() * eG.mean() if relative else damping
        out[i] = (g, kfac_precondition(g, eA, UA, eG, UG, lam))
    return out


def probe_run(opt, acts, images, lr: float, init, orders, num_epochs: int, warmup: int, layer: int, every: int,
              damping: float = 1e-2, seed: int = 0, runner=None) -> dict:
    """Train one run of `opt` and probe it at the first batch of every `every`-th epoch (from epoch 1:
    epoch 0 has learning rate 0 in the source's schedule)."""
    runner = runner or lp_train.make_runner(opt, acts, images)
    one_step = lp_backend.compile_step(opt.step)
    params, state = runner.start([init])
    steps = orders.shape[1]
    out = {"epochs": [], "cos_update": [], "cos_gradient": [], "layer": layer, "damping": damping}
    for epoch in range(lp_train.trained_epochs(num_epochs)):
        lr_e = lr * lp_train.lr_factor(epoch, num_epochs, warmup)
        if epoch >= 1 and (epoch - 1) % every == 0:
            x = images[orders[epoch, 0]]
            before = runner.member_params(params, 0)
            (g, d), = kfac_direction(before, acts, x, [layer], damping, seed=seed + epoch).values()
            p1, s1 = lp_backend.member(params, 0), lp_backend.member(state, 0)
            after, _, _ = one_step(p1, s1, ops.convert_to_tensor(x), lp_backend.scalar(lr_e), lp_backend.step_index(epoch * steps))
            u = aug_weights(before, layer) - aug_weights([lp_backend.to_numpy(a) for a in after], layer)
            out["epochs"].append(epoch)
            out["cos_update"].append(cosine(u, d))
            out["cos_gradient"].append(cosine(g, d))
        params, state, _ = runner.epoch(params, state, [lr_e], orders[epoch][None], epoch * steps)
    out["final_loss"] = float(runner.evaluate(params)[0])
    return out
