import numpy as np
import pytest
from keras import ops
from scipy.linalg import fractional_matrix_power

import lp_backend
import lp_model
from lp_second_order import factored_damping, inverse_roots, kfac, matrix_inverse_root, shampoo, size_buckets

TINY = (7, 5, 3, 5, 7)
ACTS = lp_model.layer_activations(TINY)
rng = np.random.default_rng(2)
X = rng.uniform(0, 1, (9, 7)).astype(np.float32)
METHODS = ["eigh", "newton"]


def tensors(arrs):
    return tuple(ops.convert_to_tensor(np.asarray(a, np.float32)) for a in arrs)


def aug_grads(params, x):
    _, g = lp_model.loss_and_grads(params, ACTS, ops.convert_to_tensor(x))
    return [np.concatenate([np.asarray(g[2 * i]), np.asarray(g[2 * i + 1])[None]], 0).astype(np.float64)
            for i in range(len(ACTS))]


def aug(params, i):
    return np.concatenate([np.asarray(params[2 * i]), np.asarray(params[2 * i + 1])[None]], 0).astype(np.float64)


_COMPILED = {}


def step(opt, params, state, x, lr, t):
    """One compiled step (each optimizer object compiles once)."""
    if id(opt) not in _COMPILED:
        _COMPILED[id(opt)] = (opt, lp_backend.compile_step(opt.step))
    return _COMPILED[id(opt)][1](params, state, ops.convert_to_tensor(x), lp_backend.scalar(lr), lp_backend.step_index(t))


@pytest.mark.parametrize("method", METHODS)
def test_inverse_roots_match_scipy(method):
    """Matrices of several sizes (padded into one stack by 'newton'), low rank, relative and absolute ridge."""
    mats = []
    for n, r in [(9, 3), (8, 8), (3, 1)]:
        a = rng.normal(size=(n, r))
        mats.append(a @ a.T)
    for p, eps, rel in [(4, 1e-3, True), (1, [0.3, 0.2, 0.1], False)]:
        got = lp_backend.compile_step(lambda *m: inverse_roots(m, p, eps, relative=rel, method=method))(*tensors(mats))
        for i, (M, G) in enumerate(zip(mats, got)):
            e = eps[i] if isinstance(eps, list) else eps
            ridge = e * np.linalg.eigvalsh(M).max() if rel else e
            want = np.real(fractional_matrix_power(M + ridge * np.eye(len(M)), -1.0 / p))
            np.testing.assert_allclose(np.asarray(G), want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
    with pytest.raises(ValueError):
        matrix_inverse_root(tensors(mats)[0], 3, 1e-3)
    with pytest.raises(ValueError):
        matrix_inverse_root(tensors(mats)[0], 4, 1e-3, method="svd")


def test_size_buckets_group_similar_sizes():
    groups = size_buckets([785, 1001, 501, 31, 1000, 500, 30, 784])
    assert sorted(sorted(g) for g in groups) == [[0, 1, 4, 7], [2, 5], [3, 6]]


def test_shampoo_step_is_L_quarter_G_R_quarter(method="auto"):
    params = tensors(lp_model.glorot_init(TINY, seed=5))
    grads = aug_grads(params, X)
    eps, lr = 1e-3, 0.05
    opt = shampoo(ACTS, beta2=0.9, epsilon=eps, refresh_every=3, momentum=0.0, graft="none", root_method=method)
    new, _, _ = step(opt, params, opt.init(params), X, lr, 0)
    for i, G in enumerate(grads):
        L, R = G @ G.T, G.T @ G
        Lr = np.real(fractional_matrix_power(L + eps * np.linalg.eigvalsh(L).max() * np.eye(len(L)), -0.25))
        Rr = np.real(fractional_matrix_power(R + eps * np.linalg.eigvalsh(R).max() * np.eye(len(R)), -0.25))
        np.testing.assert_allclose(aug(new, i), aug(params, i) - lr * Lr @ G @ Rr, rtol=2e-3, atol=2e-5)


def test_shampoo_grafting_takes_rmsprop_step_norm():
    params = tensors(lp_model.glorot_init(TINY, seed=5))
    grads = aug_grads(params, X)
    opt = shampoo(ACTS, momentum=0.0, graft="rmsprop", graft_decay=0.9, graft_eps=1e-8)
    new, _, _ = step(opt, params, opt.init(params), X, 0.01, 0)
    for i, G in enumerate(grads):
        rms_dir = G / (np.sqrt(0.1 * G ** 2) + 1e-8)
        np.testing.assert_allclose(np.linalg.norm(aug(params, i) - aug(new, i)), 0.01 * np.linalg.norm(rms_dir), rtol=1e-3)


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_kfac_step_equals_factored_damped_inverse(mode, method="auto"):
    params = tensors(lp_model.glorot_init(TINY, seed=6))
    B = len(X)
    grads = aug_grads(params, X)
    # the Kronecker factors from the definition: inputs [y, 1] and per-example dL/da (empirical Fisher)
    _, inputs, _, dl_da = lp_model.loss_and_layer_grads(params, ACTS, ops.convert_to_tensor(X))
    lam, lr = 0.05, 0.1
    opt = kfac(ACTS, damping=lam, refresh_every=2, momentum=0.0, fisher="empirical", damping_mode=mode, kl_clip=None,
               root_method=method)
    new, _, _ = step(opt, params, opt.init(params), X, lr, 0)
    for i, grad in enumerate(grads):
        Y = np.concatenate([np.asarray(inputs[i]), np.ones((B, 1))], 1).astype(np.float64)
        S = np.asarray(dl_da[i]).astype(np.float64) * B
        A, G = Y.T @ Y / B, S.T @ S / B
        ma, mg = np.trace(A) / len(A), np.trace(G) / len(G)
        lam_i = lam if mode == "absolute" else lam * ma * mg
        pi = np.sqrt(ma / mg)
        want = np.linalg.solve(A + pi * np.sqrt(lam_i) * np.eye(len(A)), grad) @ \
            np.linalg.inv(G + np.sqrt(lam_i) / pi * np.eye(len(G)))
        np.testing.assert_allclose(aug(new, i), aug(params, i) - lr * want, rtol=3e-3, atol=1e-5)
    dA, dG = factored_damping(ops.convert_to_tensor(np.eye(3, dtype=np.float32) * 4), ops.eye(2), 0.01, "relative")
    assert float(dA) == pytest.approx(0.4) and float(dG) == pytest.approx(0.1)    # sqrt(d) x mean eigenvalue


def test_inverses_refresh_every_k_steps_only():
    params = tensors(lp_model.glorot_init(TINY, seed=7))
    for opt, slot in [(kfac(ACTS, refresh_every=3), 3), (shampoo(ACTS, refresh_every=3), 2)]:
        state, snaps = opt.init(params), []
        p = params
        for t in range(4):
            p, state, _ = step(opt, p, state, X, 1e-3, t)
            snaps.append(np.asarray(state[slot][0]).copy())
        assert np.array_equal(snaps[0], snaps[1]) and np.array_equal(snaps[1], snaps[2])
        assert not np.array_equal(snaps[2], snaps[3])      # step index 3 is a refresh step


def test_state_memory_and_bad_options():
    init = lp_model.glorot_init(TINY, 8)
    for opt in (shampoo(ACTS), kfac(ACTS)):
        assert opt.state_bytes(init) > 4 * lp_model.n_params(TINY)
    for bad in (dict(graft="adam"), dict(refresh_every=0)):
        with pytest.raises(ValueError):
            shampoo(ACTS, **bad)
    for bad in (dict(damping_mode="adaptive"), dict(fisher="hessian"), dict(root_method="qr")):
        with pytest.raises(ValueError):
            kfac(ACTS, **bad)


def test_kfac_kl_clip_bounds_the_step():
    params = tensors(lp_model.glorot_init(TINY, seed=6))
    grads = aug_grads(params, X)
    lr, clip, moved = 10.0, 1e-4, {}
    for kl in (None, clip):
        opt = kfac(ACTS, momentum=0.0, fisher="empirical", kl_clip=kl)
        new, _, _ = step(opt, params, opt.init(params), X, lr, 0)
        moved[kl] = [(aug(params, i) - aug(new, i)) / lr for i in range(len(ACTS))]
    vfv = lr ** 2 * sum(np.sum(d * g) for d, g in zip(moved[None], grads))
    nu = np.linalg.norm(moved[clip][0]) / np.linalg.norm(moved[None][0])
    assert vfv > clip and nu == pytest.approx(np.sqrt(clip / vfv), rel=1e-3)
    for a, b in zip(moved[clip], moved[None]):
        np.testing.assert_allclose(a, nu * b, rtol=1e-3, atol=1e-9)
