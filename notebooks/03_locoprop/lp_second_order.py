"""Shampoo and K-FAC for the dense layers of the autoencoder (TF2, one compiled step each).

Each dense layer's weight and bias are treated as one matrix W_aug = [W; b] of shape [in + 1, out]
acting on the augmented input [y, 1], so its gradient is  Gr = Y_aug^T dL/da  (Y_aug: [B, in + 1]).

Shampoo (Gupta, Koren, Singer 2018; Anil et al. 2020's practical form):
    L <- beta2 L + (1 - beta2) Gr Gr^T,   R <- beta2 R + (1 - beta2) Gr^T Gr   (first step: L = Gr Gr^T)
    every k steps:  P_L = (L + eps lmax(L) I)^(-1/4),  P_R = (R + eps lmax(R) I)^(-1/4)
    direction D = P_L Gr P_R, optionally grafted to RMSProp's per-layer step norm; heavy-ball momentum.
K-FAC (Martens & Grosse 2015), with exact damping of the Kronecker product:
    A = E[y_aug y_aug^T],  G = E[s s^T],  s = per-example dL/da (sampled from the model: 'true' Fisher,
    or with the data's own pixels: 'empirical'); exponential moving averages;
    every k steps: eigendecompositions A = U_A diag(a) U_A^T, G = U_G diag(g) U_G^T;
    direction D = (A kron G + lambda I)^-1 vec(Gr) = U_A [(U_A^T Gr U_G) / (a g^T + lambda)] U_G^T,
    lambda = damping * mean(a) * mean(g) per layer ('relative', the default: the factors' scales differ by
    orders of magnitude between layers) or lambda = damping ('absolute');
    optional KL clipping (Ba et al. 2017): all directions scaled by min(1, sqrt(kl_clip / (lr^2 sum <D, Gr>))).
Eigendecompositions run in float64 (stable inverse roots); everything else in float32.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from lp_model import Autoencoder, reconstruction_loss


def augment(y):
    """[y, 1]: the bias becomes the last row of W_aug."""
    return tf.concat([y, tf.ones([tf.shape(y)[0], 1], y.dtype)], axis=1)


def split_aug(m):
    return m[:-1], m[-1]


def symmetric_eig(M, dtype=tf.float64):
    """Eigenvalues clipped at 0 and eigenvectors of a symmetric PSD matrix, computed in `dtype`."""
    Md = tf.cast(M, dtype)
    e, V = tf.linalg.eigh(0.5 * (Md + tf.transpose(Md)))
    return tf.maximum(e, 0.0), V


def matrix_inverse_root(M, p: int, eps: float, relative: bool = True, dtype=tf.float64):
    """(M + eps' I)^(-1/p) for symmetric PSD M; eps' = eps * lmax(M) if relative else eps."""
    e, V = symmetric_eig(M, dtype)
    eps_abs = eps * tf.reduce_max(e) if relative else tf.constant(eps, dtype)
    root = tf.matmul(V * tf.pow(e + eps_abs, -1.0 / p), V, transpose_b=True)
    return tf.cast(root, M.dtype)


def kfac_precondition(grad, UA, eA, UG, eG, damping):
    """(A kron G + damping I)^-1 vec(grad) in matrix form, given A, G's eigendecompositions."""
    rot = tf.matmul(tf.matmul(UA, grad, transpose_a=True), UG)
    rot = rot / (eA[:, None] * eG[None, :] + damping)
    return tf.matmul(tf.matmul(UA, rot), UG, transpose_b=True)


def layer_grads(model: Autoencoder, x, fisher: str = "none", rng=None):
    """(loss, Y_aug per layer, dL/da per layer, s per layer for the Fisher factor or None)."""
    with tf.GradientTape(persistent=fisher == "true") as tape:
        inputs, pre = model.forward(x)
        loss = reconstruction_loss(pre[-1], x)
        if fisher == "true":   # targets sampled from the model's own Bernoulli pixels
            logits = tf.stop_gradient(pre[-1])
            sample = tf.cast(rng.uniform(tf.shape(logits)) < tf.sigmoid(logits), x.dtype)
            loss_s = reconstruction_loss(pre[-1], sample)
    dl_da = tape.gradient(loss, pre)
    batch = tf.cast(tf.shape(x)[0], x.dtype)
    if fisher == "true":
        s = [g * batch for g in tape.gradient(loss_s, pre)]
        del tape
    elif fisher == "empirical":
        s = [g * batch for g in dl_da]
    else:
        s = None
    return loss, [augment(tf.stop_gradient(y)) for y in inputs], dl_da, s


class _Preconditioned:
    """Shared plumbing: state variables, reset, memory, a step counter, the refresh period."""
    name = "?"

    def _var(self, value):
        v = tf.Variable(value, trainable=False, dtype=tf.float32)
        self._state.append((v, np.array(value, np.float32)))
        return v

    @property
    def state(self) -> list:
        return [v for v, _ in self._state]

    def state_bytes(self) -> int:
        return int(sum(np.prod(v.shape) * v.dtype.size for v in self.state))

    def reset(self) -> None:
        for v, init in self._state:
            v.assign(init)
        self.count.assign(0)

    def _apply(self, i, direction, lr):
        m = self.mom[i].assign(self.momentum * self.mom[i] + direction)
        dW, db = split_aug(m)
        self.model.weights[i].assign_sub(lr * dW)
        self.model.biases[i].assign_sub(lr * db)


class Shampoo(_Preconditioned):
    """Shampoo for dense layers: full-matrix left/right statistics, inverse 4th roots every k steps."""

    def __init__(self, model: Autoencoder, beta2: float = 0.95, epsilon: float = 1e-4, refresh_every: int = 20,
                 momentum: float = 0.9, graft: str = "rmsprop", graft_decay: float = 0.9, graft_eps: float = 1e-8):
        if graft not in ("rmsprop", "none"):
            raise ValueError(f"graft={graft!r}; use 'rmsprop' or 'none'")
        self.model, self.name = model, "Shampoo"
        self.beta2, self.epsilon, self.k = float(beta2), float(epsilon), int(refresh_every)
        self.momentum, self.graft = float(momentum), graft
        self.graft_decay, self.graft_eps = float(graft_decay), float(graft_eps)
        self._state = []
        shapes = [(w.shape[0] + 1, w.shape[1]) for w in model.weights]
        self.L = [self._var(np.zeros((m, m))) for m, _ in shapes]
        self.R = [self._var(np.zeros((n, n))) for _, n in shapes]
        self.PL = [self._var(np.eye(m)) for m, _ in shapes]
        self.PR = [self._var(np.eye(n)) for _, n in shapes]
        self.mom = [self._var(np.zeros(s)) for s in shapes]
        self.gv = [self._var(np.zeros(s)) for s in shapes] if graft == "rmsprop" else []
        self.count = tf.Variable(0, trainable=False, dtype=tf.int64)
        self.step = tf.function(self._step)

    def _refresh(self):
        for i in range(len(self.L)):
            self.PL[i].assign(matrix_inverse_root(self.L[i], 4, self.epsilon))
            self.PR[i].assign(matrix_inverse_root(self.R[i], 4, self.epsilon))

    def _step(self, x, lr):
        loss, Y, dl_da, _ = layer_grads(self.model, x)
        grads = [tf.matmul(y, g, transpose_a=True) for y, g in zip(Y, dl_da)]
        if self.beta2 < 1.0:   # moving average (the first step takes the batch's statistics)
            w_old = tf.where(tf.equal(self.count, 0), 0.0, self.beta2)
            w_new = 1.0 - w_old
        else:                  # beta2 = 1: the original Shampoo's running sums
            w_old, w_new = 1.0, 1.0
        for i, Gr in enumerate(grads):
            self.L[i].assign(w_old * self.L[i] + w_new * tf.matmul(Gr, Gr, transpose_b=True))
            self.R[i].assign(w_old * self.R[i] + w_new * tf.matmul(Gr, Gr, transpose_a=True))
        if self.count % self.k == 0:
            self._refresh()
        lr = tf.cast(lr, tf.float32)
        for i, Gr in enumerate(grads):
            D = tf.matmul(tf.matmul(self.PL[i], Gr), self.PR[i])
            if self.graft == "rmsprop":
                v = self.gv[i].assign(self.graft_decay * self.gv[i] + (1.0 - self.graft_decay) * tf.square(Gr))
                g_dir = Gr / (tf.sqrt(v) + self.graft_eps)
                D = D * (tf.norm(g_dir) / (tf.norm(D) + 1e-30))
            self._apply(i, D, lr)
        self.count.assign_add(1)
        return loss


class KFAC(_Preconditioned):
    """K-FAC for dense layers: Kronecker factors A, G; exact (A kron G + lambda I)^-1 via eigenbases."""

    def __init__(self, model: Autoencoder, damping: float = 1e-2, stat_decay: float = 0.95, refresh_every: int = 20,
                 momentum: float = 0.0, fisher: str = "true", damping_mode: str = "relative", kl_clip=1e-3, seed: int = 0):
        if damping_mode not in ("relative", "absolute"):
            raise ValueError(f"damping_mode={damping_mode!r}; use 'relative' or 'absolute'")
        self.damping_mode, self.kl_clip = damping_mode, kl_clip
        if fisher not in ("true", "empirical"):
            raise ValueError(f"fisher={fisher!r}; use 'true' (sampled) or 'empirical'")
        self.model, self.name = model, "K-FAC"
        self.damping, self.stat_decay, self.k = float(damping), float(stat_decay), int(refresh_every)
        self.momentum, self.fisher = float(momentum), fisher
        self.rng = tf.random.Generator.from_seed(seed)
        self.seed = seed
        self._state = []
        shapes = [(w.shape[0] + 1, w.shape[1]) for w in model.weights]
        self.A = [self._var(np.zeros((m, m))) for m, _ in shapes]
        self.G = [self._var(np.zeros((n, n))) for _, n in shapes]
        self.UA = [self._var(np.eye(m)) for m, _ in shapes]
        self.eA = [self._var(np.ones(m)) for m, _ in shapes]
        self.UG = [self._var(np.eye(n)) for _, n in shapes]
        self.eG = [self._var(np.ones(n)) for _, n in shapes]
        self.mom = [self._var(np.zeros(s)) for s in shapes]
        self.count = tf.Variable(0, trainable=False, dtype=tf.int64)
        self.step = tf.function(self._step)

    def reset(self) -> None:
        super().reset()
        self.rng.reset_from_seed(self.seed)

    def _refresh(self):
        for i in range(len(self.A)):
            eA, UA = symmetric_eig(self.A[i])
            eG, UG = symmetric_eig(self.G[i])
            self.eA[i].assign(tf.cast(eA, tf.float32))
            self.UA[i].assign(tf.cast(UA, tf.float32))
            self.eG[i].assign(tf.cast(eG, tf.float32))
            self.UG[i].assign(tf.cast(UG, tf.float32))

    def layer_damping(self, i):
        """lambda of layer i (from the factors' eigenvalues at the last refresh)."""
        if self.damping_mode == "absolute":
            return tf.constant(self.damping, tf.float32)
        return self.damping * tf.reduce_mean(self.eA[i]) * tf.reduce_mean(self.eG[i])

    def _step(self, x, lr):
        loss, Y, dl_da, s = layer_grads(self.model, x, self.fisher, self.rng)
        decay = tf.where(tf.equal(self.count, 0), 0.0, self.stat_decay)
        batch = tf.cast(tf.shape(x)[0], tf.float32)
        for i in range(len(Y)):
            self.A[i].assign(decay * self.A[i] + (1.0 - decay) * tf.matmul(Y[i], Y[i], transpose_a=True) / batch)
            self.G[i].assign(decay * self.G[i] + (1.0 - decay) * tf.matmul(s[i], s[i], transpose_a=True) / batch)
        if self.count % self.k == 0:
            self._refresh()
        lr = tf.cast(lr, tf.float32)
        grads = [tf.matmul(y, g, transpose_a=True) for y, g in zip(Y, dl_da)]
        dirs = [kfac_precondition(Gr, self.UA[i], self.eA[i], self.UG[i], self.eG[i], self.layer_damping(i))
                for i, Gr in enumerate(grads)]
        if self.kl_clip:
            vfv = tf.square(lr) * tf.add_n([tf.reduce_sum(d * g) for d, g in zip(dirs, grads)])
            nu = tf.minimum(1.0, tf.sqrt(self.kl_clip / (vfv + 1e-30)))
            dirs = [nu * d for d in dirs]
        for i, D in enumerate(dirs):
            self._apply(i, D, lr)
        self.count.assign_add(1)
        return loss
