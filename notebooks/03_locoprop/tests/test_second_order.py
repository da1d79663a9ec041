import numpy as np
import pytest
import tensorflow as tf
from scipy.linalg import fractional_matrix_power

from lp_model import Autoencoder
from lp_second_order import KFAC, Shampoo, kfac_precondition, matrix_inverse_root, symmetric_eig

TINY = (7, 5, 3, 5, 7)
rng = np.random.default_rng(2)
X = rng.uniform(0, 1, (9, 7)).astype(np.float32)


def aug_grads(model, x):
    with tf.GradientTape() as tape:
        loss = model.loss(tf.constant(x))
    gs = tape.gradient(loss, model.variables)
    L = model.n_layers
    return [np.concatenate([gs[i].numpy(), gs[L + i].numpy()[None]], 0).astype(np.float64) for i in range(L)]


def aug(model, i):
    return np.concatenate([model.weights[i].numpy(), model.biases[i].numpy()[None]], 0).astype(np.float64)


def test_matrix_inverse_root_matches_scipy():
    M = rng.normal(size=(6, 4))
    M = M @ M.T                                   # PSD, rank 4
    got = matrix_inverse_root(tf.constant(M), 4, 1e-3, relative=False).numpy()
    want = np.real(fractional_matrix_power(M + 1e-3 * np.eye(6), -0.25))
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_shampoo_step_is_L_quarter_G_R_quarter():
    model = Autoencoder(TINY, seed=5)
    grads = aug_grads(model, X)
    before = [aug(model, i) for i in range(model.n_layers)]
    eps = 1e-3
    opt = Shampoo(model, beta2=0.9, epsilon=eps, refresh_every=3, momentum=0.0, graft="none")
    lr = 0.05
    opt.step(tf.constant(X), tf.constant(lr))
    for i, G in enumerate(grads):
        L, R = G @ G.T, G.T @ G
        Lr = np.real(fractional_matrix_power(L + eps * np.linalg.eigvalsh(L).max() * np.eye(len(L)), -0.25))
        Rr = np.real(fractional_matrix_power(R + eps * np.linalg.eigvalsh(R).max() * np.eye(len(R)), -0.25))
        want = before[i] - lr * Lr @ G @ Rr
        np.testing.assert_allclose(aug(model, i), want, rtol=2e-3, atol=2e-5)


def test_shampoo_grafting_takes_rmsprop_step_norm():
    model = Autoencoder(TINY, seed=5)
    grads = aug_grads(model, X)
    before = [aug(model, i) for i in range(model.n_layers)]
    opt = Shampoo(model, momentum=0.0, graft="rmsprop", graft_decay=0.9, graft_eps=1e-8)
    opt.step(tf.constant(X), tf.constant(0.01))
    for i, G in enumerate(grads):
        rms_dir = G / (np.sqrt(0.1 * G ** 2) + 1e-8)
        np.testing.assert_allclose(np.linalg.norm(before[i] - aug(model, i)), 0.01 * np.linalg.norm(rms_dir), rtol=1e-3)


def test_kfac_precondition_is_exact_kronecker_solve():
    A = rng.normal(size=(4, 4)); A = A @ A.T
    G = rng.normal(size=(3, 3)); G = G @ G.T
    grad = rng.normal(size=(4, 3))
    eA, UA = symmetric_eig(tf.constant(A))
    eG, UG = symmetric_eig(tf.constant(G))
    got = kfac_precondition(tf.constant(grad), UA, eA, UG, eG, 0.1).numpy()
    want = np.linalg.solve(np.kron(A, G) + 0.1 * np.eye(12), grad.reshape(-1)).reshape(4, 3)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_kfac_step_equals_exact_damped_kronecker_inverse(mode):
    model = Autoencoder(TINY, seed=6)
    x = tf.constant(X)
    B = len(X)
    grads = aug_grads(model, X)
    # the Kronecker factors from the definition: inputs [y, 1] and per-example dL/da (empirical Fisher)
    with tf.GradientTape() as tape:
        inputs, pre = model.forward(x)
        loss = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=pre[-1])) / B
    dl_da = tape.gradient(loss, pre)
    before = [aug(model, i) for i in range(model.n_layers)]
    lam, lr = 0.05, 0.1
    opt = KFAC(model, damping=lam, refresh_every=2, momentum=0.0, fisher="empirical", damping_mode=mode, kl_clip=None)
    opt.step(x, tf.constant(lr))
    for i, grad in enumerate(grads):
        Y = np.concatenate([inputs[i].numpy(), np.ones((B, 1))], 1).astype(np.float64)
        S = dl_da[i].numpy().astype(np.float64) * B
        A, G = Y.T @ Y / B, S.T @ S / B
        lam_i = lam if mode == "absolute" else lam * np.trace(A) / len(A) * np.trace(G) / len(G)
        exact = np.linalg.solve(np.kron(A, G) + lam_i * np.eye(len(A) * len(G)),
                                grad.reshape(-1)).reshape(grad.shape)
        np.testing.assert_allclose(aug(model, i), before[i] - lr * exact, rtol=2e-3, atol=1e-5)


def test_inverses_refresh_every_k_steps_only():
    model = Autoencoder(TINY, seed=7)
    opt = KFAC(model, refresh_every=3, fisher="true")
    x = tf.constant(X)
    snaps = []
    for _ in range(4):
        opt.step(x, tf.constant(1e-3))
        snaps.append(opt.eG[0].numpy().copy())   # G changes with the weights
    assert np.array_equal(snaps[0], snaps[1]) and np.array_equal(snaps[1], snaps[2])
    assert not np.array_equal(snaps[2], snaps[3])      # step index 3 is a refresh step
    sh = Shampoo(model, refresh_every=2)
    s = []
    for _ in range(3):
        sh.step(x, tf.constant(1e-3))
        s.append(sh.PL[1].numpy().copy())
    assert np.array_equal(s[0], s[1]) and not np.array_equal(s[1], s[2])


@pytest.mark.parametrize("cls", [Shampoo, KFAC])
def test_reset_restores_initial_state(cls):
    model = Autoencoder(TINY, seed=8)
    opt = cls(model)
    opt.step(tf.constant(X), tf.constant(1e-3))
    opt.reset()
    assert int(opt.count.numpy()) == 0
    assert all(np.all(m.numpy() == 0) for m in opt.mom)
    assert opt.state_bytes() > 4 * model.n_params


def test_kfac_kl_clip_bounds_the_step():
    grads = aug_grads(Autoencoder(TINY, seed=6), X)
    lr, clip, moved = 10.0, 1e-4, {}
    for kl in (None, clip):
        model = Autoencoder(TINY, seed=6)
        before = [aug(model, i) for i in range(model.n_layers)]
        KFAC(model, momentum=0.0, fisher="empirical", kl_clip=kl).step(tf.constant(X), tf.constant(lr))
        moved[kl] = [(before[i] - aug(model, i)) / lr for i in range(model.n_layers)]
    vfv = lr ** 2 * sum(np.sum(d * g) for d, g in zip(moved[None], grads))
    nu = np.linalg.norm(moved[clip][0]) / np.linalg.norm(moved[None][0])
    assert vfv > clip and nu == pytest.approx(np.sqrt(clip / vfv), rel=1e-3)
    for a, b in zip(moved[clip], moved[None]):
        np.testing.assert_allclose(a, nu * b, rtol=1e-3, atol=1e-9)
