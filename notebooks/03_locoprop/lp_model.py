"""The deep autoencoder of the benchmark as plain TF2 variables, with the pieces LocoProp needs.

Layers: 784-1000-500-250-30-250-500-1000-784 (Hinton & Salakhutdinov 2006; the LocoProp paper's
benchmark): tanh hidden units (relu optional), a linear 30-unit code, a sigmoid output whose loss is
the sigmoid cross-entropy summed over the 784 pixels and averaged over the batch. Weights AND biases
get Glorot-uniform initialisation, as in the source code. `W` has shape [in, out]: a = y @ W + b.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import tensorflow as tf

ARCH = (784, 1000, 500, 250, 30, 250, 500, 1000, 784)


def layer_activations(widths: Sequence[int], hidden: str = "tanh") -> List[str]:
    """Activation of each layer: `hidden`, except 'identity' into the code (middle) and 'sigmoid' last."""
    if len(widths) < 3 or len(widths) % 2 == 0:
        raise ValueError(f"widths={widths}: need an odd number (>= 3) of sizes, symmetric around the code")
    code = len(widths) // 2 - 1          # the layer whose output is widths[len // 2]
    n = len(widths) - 1
    return ["sigmoid" if i == n - 1 else "identity" if i == code else hidden for i in range(n)]


def glorot_init(widths: Sequence[int], seed: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Glorot-uniform weights and biases (Keras' rule: bias of size n uses fan_in = fan_out = n)."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        lim_w = np.sqrt(6.0 / (fan_in + fan_out))
        lim_b = np.sqrt(6.0 / (2 * fan_out))
        params.append((rng.uniform(-lim_w, lim_w, (fan_in, fan_out)).astype(np.float32),
                       rng.uniform(-lim_b, lim_b, (fan_out,)).astype(np.float32)))
    return params


def activate(name: str, a: tf.Tensor) -> tf.Tensor:
    if name == "tanh":
        return tf.tanh(a)
    if name == "sigmoid":
        return tf.sigmoid(a)
    if name == "relu":
        return tf.nn.relu(a)
    if name == "identity":
        return a
    raise ValueError(f"activation {name!r}; use tanh, sigmoid, relu or identity")


def reconstruction_loss(logits: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """Sigmoid cross-entropy summed over pixels, averaged over the batch (the benchmark's loss)."""
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits)
    return tf.reduce_sum(ce) / tf.cast(tf.shape(x)[0], ce.dtype)


class Autoencoder:
    """Weights as tf.Variables plus a forward pass that exposes every layer's input and pre-activation."""

    def __init__(self, widths: Sequence[int] = ARCH, hidden: str = "tanh", seed: int = 0):
        self.widths = tuple(int(w) for w in widths)
        self.acts = layer_activations(self.widths, hidden)
        self.init_params = glorot_init(self.widths, seed)
        self.weights = [tf.Variable(w, name=f"W{i}") for i, (w, _) in enumerate(self.init_params)]
        self.biases = [tf.Variable(b, name=f"b{i}") for i, (_, b) in enumerate(self.init_params)]

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    @property
    def variables(self) -> list:
        return self.weights + self.biases

    @property
    def n_params(self) -> int:
        return int(sum(int(np.prod(v.shape)) for v in self.variables))

    def reset(self, params=None) -> None:
        """Back to the initial (or the given) parameters: every optimizer starts from the same point."""
        for (w, b), vw, vb in zip(params or self.init_params, self.weights, self.biases):
            vw.assign(w)
            vb.assign(b)

    def get_params(self):
        return [(w.numpy().copy(), b.numpy().copy()) for w, b in zip(self.weights, self.biases)]

    def forward(self, x: tf.Tensor):
        """(inputs, pre_activations): inputs[i] feeds layer i; pre_activations[-1] are the logits."""
        inputs, pre = [], []
        y = x
        for W, b, act in zip(self.weights, self.biases, self.acts):
            inputs.append(y)
            a = tf.matmul(y, W) + b
            pre.append(a)
            y = a if act == "sigmoid" else activate(act, a)   # the output sigmoid lives in the loss
        return inputs, pre

    def loss(self, x: tf.Tensor) -> tf.Tensor:
        return reconstruction_loss(self.forward(x)[1][-1], x)

    def reconstruct(self, x: tf.Tensor) -> tf.Tensor:
        return tf.sigmoid(self.forward(x)[1][-1])


def dataset_loss(model: Autoencoder, images: np.ndarray, chunk: int = 5000) -> float:
    """Mean per-example training loss over a whole array, evaluated in chunks."""
    total = 0.0
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        total += float(_chunk_loss(model, tf.constant(part))) * len(part)
    return total / len(images)


def _chunk_loss(model, x):
    fn = getattr(model, "_loss_fn", None)
    if fn is None:
        fn = model._loss_fn = tf.function(model.loss, reduce_retracing=True)
    return fn(x)
