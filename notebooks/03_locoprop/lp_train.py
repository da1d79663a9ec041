"""The shared training protocol: same data order, same initialisation, the source's schedule for everyone.

Schedule (google-research `locoprop/locoprop_training.ipynb`): `for epoch in range(99)` with
num_epochs = 100 and warmup_epochs = 5; lr = base * epoch / warmup in the warm-up (so 0 in epoch 0),
then base * (1 - (epoch + 1 - warmup) / (num_epochs - warmup)). `trained_epochs(E) = E - 1` epochs run.

`train_grid` trains one optimizer at several learning rates (or seeds) side by side with
`lp_backend.GridRunner` and returns one `Run` per member. The loss over the whole training set is
evaluated every `eval_every` epochs and after the last one; each epoch also records the mean of its
batch losses (free: computed during training). A member whose evaluated loss is not finite or exceeds
`diverge_at` is marked diverged (final loss +inf).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

import lp_backend
import lp_model
from lp_optimizers import FIRST_ORDER, LOCOPROP, SECOND_ORDER, Optimizer


def trained_epochs(num_epochs: int) -> int:
    """The source trains `range(num_epochs - 1)`: 99 epochs for num_epochs = 100."""
    if num_epochs < 2:
        raise ValueError("num_epochs must be >= 2 (the source trains num_epochs - 1 epochs)")
    return num_epochs - 1


def lr_factor(epoch: int, num_epochs: int, warmup: int) -> float:
    """The source's factor for `epoch` (0-based): epoch / warmup, then 1 - (epoch + 1 - warmup) / (E - warmup)."""
    if not 0 <= warmup < num_epochs:
        raise ValueError(f"warmup={warmup} must be in [0, num_epochs={num_epochs})")
    if epoch < warmup:
        return epoch / warmup
    return 1.0 - (epoch + 1 - warmup) / (num_epochs - warmup)


@dataclass
class Run:
    optimizer: str
    lr: float
    seed: int = 0
    eval_epochs: List[int] = field(default_factory=list)     # epochs after which the full loss was evaluated
    losses: List[float] = field(default_factory=list)        # full training-set loss at eval_epochs
    epoch_losses: List[float] = field(default_factory=list)  # mean batch loss of each epoch (during training)
    diverged: bool = False
    epoch_seconds: List[float] = field(default_factory=list)  # filled by time_epochs (single run)

    @property
    def final_loss(self) -> float:
        return math.inf if self.diverged else self.losses[-1]

    @property
    def seconds_per_epoch(self) -> float:
        return float(np.median(self.epoch_seconds)) if self.epoch_seconds else math.nan

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Run":
        return cls(**d)


def train_grid(opt: Optimizer, acts: Sequence[str], images: np.ndarray, lrs: Sequence[float],
               inits: Sequence[Sequence[np.ndarray]], orders: Sequence[np.ndarray], num_epochs: int, warmup: int,
               eval_every: int = 1, diverge_at: float = 1e4, seeds: Optional[Sequence[int]] = None,
               runner: Optional[lp_backend.GridRunner] = None) -> List[Run]:
    """Members g = 0..G-1: learning rate lrs[g], initial params inits[g], batch order orders[g] ([epochs, S, B])."""
    G = len(lrs)
    if not (len(inits) == len(orders) == G):
        raise ValueError(f"{G} learning rates but {len(inits)} initialisations and {len(orders)} orders")
    epochs = trained_epochs(num_epochs)
    if any(len(o) < epochs for o in orders):
        raise ValueError(f"orders cover fewer than the {epochs} trained epochs")
    runner = runner or make_runner(opt, acts, images)
    seeds = list(seeds) if seeds is not None else [0] * G
    runs = [Run(opt.name, float(lr), int(s)) for lr, s in zip(lrs, seeds)]
    params, state = runner.start(inits)
    active = np.ones(G, bool)

    def evaluate(epoch):
        for r, loss, a in zip(runs, runner.evaluate(params), active):
            if not a:
                continue
            r.eval_epochs.append(epoch)
            r.losses.append(float(loss))
    evaluate(0)
    pending = []
    steps = orders[0].shape[1]
    for epoch in range(epochs):
        lrs_e = [lr * lr_factor(epoch, num_epochs, warmup) for lr in lrs]
        batch = np.stack([o[epoch] for o in orders])
        params, state, losses = runner.epoch(params, state, lrs_e, batch, epoch * steps, active)
        pending.append(losses)
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            evaluate(epoch + 1)
            for r, a in zip(runs, range(G)):
                bad = not np.isfinite(r.losses[-1]) or r.losses[-1] > diverge_at
                if active[a] and bad:
                    r.diverged, active[a] = True, False
            for chunk in pending:           # batch losses: fetched every eval, not every epoch
                chunk = np.asarray(chunk)
                for g, r in enumerate(runs):
                    r.epoch_losses.append(float(np.mean(chunk[:, g])))
            pending = []
            if not active.any():
                break
    return runs


def make_runner(opt: Optimizer, acts: Sequence[str], images: np.ndarray) -> lp_backend.GridRunner:
    """A runner for `opt`; re-use it across grids, seeds and timing so its step compiles once per shape."""
    return lp_backend.GridRunner(opt.step, opt.init, _loss_fn(acts), images)


def _loss_fn(acts):
    return lambda params, x: lp_model.batch_loss(params, acts, x)


def time_epochs(opt: Optimizer, acts: Sequence[str], images: np.ndarray, lr: float, init: Sequence[np.ndarray],
                orders: np.ndarray, num_epochs: int, warmup: int, n_epochs: int = 3,
                runner: Optional[lp_backend.GridRunner] = None) -> Dict[str, object]:
    """Seconds per epoch of ONE training run (G = 1): epoch 0 compiles and is not counted, then
    `n_epochs` timed epochs, each ending with a device sync."""
    runner = runner or make_runner(opt, acts, images)
    params, state = runner.start([init])
    steps = orders.shape[1]
    seconds = []
    for epoch in range(n_epochs + 1):
        t0 = time.perf_counter()
        params, state, losses = runner.epoch(params, state, [lr * lr_factor(epoch, num_epochs, warmup)],
                                             orders[epoch][None], epoch * steps)
        runner.sync(losses)
        seconds.append(time.perf_counter() - t0)
    return {"optimizer": opt.name, "first_epoch_s": seconds[0], "epoch_seconds": seconds[1:],
            "last_batch_loss": float(np.asarray(losses)[-1, 0])}


# ---------------------------------------------------------------------------------------------
# choosing and reporting
# ---------------------------------------------------------------------------------------------

def best_run(runs: Sequence[Run]) -> Run:
    """The run with the lowest final training loss (diverged runs count as +inf)."""
    return min(runs, key=lambda r: r.final_loss)


def grid_edge(runs: Sequence[Run]) -> Optional[str]:
    """'low' or 'high' if the best learning rate is the smallest or largest one tried, else None.

    A best value at an edge means the grid may not contain the optimum: the sweep extends it."""
    lrs = sorted(r.lr for r in runs)
    best = best_run(runs)
    if not np.isfinite(best.final_loss) or len(lrs) < 2:
        return "all diverged" if not np.isfinite(best.final_loss) else "single value"
    if best.lr == lrs[0]:
        return "low"
    if best.lr == lrs[-1]:
        return "high"
    return None


def extension(runs: Sequence[Run]) -> List[float]:
    """Learning rates that continue the grid past its edge (the grid's own ratio between neighbours)."""
    lrs = sorted(r.lr for r in runs)
    edge = grid_edge(runs)
    if edge == "low":
        ratio = lrs[1] / lrs[0]
        return [float(f"{lrs[0] / ratio ** k:.3g}") for k in (1, 2)]
    if edge == "high":
        ratio = lrs[-1] / lrs[-2]
        return [float(f"{lrs[-1] * ratio ** k:.3g}") for k in (1, 2)]
    return []


def table(runs: Dict[str, List[Run]], settings: Dict[str, str], timing: Optional[Dict[str, dict]] = None):
    """Per optimizer: final loss at the best LR, the grid check, s/epoch of one run, settings, every LR tried."""
    import pandas as pd
    rows = []
    for name, rs in runs.items():
        b = best_run(rs)
        edge = grid_edge(rs)
        sec = np.median(timing[name]["epoch_seconds"]) if timing and name in timing else math.nan
        rows.append({"optimizer": name, "final train loss": round(b.final_loss, 2) if np.isfinite(b.final_loss) else math.inf,
                     "best lr": b.lr,
                     "best inside grid": "yes" if edge is None else f"NO ({edge} edge)",
                     "s / epoch": round(float(sec), 4),
                     "lr grid (final loss)": ", ".join(
                         f"{r.lr:g}:{'div' if r.diverged else format(r.final_loss, '.1f')}"
                         for r in sorted(rs, key=lambda r: r.lr)),
                     "settings": settings.get(name, "")})
    return pd.DataFrame(rows).set_index("optimizer").sort_values("final train loss")


def headline(runs: Dict[str, List[Run]]) -> Dict[str, str]:
    """The three optimizers that get extra seeds: LocoProp-M, the best first-order, the best second-order."""
    first = min((n for n in runs if n in FIRST_ORDER), key=lambda n: best_run(runs[n]).final_loss)
    second = min((n for n in runs if n in SECOND_ORDER), key=lambda n: best_run(runs[n]).final_loss)
    return {"locoprop": "LocoProp-M", "first_order": first, "second_order": second}


def paper_claims(final: Dict[str, float], seconds: Dict[str, float]) -> Dict[str, float]:
    """The paper's claim as measured ratios and yes/no checks (1.0 / 0.0), from best final losses.

    - beats first order: LocoProp-M's final loss below the best first-order baseline (any setting);
    - near second order: within 10% of the better of Shampoo and K-FAC (ratio <= 1.10);
    - faster: LocoProp-M's seconds per epoch below both Shampoo's and K-FAC's.
    """
    loco = final["LocoProp-M"]
    first = min(v for n, v in final.items() if n in FIRST_ORDER)
    second = min(final[n] for n in SECOND_ORDER)
    ratio_first, ratio_second = loco / first, loco / second
    ratio_time = seconds["LocoProp-M"] / min(seconds[n] for n in SECOND_ORDER)
    return {
        "ratio_locoprop_m_to_best_first_order": ratio_first,
        "ratio_locoprop_m_to_best_second_order": ratio_second,
        "ratio_epoch_time_locoprop_m_to_faster_second_order": ratio_time,
        "claim_beats_first_order": float(ratio_first < 1.0),
        "claim_within_10pct_of_second_order": float(ratio_second <= 1.10),
        "claim_faster_than_second_order": float(ratio_time < 1.0),
    }


def seed_claims(seed_losses: Dict[str, List[float]]) -> Dict[str, float]:
    """Per-seed checks for the headline trio {'locoprop','first_order','second_order'}: on how many
    seeds LocoProp-M beats the best first-order and is within 10% of the best second-order."""
    lo, fo, so = (np.asarray(seed_losses[k], float) for k in ("locoprop", "first_order", "second_order"))
    return {"seeds": float(len(lo)),
            "seeds_beats_first_order": float(np.sum(lo < fo)),
            "seeds_within_10pct_of_second_order": float(np.sum(lo <= 1.10 * so))}


__all__ = ["Run", "train_grid", "time_epochs", "best_run", "grid_edge", "extension", "table", "headline",
           "paper_claims", "seed_claims", "lr_factor", "trained_epochs", "LOCOPROP"]
