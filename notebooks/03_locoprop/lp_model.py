"""The deep autoencoder of the benchmark, written out layer by layer with `keras.ops` (any backend).

Layers: 784-1000-500-250-30-250-500-1000-784 (Hinton & Salakhutdinov 2006; the LocoProp paper's
benchmark): tanh hidden units (relu optional), a linear 30-unit code, a sigmoid output whose loss is
the sigmoid cross-entropy summed over the 784 pixels and averaged over the batch. Weights AND biases
get Glorot-uniform initialisation, as in the source code. `W` has shape [in, out]: a = y @ W + b.

Parameters are a flat tuple (W0, b0, W1, b1, ...). The forward pass returns every layer's input y
and pre-activation a; the backward pass is written out too (it is short for an MLP): it returns
dL/da for every layer, which LocoProp needs, and from which dL/dW = y^T dL/da and dL/db = sum dL/da.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
from keras import ops

ARCH = (784, 1000, 500, 250, 30, 250, 500, 1000, 784)
HIDDEN = ("tanh", "relu")


def layer_activations(widths: Sequence[int], hidden: str = "tanh") -> List[str]:
    """Activation of each layer: `hidden`, except 'identity' into the code (middle) and 'sigmoid' last."""
    if len(widths) < 3 or len(widths) % 2 == 0:
        raise ValueError(f"widths={widths}: need an odd number (>= 3) of sizes, symmetric around the code")
    if hidden not in HIDDEN:
        raise ValueError(f"hidden={hidden!r}; use one of {HIDDEN}")
    code = len(widths) // 2 - 1          # the layer whose output is widths[len // 2]
    n = len(widths) - 1
    return ["sigmoid" if i == n - 1 else "identity" if i == code else hidden for i in range(n)]


def glorot_init(widths: Sequence[int], seed: int) -> List[np.ndarray]:
    """[W0, b0, W1, b1, ...], Glorot-uniform (Keras' rule: a bias of size n uses fan_in = fan_out = n)."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        lim_w = np.sqrt(6.0 / (fan_in + fan_out))
        lim_b = np.sqrt(6.0 / (2 * fan_out))
        params += [rng.uniform(-lim_w, lim_w, (fan_in, fan_out)).astype(np.float32),
                   rng.uniform(-lim_b, lim_b, (fan_out,)).astype(np.float32)]
    return params


def n_params(widths: Sequence[int]) -> int:
    return int(sum(i * o + o for i, o in zip(widths[:-1], widths[1:])))


def activate(name: str, a):
    if name == "tanh":
        return ops.tanh(a)
    if name == "sigmoid":
        return ops.sigmoid(a)
    if name == "relu":
        return ops.relu(a)
    if name == "identity":
        return a
    raise ValueError(f"activation {name!r}; use tanh, sigmoid, relu or identity")


def activation_derivative(name: str, a):
    """f'(a), for the backward pass through hidden layers."""
    if name == "tanh":
        return 1.0 - ops.square(ops.tanh(a))
    if name == "relu":
        return ops.cast(a > 0, a.dtype)
    if name == "identity":
        return ops.ones_like(a)
    if name == "sigmoid":
        s = ops.sigmoid(a)
        return s * (1.0 - s)
    raise ValueError(f"activation {name!r}; use tanh, sigmoid, relu or identity")


def reconstruction_loss(logits, x):
    """Sigmoid cross-entropy summed over pixels, averaged over the batch (the benchmark's loss).
    Stable form, as tf.nn.sigmoid_cross_entropy_with_logits: max(z, 0) - z x + log(1 + exp(-|z|))."""
    ce = ops.relu(logits) - logits * x + ops.log1p(ops.exp(-ops.abs(logits)))
    return ops.sum(ce) / ops.cast(ops.shape(x)[0], ce.dtype)


def loss_gradient(logits, x):
    """dL/dlogits of `reconstruction_loss`: (sigmoid(z) - x) / batch."""
    return (ops.sigmoid(logits) - x) / ops.cast(ops.shape(x)[0], logits.dtype)


def forward(params: Sequence, acts: Sequence[str], x) -> Tuple[list, list]:
    """(inputs, pre_activations): inputs[i] feeds layer i; pre_activations[-1] are the logits."""
    inputs, pre = [], []
    y = x
    for i, act in enumerate(acts):
        inputs.append(y)
        a = ops.matmul(y, params[2 * i]) + params[2 * i + 1]
        pre.append(a)
        y = a if act == "sigmoid" else activate(act, a)   # the output sigmoid lives in the loss
    return inputs, pre


def backward(params: Sequence, acts: Sequence[str], pre: Sequence, dlogits) -> list:
    """dL/da for every layer, from dL/dlogits: dL/da_{i-1} = (dL/da_i W_i^T) * f'_{i-1}(a_{i-1})."""
    grads = [None] * len(acts)
    g = dlogits
    for i in range(len(acts) - 1, -1, -1):
        grads[i] = g
        if i > 0:
            g = ops.matmul(g, ops.transpose(params[2 * i])) * activation_derivative(acts[i - 1], pre[i - 1])
    return grads


def loss_and_layer_grads(params: Sequence, acts: Sequence[str], x):
    """(loss, inputs, pre-activations, dL/da per layer) for one batch."""
    inputs, pre = forward(params, acts, x)
    loss = reconstruction_loss(pre[-1], x)
    return loss, inputs, pre, backward(params, acts, pre, loss_gradient(pre[-1], x))


def param_grads(inputs: Sequence, dl_da: Sequence) -> list:
    """[dL/dW0, dL/db0, ...] from the layers' inputs and dL/da."""
    out = []
    for y, g in zip(inputs, dl_da):
        out += [ops.matmul(ops.transpose(y), g), ops.sum(g, axis=0)]
    return out


def loss_and_grads(params: Sequence, acts: Sequence[str], x):
    """(loss, [dL/dW0, dL/db0, ...]): one backprop step's worth."""
    loss, inputs, _, dl_da = loss_and_layer_grads(params, acts, x)
    return loss, param_grads(inputs, dl_da)


def batch_loss(params: Sequence, acts: Sequence[str], x):
    return reconstruction_loss(forward(params, acts, x)[1][-1], x)


def reconstruct(params: Sequence, acts: Sequence[str], x):
    return ops.sigmoid(forward(params, acts, x)[1][-1])
