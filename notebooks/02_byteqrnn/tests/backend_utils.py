"""Backend-neutral helpers for the tests: tensors in and out, gradients, and a skip for TF-only tests."""
import numpy as np
import keras
import pytest
from keras import ops

BACKEND = keras.backend.backend()
tf_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow by nature (LiteRT export / tf.string "
                             f"graph); this run uses KERAS_BACKEND={BACKEND}")


def T(x, dtype=None):
    """numpy (or list) -> a backend tensor."""
    return ops.convert_to_tensor(np.asarray(x) if dtype is None else np.asarray(x, dtype))


def N(x):
    """a backend tensor -> numpy."""
    return np.asarray(ops.convert_to_numpy(x))


def normal(*shape, seed=0):
    return T(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def grads(fn, *xs):
    """Gradients of the scalar fn(*xs) with respect to each of xs, as numpy arrays (one at a time)."""
    from bq_backend import grad
    xs = [np.asarray(x, np.float32) for x in xs]
    return [grad(lambda v, i=i: fn(*[v if j == i else T(x) for j, x in enumerate(xs)]), xs[i]) for i in range(len(xs))]
