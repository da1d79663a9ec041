"""LocoProp (Amid, Anil, Warmuth, AISTATS 2022): local targets, local losses, local RMSProp (any backend).

One batch, one compiled step:
1. forward pass; global loss L; dL/da for every layer's pre-activation a (one backward pass);
2. targets, computed once:  LocoProp-S: a_t = a - gamma dL/da (squared local loss),
                            LocoProp-M: y_t = f(a) - gamma dL/da (matching loss of f);
3. T local RMSProp steps on every layer's own problem, the layer's input y held fixed:
       grad_W = y^T delta + (W - W_start)/eta,  delta = a_hat - a_t (S)  or  f(a_hat) - y_t (M),
   with inner learning rate lr * max(1 - k/T, 0.25), k = 0..T-1 (the source's schedule).
   The layers' problems are independent: ONE loop over k (`keras.ops.fori_loop`: a tf.while_loop
   or a lax.fori_loop) whose body updates every layer.

Defaults are the source code's flags (google-research `locoprop/locoprop_training.ipynb`): gamma
(activation_learning_rate) 10, T (num_local_iters) 10, its default inner optimizer RMSProp with decay
1 - one_minus_beta2 = 0.9, momentum 1 - one_minus_beta1 = 0.999, epsilon 1e-5 (inside the square
root), TF1 semantics (mean square initialised to 1), state kept across batches (reset_optimizers = False).
"""
from __future__ import annotations

from typing import Optional, Sequence

from keras import ops

import lp_model
from lp_losses import transfer
from lp_optimizers import Optimizer, rmsprop_update

VARIANTS = ("S", "M")


def local_targets(params, acts, x, variant: str, gamma: float):
    """(loss, inputs, targets) for a batch. Targets are pre-activations (S) or post-activations (M)."""
    loss, inputs, pre, dl_da = lp_model.loss_and_layer_grads(params, acts, x)
    if variant == "S":
        targets = [a - gamma * g for a, g in zip(pre, dl_da)]
    else:
        targets = [transfer(act, a) - gamma * g for act, a, g in zip(acts, pre, dl_da)]
    return loss, inputs, targets


def local_delta(variant: str, act: str, a_hat, target):
    """d(local loss)/d a_hat: a_hat - a_t (S) or f(a_hat) - y_t (M, the matching loss's gradient)."""
    return a_hat - target if variant == "S" else transfer(act, a_hat) - target


def locoprop(acts: Sequence[str], variant: str = "M", gamma: float = 10.0, local_steps: int = 10,
             decay: float = 0.9, momentum: float = 0.999, epsilon: float = 1e-5, rms_init: float = 1.0,
             min_lr_fraction: float = 0.25, prox_eta: Optional[float] = None,
             reset_each_batch: bool = False) -> Optimizer:
    """LocoProp-S or LocoProp-M as an `Optimizer` (pure init/step)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}; use 'S' or 'M'")
    if local_steps < 1:
        raise ValueError("local_steps must be >= 1")
    if prox_eta is not None and prox_eta <= 0:
        raise ValueError("prox_eta must be > 0 (or None for no proximal term)")
    T, L = int(local_steps), len(acts)
    settings = (f"gamma={gamma:g}, T={T}, inner RMSProp(decay={decay}, momentum={momentum}, eps={epsilon:g}, "
                f"ms_init={rms_init:g}), inner lr x max(1-k/T, {min_lr_fraction}), "
                f"prox_eta={prox_eta}, state {'reset each batch' if reset_each_batch else 'kept across batches'}")

    def init(params):
        return (tuple(ops.full_like(p, rms_init) for p in params), tuple(ops.zeros_like(p) for p in params))

    def step(params, state, x, lr, t):
        if reset_each_batch:
            state = init(params)
        loss, inputs, targets = local_targets(params, acts, x, variant, gamma)
        start = params

        def body(k, carry):
            ps, ms, mom = (list(c) for c in carry)
            frac = ops.maximum(1.0 - ops.cast(k, "float32") / T, min_lr_fraction)
            lr_k = lr * frac
            for i in range(L):          # unrolled at trace time: every layer in one loop body
                W, b = ps[2 * i], ps[2 * i + 1]
                a_hat = ops.matmul(inputs[i], W) + b
                delta = local_delta(variant, acts[i], a_hat, targets[i])
                gW = ops.matmul(ops.transpose(inputs[i]), delta)
                gb = ops.sum(delta, axis=0)
                if prox_eta:
                    gW = gW + (W - start[2 * i]) / prox_eta
                    gb = gb + (b - start[2 * i + 1]) / prox_eta
                for j, g in ((2 * i, gW), (2 * i + 1, gb)):
                    ps[j], ms[j], mom[j] = rmsprop_update(ps[j], g, ms[j], mom[j], lr_k, decay, momentum, epsilon)
            return tuple(ps), tuple(ms), tuple(mom)

        params, ms, mom = ops.fori_loop(0, T, body, (tuple(params), state[0], state[1]))
        return params, (ms, mom), loss

    return Optimizer(f"LocoProp-{variant}", init, step, settings)
