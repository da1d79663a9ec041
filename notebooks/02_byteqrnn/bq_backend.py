"""The one place that knows which Keras backend runs: compile an inference function for it.

Everything else in this topic is `keras.ops`; TensorFlow-only work (LiteRT export) is in `bq_export`."""
from __future__ import annotations

import keras


def backend() -> str:
    return keras.backend.backend()


def jit(fn):
    """`fn` compiled for the backend (tf.function / jax.jit) for inference loops; eager elsewhere. Under JAX the
    Keras weights `fn` reads become constants of the compiled function (right for fixed-weight inference)."""
    if backend() == "tensorflow":
        import tensorflow as tf
        return tf.function(fn, reduce_retracing=True)
    if backend() == "jax":
        import jax
        return jax.jit(fn)
    return fn


def grad(fn, x):
    """d sum(fn(x)) / dx for a float array x, as numpy (tf.GradientTape / jax.grad)."""
    import numpy as np
    from keras import ops
    x = ops.convert_to_tensor(np.asarray(x, np.float32))
    if backend() == "tensorflow":
        import tensorflow as tf
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ops.sum(fn(x))
        return tape.gradient(y, x).numpy()
    if backend() == "jax":
        import jax
        return np.asarray(jax.grad(lambda v: ops.sum(fn(v)))(x))
    raise NotImplementedError(f"grad() under {backend()}")


def enable_compile_cache(folder=None) -> None:
    """Under JAX, keep compiled XLA programs on disk (default: <tmp>/bq_jax_cache), so a model compiled once
    (e.g. ByteQRNN from scratch) is not compiled again for the same program (its fine-tune, a later command or
    the notebook on the same machine). Compiling, not training, is most of a full-size piece's time."""
    if backend() != "jax":
        return
    import os
    import tempfile
    import jax
    folder = folder or os.path.join(tempfile.gettempdir(), "bq_jax_cache")
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
