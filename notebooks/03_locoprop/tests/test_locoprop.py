import numpy as np
import pytest
import tensorflow as tf

from lp_locoprop import LocoProp
from lp_model import Autoencoder

TINY = (12, 6, 3, 6, 12)
rng = np.random.default_rng(1)
X = rng.uniform(0, 1, (10, 12)).astype(np.float32)


def _np_act(name, a):
    return {"tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "identity": lambda z: z,
            "relu": lambda z: np.maximum(z, 0)}[name](a)


def reference_step(params, acts, x, variant, gamma, T, lr, decay, momentum, eps, prox_eta):
    """LocoProp in float64 numpy, one layer after the other (the sequential reference)."""
    B = len(x)
    ys, pre, y = [], [], x
    for (W, b), act in zip(params, acts):
        ys.append(y)
        a = y @ W + b
        pre.append(a)
        y = _np_act(act, a)
    p = 1 / (1 + np.exp(-pre[-1]))
    dl_da = [None] * len(params)
    dl_da[-1] = (p - x) / B                        # d(sum CE / B)/d logits
    for i in range(len(params) - 1, 0, -1):
        dy = dl_da[i] @ params[i][0].T
        act = acts[i - 1]
        deriv = 1 - np.tanh(pre[i - 1]) ** 2 if act == "tanh" else np.ones_like(pre[i - 1])
        dl_da[i - 1] = dy * deriv
    out = []
    for i, ((W, b), act) in enumerate(zip(params, acts)):
        W0, b0 = W.copy(), b.copy()
        t = pre[i] - gamma * dl_da[i] if variant == "S" else _np_act(act, pre[i]) - gamma * dl_da[i]
        msW, msb = np.ones_like(W), np.ones_like(b)
        mW, mb = np.zeros_like(W), np.zeros_like(b)
        for k in range(T):
            lr_k = lr * max(1 - k / T, 0.25)
            a_hat = ys[i] @ W + b
            delta = a_hat - t if variant == "S" else _np_act(act, a_hat) - t
            gW, gb = ys[i].T @ delta, delta.sum(0)
            if prox_eta:
                gW, gb = gW + (W - W0) / prox_eta, gb + (b - b0) / prox_eta
            msW = decay * msW + (1 - decay) * gW ** 2
            msb = decay * msb + (1 - decay) * gb ** 2
            mW = momentum * mW + lr_k * gW / np.sqrt(msW + eps)
            mb = momentum * mb + lr_k * gb / np.sqrt(msb + eps)
            W, b = W - mW, b - mb
        out.append((W, b))
    return out


@pytest.mark.parametrize("variant,prox", [("M", None), ("S", None), ("M", 0.5)])
def test_parallel_step_equals_sequential_reference(variant, prox):
    model = Autoencoder(TINY, seed=3)
    opt = LocoProp(model, variant=variant, gamma=10.0, local_steps=4, momentum=0.9, prox_eta=prox)
    params64 = [(w.astype(np.float64), b.astype(np.float64)) for w, b in model.init_params]
    ref = reference_step(params64, model.acts, X.astype(np.float64), variant, 10.0, 4, 0.01, 0.9, 0.9, 1e-5, prox)
    opt.step(tf.constant(X), tf.constant(0.01))
    for (W, b), vw, vb in zip(ref, model.weights, model.biases):
        np.testing.assert_allclose(vw.numpy(), W, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(vb.numpy(), b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("variant", ["S", "M"])
def test_first_local_gradient_is_gamma_times_global_gradient(variant):
    """At k = 0 the local problem's gradient is gamma * dL/dW, for both variants: one local step of
    plain gradient descent (no momentum, no RMS scaling) equals a backprop step with lr * gamma."""
    model = Autoencoder(TINY, seed=4)
    x = tf.constant(X)
    with tf.GradientTape() as tape:
        loss = model.loss(x)
    grads = [g.numpy() for g in tape.gradient(loss, model.variables)]
    opt = LocoProp(model, variant=variant, gamma=7.0, local_steps=1, momentum=0.0, decay=1.0,
                   rms_init=1.0, epsilon=0.0)
    lr = 0.003
    opt.step(x, tf.constant(lr))
    for v, g, (w0, b0) in zip(model.variables, grads, model.init_params + model.init_params):
        start = w0 if v.shape.rank == 2 else b0
        np.testing.assert_allclose(v.numpy(), start - lr * 7.0 * g, rtol=1e-4, atol=1e-6)


def test_all_layers_run_in_one_compiled_loop():
    """The T local iterations are one While op in one graph (not T x layers Python calls)."""
    model = Autoencoder(TINY, seed=0)
    opt = LocoProp(model, local_steps=5)
    graph = opt.step.get_concrete_function(tf.TensorSpec([None, 12], tf.float32),
                                           tf.TensorSpec([], tf.float32)).graph
    whiles = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    assert len(whiles) == 1
    body = graph._functions[whiles[0].get_attr("body").name].graph  # noqa: SLF001
    matmuls = [op for op in body.get_operations() if op.type in ("MatMul", "BatchMatMulV2")]
    assert len(matmuls) == 2 * model.n_layers    # forward + weight gradient, for every layer, per iteration


def test_training_reduces_loss_and_reset_restores_state():
    model = Autoencoder(TINY, seed=0)
    opt = LocoProp(model, local_steps=3)
    x = tf.constant(X)
    first = float(model.loss(x))
    for _ in range(15):
        opt.step(x, tf.constant(3e-4))
    assert float(model.loss(x)) < first - 0.5
    opt.reset()
    assert all(np.all(v.numpy() == 0) for v in opt.mom)
    assert all(np.all(v.numpy() == 1) for v in opt.ms)
    assert opt.state_bytes() == 2 * 4 * model.n_params
