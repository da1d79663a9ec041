"""Shampoo and K-FAC for the dense layers of the autoencoder (pure functions, any Keras backend).

Each dense layer's weight and bias are treated as one matrix W_aug = [W; b] of shape [in + 1, out]
acting on the augmented input [y, 1], so its gradient is  Gr = Y_aug^T dL/da  (Y_aug: [B, in + 1]).

Shampoo (Gupta, Koren, Singer 2018; Anil et al. 2020's practical form):
    L <- beta2 L + (1 - beta2) Gr Gr^T,   R <- beta2 R + (1 - beta2) Gr^T Gr   (first step: L = Gr Gr^T)
    every k steps:  P_L = (L + eps lmax(L) I)^(-1/4),  P_R = (R + eps lmax(R) I)^(-1/4)
    direction D = P_L Gr P_R, grafted to RMSProp's per-layer step norm; heavy-ball momentum.
K-FAC (Martens & Grosse 2015):
    A = E[y_aug y_aug^T],  G = E[s s^T],  s = per-example dL/da with the output pixels sampled from the
    model ('true' Fisher) or the data's own pixels ('empirical'); exponential moving averages;
    every k steps, factored Tikhonov damping (their section 6.3):
        P_A = (A + pi sqrt(lambda) I)^-1,  P_G = (G + sqrt(lambda)/pi I)^-1,  pi = sqrt(mean eig A / mean eig G),
        lambda = damping * mean eig A * mean eig G ('relative', the default: the factors' scales differ by
        orders of magnitude between layers) or lambda = damping ('absolute');
    direction D = P_A Gr P_G; optional KL clipping (Ba et al. 2017): all directions scaled by
    min(1, sqrt(kl_clip / (lr^2 sum <D, Gr>))). No adaptive (Levenberg-Marquardt) damping and no
    quadratic-model step rescaling: a simpler K-FAC than the tuned one of the paper.

Inverse roots, all in float32, by one of two methods computing the same matrix:
- 'eigh': a symmetric eigendecomposition (fast on a CPU);
- 'newton': the coupled Newton iteration of google-research `scalable_shampoo/optax/distributed_shampoo.py`
  (`matrix_inverse_pth_root`, Higham 2008 eq. 7.18: matmuls only, fast on a GPU), with its power
  iteration for lmax, its stopping rule (error <= 1e-6, or the error grows by more than 1.2x) and
  full-precision matmuls.
'auto' picks 'newton' under JAX and 'eigh' under TensorFlow.
"""
from __future__ import annotations

from typing import Sequence

from keras import ops

import lp_backend
import lp_model
from lp_optimizers import Optimizer

ROOT_METHODS = ("eigh", "newton", "auto")


def augment(y):
    """[y, 1]: the bias becomes the last row of W_aug."""
    return ops.concatenate([y, ops.ones((ops.shape(y)[0], 1), y.dtype)], axis=1)


def aug_grads(inputs, dl_da):
    """Gr = [y, 1]^T dL/da for every layer."""
    return [ops.matmul(ops.transpose(augment(y)), g) for y, g in zip(inputs, dl_da)]


def _resolve(method: str) -> str:
    if method not in ROOT_METHODS:
        raise ValueError(f"root method {method!r}; use one of {ROOT_METHODS}")
    if method == "auto":
        return "newton" if lp_backend.NAME == "jax" else "eigh"
    return method


def power_iteration(M, num_iters: int = 100, tol: float = 1e-6):
    """Largest eigenvalue of each symmetric PSD matrix in a stack [k, n, n] (distributed_shampoo's
    power_iteration, batched: it stops when every matrix's estimate has settled)."""
    k, n = ops.shape(M)[0], ops.shape(M)[-1]
    v0 = ops.ones((k, n, 1), "float32") / float(n) ** 0.5

    def cond(i, v, s, run):
        return ops.logical_and(i < num_iters, ops.any(run))

    def body(i, v, s, run):
        v = v / ops.sqrt(ops.sum(ops.square(v), axis=(1, 2), keepdims=True))
        mv = lp_backend.matmul_hi(M, v)
        s_new = ops.sum(v * mv, axis=(1, 2))
        return i + 1, mv, s_new, ops.abs(s_new - s) > tol
    _, _, s, _ = ops.while_loop(cond, body, (ops.convert_to_tensor(0), v0, ops.zeros((k,), "float32"),
                                             ops.ones((k,), "bool")))
    return s


def _newton(D, p: int, num_iters: int = 100, tol: float = 1e-6):
    """D^(-1/p) for a stack [k, N, N] of symmetric positive definite matrices: the coupled Newton
    iteration of distributed_shampoo's matrix_inverse_pth_root, each matrix with its own stopping rule
    (error <= tol, or the error grew by more than 1.2x: then the previous iterate is returned)."""
    N = ops.shape(D)[-1]
    eye = ops.eye(N, dtype="float32")[None]
    alpha = -1.0 / p
    z = (1.0 + p) / (2.0 * ops.sqrt(ops.sum(ops.square(D), axis=(1, 2), keepdims=True)))
    m0 = D * z
    h0 = eye * ops.power(z, 1.0 / p)
    err0 = ops.max(ops.abs(m0 - eye), axis=(1, 2))

    def mat_power(a):
        for _ in range({1: 0, 2: 1, 4: 2, 8: 3}[p]):
            a = lp_backend.matmul_hi(a, a)
        return a

    def cond(i, m, h, h_old, err, run):
        return ops.logical_and(i < num_iters, ops.any(ops.logical_and(err > tol, run)))

    def body(i, m, h, h_old, err, run):
        mi = (1.0 - alpha) * eye + alpha * m
        m_new = lp_backend.matmul_hi(mat_power(mi), m)
        h_new = lp_backend.matmul_hi(h, mi)
        err_new = ops.max(ops.abs(m_new - eye), axis=(1, 2))
        act = ops.logical_and(err > tol, run)          # matrices still iterating
        a3 = act[:, None, None]
        return (i + 1, ops.where(a3, m_new, m), ops.where(a3, h_new, h), ops.where(a3, h, h_old),
                ops.where(act, err_new, err), ops.where(act, err_new < err * 1.2, run))

    _, _, h, h_old, _, ok = ops.while_loop(cond, body, (ops.convert_to_tensor(0), m0, h0, h0, err0,
                                                        ops.ones(ops.shape(err0), "bool")))
    return ops.where(ok[:, None, None], h, h_old)


def _inverse_root_eigh(M, p: int, ridge):
    e, V = ops.eigh(0.5 * (M + ops.transpose(M)))
    e = ops.maximum(e, 0.0)
    return ops.matmul(V * ops.power(e + ridge, -1.0 / p)[None, :], ops.transpose(V))


def size_buckets(sizes: Sequence[int], ratio: float = 1.3):
    """Indices grouped so that each group's largest size is at most `ratio` x its smallest."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    groups, cur = [], []
    for i in order:
        if cur and sizes[cur[0]] > ratio * sizes[i]:
            groups.append(cur)
            cur = []
        cur.append(i)
    return groups + [cur] if cur else groups


def _pad(M, N: int, fill):
    """[[M, 0], [0, fill I]] of size N: block diagonal, so its inverse root holds M's in the corner."""
    n = ops.shape(M)[-1]
    if n == N:
        return M
    top = ops.concatenate([M, ops.zeros((n, N - n))], axis=1)
    bottom = ops.concatenate([ops.zeros((N - n, n)), fill * ops.eye(N - n)], axis=1)
    return ops.concatenate([top, bottom], axis=0)


def inverse_roots(mats: Sequence, p: int, eps, relative: bool = True, method: str = "auto") -> list:
    """[(M_i + eps_i' I)^(-1/p)] for symmetric PSD M_i; eps_i' = eps_i * max(lmax(M_i), 1e-6) if relative.

    `eps` is one number or one per matrix. 'newton' pads matrices of similar size into stacks and
    iterates each stack at once (few, large matmuls); 'eigh' decomposes them one by one."""
    if p not in (1, 2, 4, 8):
        raise ValueError(f"p={p}; use 1, 2, 4 or 8")
    method = _resolve(method)
    eps = list(eps) if isinstance(eps, (list, tuple)) else [eps] * len(mats)
    if method == "eigh":
        out = []
        for M, e in zip(mats, eps):
            lam = ops.max(ops.eigh(0.5 * (M + ops.transpose(M)))[0])
            out.append(_inverse_root_eigh(M, p, e * ops.maximum(lam, 1e-6) if relative else e))
        return out
    sizes = [int(ops.shape(M)[-1]) for M in mats]
    out = [None] * len(mats)
    for group in size_buckets(sizes):
        N = max(sizes[i] for i in group)
        if relative:
            lam = power_iteration(ops.stack([_pad(mats[i], N, 0.0) for i in group]))
            ridges = [eps[i] * ops.maximum(lam[j], 1e-6) for j, i in enumerate(group)]
        else:
            ridges = [eps[i] for i in group]
        D = ops.stack([_pad(mats[i] + r * ops.eye(sizes[i]), N, r) for i, r in zip(group, ridges)])
        H = _newton(D, p)
        for j, i in enumerate(group):
            out[i] = H[j, :sizes[i], :sizes[i]]
    return out


def matrix_inverse_root(M, p: int, eps: float, relative: bool = True, method: str = "auto"):
    """(M + eps' I)^(-1/p) for one symmetric PSD matrix; eps' = eps * max(lmax(M), 1e-6) if relative else eps."""
    return inverse_roots([M], p, eps, relative, method)[0]


def _choice(what: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{what}={value!r}; use one of {options}")


def _checked(refresh_every: int, root_method: str) -> str:
    if refresh_every < 1:
        raise ValueError("refresh_every must be >= 1")
    return _resolve(root_method)


def _is_refresh(t, k: int):
    return ops.equal(ops.mod(t, k), 0)


def _apply(params, dirs, mom, lr, momentum):
    """Heavy-ball momentum on W_aug directions; returns (params, mom)."""
    new_params, new_mom = [], []
    for i, d in enumerate(dirs):
        m = momentum * mom[i] + d
        new_mom.append(m)
        new_params += [params[2 * i] - lr * m[:-1], params[2 * i + 1] - lr * m[-1]]
    return tuple(new_params), tuple(new_mom)


def _aug_shapes(params):
    return [(ops.shape(params[2 * i])[0] + 1, ops.shape(params[2 * i])[1]) for i in range(len(params) // 2)]


def shampoo(acts: Sequence[str], beta2: float = 0.95, epsilon: float = 1e-4, refresh_every: int = 20,
            momentum: float = 0.9, graft: str = "rmsprop", graft_decay: float = 0.9, graft_eps: float = 1e-8,
            root_method: str = "auto") -> Optimizer:
    """Shampoo for dense layers: full-matrix left/right statistics, inverse 4th roots every k steps."""
    _choice("graft", graft, ("rmsprop", "none"))
    method = _checked(refresh_every, root_method)
    settings = (f"beta2={beta2}, eps={epsilon:g} x lmax, inverse 4th roots every {refresh_every} steps "
                f"({method}), graft={graft}, momentum={momentum}")

    def init(params):
        shapes = _aug_shapes(params)
        zeros = lambda n: tuple(ops.zeros((a, a) if n == 0 else (b, b)) for a, b in shapes)   # noqa: E731
        eyes = lambda n: tuple(ops.eye(a if n == 0 else b) for a, b in shapes)               # noqa: E731
        state = [zeros(0), zeros(1), eyes(0), eyes(1), tuple(ops.zeros(s) for s in shapes)]
        if graft == "rmsprop":
            state.append(tuple(ops.zeros(s) for s in shapes))
        return tuple(state)

    def refresh(Ls, Rs):
        roots = inverse_roots(list(Ls) + list(Rs), 4, epsilon, method=method)
        return tuple(roots[:len(Ls)]), tuple(roots[len(Ls):])

    def step(params, state, x, lr, t):
        loss, inputs, _, dl_da = lp_model.loss_and_layer_grads(params, acts, x)
        grads = aug_grads(inputs, dl_da)
        Ls, Rs, PL, PR, mom = state[:5]
        if beta2 < 1.0:   # moving average (the first step takes the batch's statistics)
            w_old = ops.where(ops.equal(t, 0), 0.0, beta2)
            w_new = 1.0 - w_old
        else:             # beta2 = 1: the original Shampoo's running sums
            w_old, w_new = 1.0, 1.0
        Ls = tuple(w_old * m + w_new * ops.matmul(g, ops.transpose(g)) for m, g in zip(Ls, grads))
        Rs = tuple(w_old * m + w_new * ops.matmul(ops.transpose(g), g) for m, g in zip(Rs, grads))
        PL, PR = ops.cond(_is_refresh(t, refresh_every), lambda: refresh(Ls, Rs), lambda: (PL, PR))
        dirs, gv = [], []
        for i, g in enumerate(grads):
            d = ops.matmul(ops.matmul(PL[i], g), PR[i])
            if graft == "rmsprop":
                v = graft_decay * state[5][i] + (1.0 - graft_decay) * ops.square(g)
                gv.append(v)
                d = d * (ops.norm(g / (ops.sqrt(v) + graft_eps)) / (ops.norm(d) + 1e-30))
            dirs.append(d)
        params, mom = _apply(params, dirs, mom, lr, momentum)
        new_state = (Ls, Rs, PL, PR, mom) + ((tuple(gv),) if graft == "rmsprop" else ())
        return params, new_state, loss

    return Optimizer("Shampoo", init, step, settings)


def factored_damping(A, G, damping: float, mode: str = "relative"):
    """(delta_A, delta_G) = (pi sqrt(lambda), sqrt(lambda) / pi), pi^2 = mean eig A / mean eig G."""
    n, m = ops.shape(A)[-1], ops.shape(G)[-1]
    mean_a = ops.maximum(ops.trace(A) / n, 1e-12)
    mean_g = ops.maximum(ops.trace(G) / m, 1e-12)
    pi = ops.sqrt(mean_a / mean_g)
    lam = damping * mean_a * mean_g if mode == "relative" else damping
    root = lam ** 0.5 if mode == "absolute" else ops.sqrt(lam)
    return pi * root, root / pi


def fisher_signals(params, acts, x, pre, dl_da, fisher: str, seed: int, t):
    """Per-example dL/da (times the batch size) for the G factors: sampled targets or the data's."""
    batch = ops.cast(ops.shape(x)[0], "float32")
    if fisher == "true":   # output pixels sampled from the model's own Bernoulli distribution
        logits = pre[-1]
        sample = ops.cast(lp_backend.uniform(seed, t, ops.shape(logits)) < ops.sigmoid(logits), "float32")
        dl_da = lp_model.backward(params, acts, pre, lp_model.loss_gradient(logits, sample))
    return [g * batch for g in dl_da]


def kfac(acts: Sequence[str], damping: float = 1e-2, stat_decay: float = 0.95, refresh_every: int = 20,
         momentum: float = 0.0, fisher: str = "true", damping_mode: str = "relative", kl_clip=0.1,
         seed: int = 0, root_method: str = "auto") -> Optimizer:
    """K-FAC for dense layers: Kronecker factors A, G; factored-damped inverses every k steps."""
    _choice("damping_mode", damping_mode, ("relative", "absolute"))
    _choice("fisher", fisher, ("true", "empirical"))
    method = _checked(refresh_every, root_method)
    settings = (f"{fisher} Fisher, factored Tikhonov damping {damping:g} ({damping_mode}), stat_decay={stat_decay}, "
                f"inverses every {refresh_every} steps ({method}), KL clip {kl_clip}, momentum={momentum}; "
                "no adaptive damping")

    def init(params):
        shapes = _aug_shapes(params)
        return (tuple(ops.zeros((a, a)) for a, _ in shapes), tuple(ops.zeros((b, b)) for _, b in shapes),
                tuple(ops.eye(a) for a, _ in shapes), tuple(ops.eye(b) for _, b in shapes),
                tuple(ops.zeros(s) for s in shapes))

    def refresh(As, Gs):
        deltas = [factored_damping(A, G, damping, damping_mode) for A, G in zip(As, Gs)]
        roots = inverse_roots(list(As) + list(Gs), 1, [d[0] for d in deltas] + [d[1] for d in deltas],
                              relative=False, method=method)
        return tuple(roots[:len(As)]), tuple(roots[len(As):])

    def step(params, state, x, lr, t):
        loss, inputs, pre, dl_da = lp_model.loss_and_layer_grads(params, acts, x)
        s = fisher_signals(params, acts, x, pre, dl_da, fisher, seed, t)
        As, Gs, PA, PG, mom = state
        decay = ops.where(ops.equal(t, 0), 0.0, stat_decay)
        batch = ops.cast(ops.shape(x)[0], "float32")
        Y = [augment(y) for y in inputs]
        As = tuple(decay * A + (1.0 - decay) * ops.matmul(ops.transpose(y), y) / batch for A, y in zip(As, Y))
        Gs = tuple(decay * G + (1.0 - decay) * ops.matmul(ops.transpose(si), si) / batch for G, si in zip(Gs, s))
        PA, PG = ops.cond(_is_refresh(t, refresh_every), lambda: refresh(As, Gs), lambda: (PA, PG))
        grads = [ops.matmul(ops.transpose(y), g) for y, g in zip(Y, dl_da)]
        dirs = [ops.matmul(ops.matmul(PA[i], g), PG[i]) for i, g in enumerate(grads)]
        if kl_clip:
            vfv = ops.square(lr) * sum(ops.sum(d * g) for d, g in zip(dirs, grads))
            nu = ops.minimum(1.0, ops.sqrt(kl_clip / (vfv + 1e-30)))
            dirs = [nu * d for d in dirs]
        params, mom = _apply(params, dirs, mom, lr, momentum)
        return params, (As, Gs, PA, PG, mom), loss

    return Optimizer("K-FAC", init, step, settings)
