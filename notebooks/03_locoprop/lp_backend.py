"""The topic's only backend-specific code: compiling and looping a training step, and a few primitives.

Everything else (model, optimizers, analysis) is written with `keras.ops` on plain arrays and runs
unchanged under KERAS_BACKEND=tensorflow (CPU smoke, CI) and KERAS_BACKEND=jax (GPU full run).

A training step is a pure function `step(params, state, x, lr, t) -> (params, state, loss)`:
params and state are tuples of arrays, `t` is the global step index (0, 1, ...). `GridRunner` trains
G copies ("members": learning rates or seeds) of one optimizer side by side:
- JAX: one jitted program per epoch: `lax.scan` over the epoch's batches, `vmap` over the members;
  the images stay on the device; every member gathers its own batch from its own index order;
- TensorFlow: the step is one `tf.function`; Python loops over batches and members (CPU sizes).
"""
from __future__ import annotations

import os
from typing import Callable, List, Sequence

import numpy as np
import keras

NAME = keras.backend.backend()
if NAME not in ("tensorflow", "jax"):
    raise ImportError(f"KERAS_BACKEND={NAME!r}: this topic runs on 'tensorflow' or 'jax'")

if NAME == "jax":
    import jax
    import jax.numpy as jnp

    def matmul_hi(a, b):
        """a @ b at full float32 precision (XLA on GPUs may otherwise use TF32 for float32 matmuls)."""
        return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)

    def uniform(seed: int, t, shape):
        """U[0, 1) numbers for global step t: the same for every member of a grid."""
        return jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(seed), t), shape)

    def value_and_grad(f: Callable) -> Callable:
        """(f(x), df/dx) of a scalar function of one array (used by the tests)."""
        return jax.value_and_grad(f)

    def to_numpy(x) -> np.ndarray:
        return np.asarray(x)

    def enable_compilation_cache(path) -> None:
        """Persist compiled XLA programs across processes (stage commands, then the notebook)."""
        os.makedirs(path, exist_ok=True)
        try:
            jax.config.update("jax_compilation_cache_dir", str(path))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        except AttributeError as exc:     # an option renamed in another JAX version: run without the cache
            print(f"note: no persistent compilation cache ({exc})")

    def set_matmul_precision(name: str) -> None:
        """'default' (XLA may use TF32 for float32 matmuls on recent NVIDIA GPUs) or 'highest' (true float32)."""
        if name not in ("default", "highest"):
            raise ValueError(f"precision {name!r}; use 'default' or 'highest'")
        jax.config.update("jax_default_matmul_precision", None if name == "default" else "highest")

    def compile_step(step: Callable) -> Callable:
        return jax.jit(step)

    def member(tree, g: int):
        """Member g of a stacked carry."""
        return jax.tree.map(lambda a: a[g], tree)

    def scalar(v: float):
        return jnp.float32(v)

    def step_index(t: int):
        return jnp.int32(t)
else:
    import tensorflow as tf

    def matmul_hi(a, b):
        return tf.matmul(a, b)

    def uniform(seed: int, t, shape):
        s = tf.stack([tf.constant(seed, tf.int64), tf.cast(t, tf.int64)])
        return tf.random.stateless_uniform(shape, seed=s)

    def value_and_grad(f: Callable) -> Callable:
        def vg(x):
            x = tf.convert_to_tensor(x)
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = f(x)
            return y, tape.gradient(y, x)
        return vg

    def to_numpy(x) -> np.ndarray:
        return np.asarray(x)

    def enable_compilation_cache(path) -> None:
        pass

    def set_matmul_precision(name: str) -> None:
        if name not in ("default", "highest"):
            raise ValueError(f"precision {name!r}; use 'default' or 'highest'")

    def compile_step(step: Callable) -> Callable:
        return tf.function(step)

    def member(tree, g: int):
        return tree[g]

    def scalar(v: float):
        return tf.constant(v, tf.float32)

    def step_index(t: int):
        return tf.constant(t, tf.int32)


def _dataset_loss_fn(loss_fn: Callable, chunk: int):
    """Mean per-example loss over all images, chunk by chunk (bounded activation memory)."""
    from keras import ops

    def f(params, images):
        n = images.shape[0]
        full = (n // chunk) * chunk
        total = 0.0
        for start in range(0, full, chunk):     # a few chunks: unrolled at trace time
            total = total + loss_fn(params, images[start:start + chunk]) * chunk
        if full < n:
            total = total + loss_fn(params, images[full:]) * (n - full)
        return ops.convert_to_tensor(total) / n
    return f


class GridRunner:
    """Trains G members of one optimizer side by side, an epoch per call; evaluates on demand.

    `step` and `init` define the optimizer; `loss_fn(params, x)` is the model's batch loss.
    `epoch(params, state, lrs[G], orders[G, S, B], t0)` runs S steps; `evaluate(params)` returns
    each member's mean loss over `images`. Params/state are opaque carries between those calls;
    `member_params(params, g)` gives member g's parameters as numpy arrays.
    """

    def __init__(self, step: Callable, init: Callable, loss_fn: Callable, images: np.ndarray, eval_chunk: int = 5000):
        self.step, self.init, self.loss_fn = step, init, loss_fn
        self.eval_chunk = min(eval_chunk, len(images))
        self.n_images = len(images)
        if NAME == "jax":
            self.images = jnp.asarray(images)
            self._epoch = jax.jit(self._jax_epoch, donate_argnums=(0, 1))
            self._eval = jax.jit(jax.vmap(_dataset_loss_fn(loss_fn, self.eval_chunk), in_axes=(0, None)))
            self._init = jax.jit(jax.vmap(init))
        else:
            self.images = tf.constant(images)
            self._step = tf.function(step)
            self._eval = tf.function(_dataset_loss_fn(loss_fn, self.eval_chunk))

    # --- JAX ---------------------------------------------------------------------------------
    def _jax_epoch(self, params, state, lrs, orders, t0, images):
        vstep = jax.vmap(self.step, in_axes=(0, 0, 0, 0, None))

        def body(carry, inp):
            p, s = carry
            idx, t = inp                       # idx: [G, B] this step's indices of every member
            p, s, loss = vstep(p, s, images[idx], lrs, t)
            return (p, s), loss
        steps = orders.shape[1]
        (params, state), losses = jax.lax.scan(
            body, (params, state), (jnp.swapaxes(orders, 0, 1), t0 + jnp.arange(steps, dtype=jnp.int32)))
        return params, state, losses           # losses: [S, G]

    # --- both ----------------------------------------------------------------------------------
    def start(self, member_params: Sequence[Sequence[np.ndarray]]):
        """(params, state) carries for G members from their initial parameters (lists of arrays)."""
        if NAME == "jax":
            params = tuple(jnp.asarray(np.stack(arrs)) for arrs in zip(*member_params))
            return params, self._init(params)
        params = [tuple(tf.constant(a) for a in p) for p in member_params]
        return params, [self.init(p) for p in params]

    def epoch(self, params, state, lrs: Sequence[float], orders: np.ndarray, t0: int, active=None):
        """One epoch for every member; returns (params, state, batch losses [S, G] as numpy).

        `active` (TensorFlow only): members to skip (diverged ones keep their last values)."""
        lrs = np.asarray(lrs, np.float32)
        orders = np.asarray(orders, np.int32)
        if NAME == "jax":
            params, state, losses = self._epoch(params, state, jnp.asarray(lrs), jnp.asarray(orders),
                                                jnp.int32(t0), self.images)
            return params, state, losses
        G, S = orders.shape[:2]
        losses = np.full((S, G), np.nan, np.float32)
        for s in range(S):
            t = tf.constant(t0 + s, tf.int32)
            for g in range(G):
                if active is not None and not active[g]:
                    continue
                x = tf.gather(self.images, orders[g, s])
                params[g], state[g], loss = self._step(params[g], state[g], x, tf.constant(lrs[g]), t)
                losses[s, g] = float(loss)
        return params, state, losses

    def evaluate(self, params) -> np.ndarray:
        """Each member's mean loss over all images (waits for the device)."""
        if NAME == "jax":
            return np.asarray(self._eval(params, self.images), np.float64)
        return np.array([float(self._eval(p, self.images)) for p in params], np.float64)

    @staticmethod
    def member_params(params, g: int) -> List[np.ndarray]:
        if NAME == "jax":
            return [np.asarray(a[g]) for a in params]
        return [np.asarray(a) for a in params[g]]

    @staticmethod
    def sync(x) -> None:
        """Block until `x` (a result of `epoch`) is computed."""
        if NAME == "jax":
            jax.block_until_ready(x)
