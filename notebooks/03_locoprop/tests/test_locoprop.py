import numpy as np
import pytest
from keras import ops

import lp_backend
import lp_model
from lp_locoprop import locoprop

TINY = (12, 6, 3, 6, 12)
ACTS = lp_model.layer_activations(TINY)
rng = np.random.default_rng(1)
X = rng.uniform(0, 1, (10, 12)).astype(np.float32)


def tensors(arrs):
    return tuple(ops.convert_to_tensor(a) for a in arrs)


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
def test_step_equals_sequential_float64_reference(variant, prox):
    init = lp_model.glorot_init(TINY, seed=3)
    opt = locoprop(ACTS, variant=variant, gamma=10.0, local_steps=4, momentum=0.9, prox_eta=prox)
    params64 = [(init[2 * i].astype(np.float64), init[2 * i + 1].astype(np.float64)) for i in range(len(ACTS))]
    ref = reference_step(params64, ACTS, X.astype(np.float64), variant, 10.0, 4, 0.01, 0.9, 0.9, 1e-5, prox)
    params = tensors(init)
    new, state, loss = lp_backend.compile_step(opt.step)(params, opt.init(params), ops.convert_to_tensor(X),
                                                          lp_backend.scalar(0.01), lp_backend.step_index(0))
    for i, (W, b) in enumerate(ref):
        np.testing.assert_allclose(np.asarray(new[2 * i]), W, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(np.asarray(new[2 * i + 1]), b, rtol=2e-4, atol=2e-5)
    assert float(loss) == pytest.approx(float(lp_model.batch_loss(params, ACTS, ops.convert_to_tensor(X))), rel=1e-6)


@pytest.mark.parametrize("variant", ["S", "M"])
def test_first_local_gradient_is_gamma_times_global_gradient(variant):
    """At k = 0 the local problem's gradient is gamma * dL/dW, for both variants: one local step of
    plain gradient descent (no momentum, no RMS scaling) equals a backprop step with lr * gamma."""
    params = tensors(lp_model.glorot_init(TINY, seed=4))
    x = ops.convert_to_tensor(X)
    _, grads = lp_model.loss_and_grads(params, ACTS, x)
    opt = locoprop(ACTS, variant=variant, gamma=7.0, local_steps=1, momentum=0.0, decay=1.0, rms_init=1.0, epsilon=0.0)
    lr = 0.003
    new, _, _ = lp_backend.compile_step(opt.step)(params, opt.init(params), x, lp_backend.scalar(lr),
                                                   lp_backend.step_index(0))
    for p, g, n in zip(params, grads, new):
        np.testing.assert_allclose(np.asarray(n), np.asarray(p) - lr * 7.0 * np.asarray(g), rtol=1e-4, atol=1e-6)


def test_training_reduces_loss_and_state_is_kept():
    params = tensors(lp_model.glorot_init(TINY, seed=0))
    opt = locoprop(ACTS, local_steps=3)
    step = lp_backend.compile_step(opt.step)
    x = ops.convert_to_tensor(X)
    first = float(lp_model.batch_loss(params, ACTS, x))
    state = opt.init(params)
    assert all(np.all(np.asarray(m) == 1) for m in state[0]) and all(np.all(np.asarray(m) == 0) for m in state[1])
    for t in range(15):
        params, state, _ = step(params, state, x, lp_backend.scalar(3e-4), lp_backend.step_index(t))
    assert float(lp_model.batch_loss(params, ACTS, x)) < first - 0.5
    assert not all(np.all(np.asarray(m) == 0) for m in state[1])       # momentum carried across batches
    assert opt.state_bytes(lp_model.glorot_init(TINY, 0)) == 2 * 4 * lp_model.n_params(TINY)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError):
        locoprop(ACTS, variant="Q")
    with pytest.raises(ValueError):
        locoprop(ACTS, local_steps=0)
    with pytest.raises(ValueError):
        locoprop(ACTS, prox_eta=-1.0)
