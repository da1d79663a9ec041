"""Training and evaluation helpers for the byte classifiers (Keras `fit` with a labkit progress bar; any
Keras backend), AUC per language and overall, and per-example latency of a Keras model."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import pandas as pd
import keras
from sklearn.metrics import roc_auc_score

from bq_backend import jit
from bq_layers import check_ids, encode_bytes


class ProgressCallback(keras.callbacks.Callback):
    """One labkit progress bar over all training steps (works under papermill and in a terminal)."""

    def __init__(self, total: int, desc: str):
        super().__init__()
        self.total, self.desc = total, desc
        self.bar = None
        self.losses = []

    def on_train_begin(self, logs=None):
        from labkit import progress
        self.bar = progress(total=self.total, desc=self.desc)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def on_train_end(self, logs=None):
        self.bar.close()


def encode_split(df: pd.DataFrame, max_len: int):
    return encode_bytes(df["text"].tolist(), max_len), df["label"].to_numpy().astype(np.float32)[:, None]


class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(step)` scaled by min(1, (step + 1) / warmup_steps): a linear ramp from lr / warmup_steps up to the
    schedule over the first `warmup_steps` steps, then the schedule itself."""

    def __init__(self, schedule, warmup_steps: int):
        self.schedule, self.warmup_steps = schedule, int(warmup_steps)

    def __call__(self, step):
        ramp = keras.ops.minimum(1.0, (keras.ops.cast(step, "float32") + 1.0) / float(self.warmup_steps))
        return self.schedule(step) * ramp

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule), "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]), config["warmup_steps"])


def lr_schedule(lr: float, steps: int, warmup_steps: int = 0):
    """The classifiers' learning rate: linear decay from `lr` to lr/20 over `steps`, with an optional linear warmup
    over the first `warmup_steps` (the Transformer encoders need one: see bq_stages.knobs)."""
    if warmup_steps < 0 or warmup_steps >= steps:
        raise ValueError(f"warmup_steps={warmup_steps}; use 0 (none) up to steps - 1 = {steps - 1}")
    sched = keras.optimizers.schedules.PolynomialDecay(lr, decay_steps=steps, end_learning_rate=lr * 0.05)
    return LinearWarmup(sched, warmup_steps) if warmup_steps else sched


def batch_order(n: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """The example indices `train_classifier` feeds, in order: replacement-free epochs (a fresh permutation of the
    n examples each), `steps` batches of `batch_size`."""
    epochs = int(np.ceil(steps / int(np.ceil(n / batch_size))))
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(n) for _ in range(epochs)])[: steps * batch_size]


def train_classifier(model, x, y, steps: int, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                     desc: str = "train", pos_weight: Optional[float] = None, jit_compile="auto",
                     warmup_steps: int = 0, stop_after: Optional[int] = None) -> list:
    """Adam with linear decay (see `lr_schedule`), BCE on the logit, `steps` batches sampled with replacement-free
    epochs (`jit_compile=False`: no XLA compile, for a few steps in tests). `stop_after` trains only the first
    that many of the `steps` (same batches and schedule: the start of the long run, for probes). Returns the loss
    curve as Keras logs it: the running mean over the steps so far."""
    order = batch_order(len(x), min(steps, stop_after or steps), batch_size, seed)
    xs, ys = x[order], y[order]
    sched = lr_schedule(lr, steps, warmup_steps)
    model.compile(optimizer=keras.optimizers.Adam(sched, clipnorm=1.0),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=jit_compile)
    w = None
    if pos_weight:
        w = np.where(ys[:, 0] > 0.5, pos_weight, 1.0).astype(np.float32)
    cb = ProgressCallback(len(xs) // batch_size + (len(xs) % batch_size > 0), desc)
    model.fit(xs, ys, sample_weight=w, batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
              callbacks=[cb])
    return cb.losses


def predict_padded(model, x, batch_size: int) -> np.ndarray:
    """model.predict with the last batch padded to full size (with PAD ids): one batch shape, so XLA
    (JAX, or TF with jit_compile) compiles the predict step once instead of twice."""
    n = len(x)
    pad = (-n) % batch_size
    if pad:
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0))[:n]


def predict_logits(model, x, batch_size: int = 256) -> np.ndarray:
    """Logits [N] of a classifier for byte ids [N, max_len] (checked: see bq_layers.check_ids)."""
    x = check_ids(x, model.cfg.max_len)
    return predict_padded(model, x, min(batch_size, len(x)))[:, 0]


def auc_table(df: pd.DataFrame, scores) -> dict:
    """{'overall': AUC, 'es': AUC, 'it': AUC, ...} (NaN where a group has one class only)."""
    scores = np.asarray(scores)
    out = {"overall": float(roc_auc_score(df["label"], scores))}
    for lang in sorted(df["lang"].unique()):
        m = (df["lang"] == lang).to_numpy()
        ys = df["label"].to_numpy()[m]
        out[lang] = float(roc_auc_score(ys, scores[m])) if len(set(ys)) == 2 else float("nan")
    return out


def keras_latency_per_example(model, x, repeat: int = 3) -> float:
    """Median seconds per example, batch 1, through the backend's compiled function (tf.function or
    jax.jit: no Python overhead of model.predict)."""
    from labkit import time_it
    fn = jit(lambda ids: model(ids, training=False))
    xs = [keras.ops.convert_to_tensor(r[None]) for r in check_ids(x, model.cfg.max_len)]

    def run():
        for xi in xs:
            keras.ops.convert_to_numpy(fn(xi))
    return time_it(run, repeat=repeat, warmup=1).median / len(xs)
