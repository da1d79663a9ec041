"""The shared training loop: same data order, same initialisation, same schedule for every optimizer.

Each optimizer object has `step(x, lr) -> loss` (one compiled tf.function, traced once and re-used
across the learning-rate sweep), `reset()` and `state_bytes()`. Keras optimizers are wrapped to
that interface. The learning-rate schedule is the source's: linear warm-up, then linear decay.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import keras

from lp_locoprop import LocoProp
from lp_model import Autoencoder, dataset_loss
from lp_second_order import KFAC, Shampoo

OPTIMIZERS = ("SGD", "Momentum", "AdaGrad", "RMSProp", "Adam", "Shampoo", "K-FAC", "LocoProp-S", "LocoProp-M")
KERAS = {
    "SGD": lambda: keras.optimizers.SGD(learning_rate=0.0),
    "Momentum": lambda: keras.optimizers.SGD(learning_rate=0.0, momentum=0.9),
    "AdaGrad": lambda: keras.optimizers.Adagrad(learning_rate=0.0),
    "RMSProp": lambda: keras.optimizers.RMSprop(learning_rate=0.0),
    "Adam": lambda: keras.optimizers.Adam(learning_rate=0.0),
}


class KerasOptimizer:
    """A Keras optimizer behind the step(x, lr) / reset() / state_bytes() interface."""

    def __init__(self, model: Autoencoder, name: str):
        if name not in KERAS:
            raise ValueError(f"{name!r} is not one of the Keras baselines {tuple(KERAS)}")
        self.model, self.name = model, name
        self.opt = KERAS[name]()
        self.opt.build(model.variables)
        self._init = [v.numpy().copy() for v in self.opt.variables]
        self.step = tf.function(self._step)

    def _step(self, x, lr):
        self.opt.learning_rate.assign(tf.cast(lr, tf.float32))
        with tf.GradientTape() as tape:
            loss = self.model.loss(x)
        grads = tape.gradient(loss, self.model.variables)
        self.opt.apply_gradients(zip(grads, self.model.variables))
        return loss

    @property
    def state(self) -> list:
        return [v for v in self.opt.variables if len(v.shape) > 0]  # slots; not the scalar counters

    def state_bytes(self) -> int:
        return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in self.state))

    def reset(self) -> None:
        for v, init in zip(self.opt.variables, self._init):
            v.assign(init)


def make_optimizer(name: str, model: Autoencoder, **kw):
    """One of OPTIMIZERS; keyword arguments go to Shampoo, KFAC or LocoProp."""
    if name in KERAS:
        return KerasOptimizer(model, name)
    if name == "Shampoo":
        return Shampoo(model, **kw)
    if name == "K-FAC":
        return KFAC(model, **kw)
    if name in ("LocoProp-S", "LocoProp-M"):
        return LocoProp(model, variant=name[-1], **kw)
    raise ValueError(f"optimizer {name!r}; use one of {OPTIMIZERS}")


def lr_factor(epoch: int, epochs: int, warmup: int) -> float:
    """Source schedule: warm-up (epoch+1)/warmup, then linear decay to 1/(epochs - warmup) in the last epoch."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    return 1.0 - (epoch - warmup) / max(1, epochs - warmup)


@dataclass
class Run:
    optimizer: str
    lr: float
    losses: List[float] = field(default_factory=list)      # training loss after 0..E epochs
    wall: List[float] = field(default_factory=list)        # cumulative training seconds after 0..E epochs
    epoch_seconds: List[float] = field(default_factory=list)
    state_bytes: int = 0
    diverged: bool = False

    @property
    def final_loss(self) -> float:
        return math.inf if self.diverged else self.losses[-1]

    @property
    def seconds_per_epoch(self) -> float:
        return float(np.median(self.epoch_seconds)) if self.epoch_seconds else math.nan


def train_run(model: Autoencoder, opt, images: np.ndarray, orders: np.ndarray, base_lr: float,
              warmup: int, eval_images: Optional[np.ndarray] = None, probe: Optional[Callable] = None,
              diverge_at: float = 1e4) -> Run:
    """Train from the model's initial parameters with `orders` ([epochs, steps, batch] indices).

    Times only the training steps of each epoch (ending with a device sync); evaluates the loss over
    the whole training set after every epoch. `probe(step_index, x, lr)` replaces opt.step when given
    (the analysis hooks in there) and must return the batch loss.
    """
    model.reset()
    opt.reset()
    epochs = len(orders)
    eval_images = images if eval_images is None else eval_images
    run = Run(opt.name, float(base_lr), state_bytes=opt.state_bytes())
    run.losses.append(dataset_loss(model, eval_images))
    run.wall.append(0.0)
    gstep = 0
    for epoch in range(epochs):
        lr = tf.constant(base_lr * lr_factor(epoch, epochs, warmup), tf.float32)
        t0 = time.perf_counter()
        last = None
        for idx in orders[epoch]:
            x = tf.constant(images[idx])
            last = probe(gstep, x, lr) if probe else opt.step(x, lr)
            gstep += 1
        last = float(last)   # waits for the device: the epoch's work is done
        dt = time.perf_counter() - t0
        run.epoch_seconds.append(dt)
        run.wall.append(run.wall[-1] + dt)
        loss = dataset_loss(model, eval_images)
        run.losses.append(loss)
        if not np.isfinite(loss) or loss > diverge_at or not np.isfinite(last):
            run.diverged = True
            break
    return run


def warm_up(opt, x) -> None:
    """Trace (compile) the step once with lr = 0, then restore model and optimizer state."""
    opt.step(tf.constant(x), tf.constant(0.0))
    opt.model.reset()
    opt.reset()


def sweep(model: Autoencoder, names: Sequence[str], grids: Dict[str, Sequence[float]], images, orders,
          warmup: int, options: Optional[Dict[str, dict]] = None, progress=None) -> Dict[str, List[Run]]:
    """Every optimizer at every learning rate of its grid, full schedule each, shared data order/init."""
    options = options or {}
    jobs = [(n, lr) for n in names for lr in grids[n]]
    bar = progress(total=len(jobs), desc="LR sweep") if progress else None
    runs: Dict[str, List[Run]] = {}
    for name in names:
        opt = make_optimizer(name, model, **options.get(name, {}))
        warm_up(opt, images[orders[0, 0]])
        for lr in grids[name]:
            runs.setdefault(name, []).append(train_run(model, opt, images, orders, lr, warmup))
            if bar:
                bar.update(1)
                bar.set_postfix_str(f"{name} lr={lr:g} loss={runs[name][-1].final_loss:.2f}")
    if bar:
        bar.close()
    return runs


def best_runs(runs: Dict[str, List[Run]]) -> Dict[str, Run]:
    """Per optimizer, the run with the lowest final training loss (diverged runs count as +inf)."""
    return {name: min(rs, key=lambda r: r.final_loss) for name, rs in runs.items()}


def table(best: Dict[str, Run], runs: Dict[str, List[Run]]):
    """Final loss, seconds per epoch, optimizer-state memory, chosen LR and the grid, per optimizer."""
    import pandas as pd
    rows = []
    for name, r in best.items():
        rows.append({"optimizer": name, "final train loss": round(r.final_loss, 3),
                     "s / epoch": round(r.seconds_per_epoch, 3),
                     "state MiB": round(r.state_bytes / 2**20, 2),
                     "best lr": r.lr,
                     "lr grid (final loss)": ", ".join(
                         f"{x.lr:g}:{'div' if x.diverged else format(x.final_loss, '.1f')}" for x in runs[name])})
    return pd.DataFrame(rows).set_index("optimizer").sort_values("final train loss")


def paper_claims(best: Dict[str, Run]) -> Dict[str, float]:
    """The paper's claim as measured numbers (ratios) and yes/no checks (1.0 / 0.0).

    - beats first order: LocoProp-M's final loss below the best of SGD, Momentum, AdaGrad, RMSProp, Adam;
    - near second order: within 10% of the better of Shampoo and K-FAC (ratio <= 1.10);
    - faster: LocoProp-M's seconds per epoch below both Shampoo's and K-FAC's.
    """
    loco = best["LocoProp-M"]
    first = min(best[n].final_loss for n in ("SGD", "Momentum", "AdaGrad", "RMSProp", "Adam") if n in best)
    second = min(best[n].final_loss for n in ("Shampoo", "K-FAC"))
    slowest_ok = min(best[n].seconds_per_epoch for n in ("Shampoo", "K-FAC"))
    ratio_first = loco.final_loss / first
    ratio_second = loco.final_loss / second
    ratio_time = loco.seconds_per_epoch / slowest_ok
    return {
        "ratio_locoprop_m_to_best_first_order": ratio_first,
        "ratio_locoprop_m_to_best_second_order": ratio_second,
        "ratio_epoch_time_locoprop_m_to_faster_second_order": ratio_time,
        "claim_beats_first_order": float(ratio_first < 1.0),
        "claim_within_10pct_of_second_order": float(ratio_second <= 1.10),
        "claim_faster_than_second_order": float(ratio_time < 1.0),
    }
