"""LocoProp (Amid, Anil, Warmuth, AISTATS 2022) in TF2: local targets, local losses, local RMSProp.

One batch, one compiled step:
1. forward pass; global loss L; dL/da for every layer's pre-activation a (one backward pass);
2. targets, computed once:  LocoProp-S: a_t = a - gamma dL/da (squared local loss),
                            LocoProp-M: y_t = f(a) - gamma dL/da (matching loss of f);
3. T local RMSProp steps on every layer's own problem, the layer's input y held fixed:
       grad_W = y^T delta + (W - W_start)/eta,  delta = a_hat - a_t (S)  or  f(a_hat) - y_t (M),
   with inner learning rate lr * max(1 - k/T, 0.25), k = 0..T-1 (the source's schedule).
   The layers' problems are independent, so ONE graph updates all layers in each of the T
   iterations (a tf.while_loop over k whose body holds every layer: TF runs them in parallel);
   the Python loop over layers only builds that graph once, at trace time.

Defaults are the source code's flags: gamma (activation learning rate) 10, T = 10, RMSProp with
decay 0.9, epsilon 1e-5 (inside the square root), momentum 0.999 (1 - one_minus_beta1), TF1 semantics
(mean square initialised to 1), state kept across batches (reset_optimizers = False).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from lp_losses import transfer
from lp_model import Autoencoder, reconstruction_loss

VARIANTS = ("S", "M")


def local_targets(model: Autoencoder, x, variant: str, gamma: float):
    """(loss, inputs, targets) for a batch. Targets are pre-activations (S) or post-activations (M)."""
    with tf.GradientTape() as tape:
        inputs, pre = model.forward(x)
        loss = reconstruction_loss(pre[-1], x)
    dl_da = tape.gradient(loss, pre)
    if variant == "S":
        targets = [a - gamma * g for a, g in zip(pre, dl_da)]
    else:
        targets = [transfer(act, a) - gamma * g for act, a, g in zip(model.acts, pre, dl_da)]
    return loss, [tf.stop_gradient(y) for y in inputs], [tf.stop_gradient(t) for t in targets]


def local_delta(variant: str, act: str, a_hat, target):
    """d(local loss)/d a_hat: a_hat - a_t (S) or f(a_hat) - y_t (M, the matching loss's gradient)."""
    return a_hat - target if variant == "S" else transfer(act, a_hat) - target


class LocoProp:
    """LocoProp-S or LocoProp-M for an `Autoencoder`; `step(x, lr)` is one compiled training step."""

    def __init__(self, model: Autoencoder, variant: str = "M", gamma: float = 10.0, local_steps: int = 10,
                 decay: float = 0.9, momentum: float = 0.999, epsilon: float = 1e-5, rms_init: float = 1.0,
                 min_lr_fraction: float = 0.25, prox_eta: Optional[float] = None, reset_each_batch: bool = False):
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}; use 'S' or 'M'")
        if local_steps < 1:
            raise ValueError("local_steps must be >= 1")
        self.model, self.variant = model, variant
        self.gamma, self.T = float(gamma), int(local_steps)
        self.decay, self.momentum, self.epsilon = float(decay), float(momentum), float(epsilon)
        self.rms_init, self.min_lr_fraction = float(rms_init), float(min_lr_fraction)
        self.prox_eta, self.reset_each_batch = prox_eta, reset_each_batch
        self.name = f"LocoProp-{variant}"
        self.ms = [tf.Variable(tf.fill(v.shape, self.rms_init), trainable=False) for v in model.variables]
        self.mom = [tf.Variable(tf.zeros(v.shape), trainable=False) for v in model.variables]
        self.step = tf.function(self._step)

    @property
    def state(self) -> list:
        return self.ms + self.mom

    def state_bytes(self) -> int:
        return int(sum(np.prod(v.shape) * v.dtype.size for v in self.state))

    def reset(self) -> None:
        for v in self.ms:
            v.assign(tf.fill(v.shape, self.rms_init))
        for v in self.mom:
            v.assign(tf.zeros(v.shape))

    def _rmsprop(self, i, var, grad, lr):
        ms = self.ms[i].assign(self.decay * self.ms[i] + (1.0 - self.decay) * tf.square(grad))
        mom = self.mom[i].assign(self.momentum * self.mom[i] + lr * grad * tf.math.rsqrt(ms + self.epsilon))
        var.assign_sub(mom)

    def _step(self, x, lr):
        model, L = self.model, self.model.n_layers
        if self.reset_each_batch:
            self.reset()
        loss, inputs, targets = local_targets(model, x, self.variant, self.gamma)
        start = [tf.identity(v) for v in model.variables] if self.prox_eta else None
        lr = tf.cast(lr, tf.float32)
        for k in tf.range(self.T):      # tf.while_loop; its body updates all layers, independently
            frac = tf.maximum(1.0 - tf.cast(k, tf.float32) / self.T, self.min_lr_fraction)
            lr_k = lr * frac
            for i in range(L):          # unrolled at trace time: one graph, no Python at run time
                W, b = model.weights[i], model.biases[i]
                a_hat = tf.matmul(inputs[i], W) + b
                delta = local_delta(self.variant, model.acts[i], a_hat, targets[i])
                gW = tf.matmul(inputs[i], delta, transpose_a=True)
                gb = tf.reduce_sum(delta, axis=0)
                if self.prox_eta:
                    gW += (W - start[i]) / self.prox_eta
                    gb += (b - start[L + i]) / self.prox_eta
                self._rmsprop(i, W, gW, lr_k)
                self._rmsprop(L + i, b, gb, lr_k)
        return loss
