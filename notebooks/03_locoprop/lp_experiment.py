"""The whole comparison as named pieces: grids, grid extensions, extra seeds, timing, the cosine probe.

Each piece is a function of the configuration (and of pieces before it) whose result is a small JSON
file. With a stage folder (`labkit.stage_dir(FOLDER, "full")`) a finished piece is written atomically
and later calls load it instead of recomputing: the stage command `lp_full.py` computes the pieces
within a time budget, and the notebook calls the same functions and finds them there. Without a stage
folder (smoke profile, tests) everything is computed in place.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

import lp_data
import lp_model
import lp_train
from lp_optimizers import FIRST_ORDER, key, make_optimizer
from lp_train import Run

FOLDER = "03_locoprop"


@dataclass(frozen=True)
class Config:
    widths: tuple
    source: str
    num_epochs: int              # the source's num_epochs: num_epochs - 1 epochs are trained
    warmup: int
    grids: Dict[str, tuple]
    refresh: int                 # Shampoo / K-FAC inverses every `refresh` steps
    eval_every: int
    extra_seeds: tuple = (1, 2)  # for the headline trio
    probe_every: int = 1         # cosine probe: every this many epochs (first batch of the epoch)
    probe_layer: int = 1
    batch: int = 1000
    max_extensions: int = 2      # grid extensions per optimizer when the best LR is at an edge
    time_epochs: int = 3
    n_images: Optional[int] = None   # use only the first n images (tiny test profile)
    hidden: str = "tanh"

    @property
    def acts(self):
        return lp_model.layer_activations(self.widths, self.hidden)

    def options(self, name: str, seed: int = 0) -> dict:
        if name == "Shampoo":
            return {"refresh_every": self.refresh}
        if name == "K-FAC":
            return {"refresh_every": self.refresh, "seed": seed}
        return {}


def grid(lo: float, n: int) -> tuple:
    """n half-decade values from lo: 1e-3 -> (1e-3, 3e-3, 1e-2, ...)."""
    out, v = [], lo
    for _ in range(n):
        out.append(float(f"{v:.3g}"))
        v = v * 3 if str(f"{v:.3g}").lstrip("0.").startswith("1") else v * 10 / 3
    return tuple(out)


SMOKE = Config(
    widths=(784, 128, 64, 32, 16, 32, 64, 128, 784), source="mnist_5k", num_epochs=10, warmup=1,
    grids={"SGD": grid(0.03, 3), "Momentum": grid(1e-3, 3), "Momentum (source)": grid(3e-4, 3),
           "AdaGrad": grid(0.03, 3), "AdaGrad (source)": grid(0.03, 3),
           "RMSProp": grid(3e-3, 3), "RMSProp (source)": grid(3e-5, 3),
           "Adam": grid(3e-3, 3), "Adam (source)": grid(3e-3, 3),
           "Shampoo": grid(1e-3, 3), "K-FAC": grid(0.03, 3),
           "LocoProp-S": grid(3e-4, 3), "LocoProp-M": grid(3e-4, 3)},
    refresh=5, eval_every=9, probe_every=1, time_epochs=1, max_extensions=1)

FULL = Config(
    widths=lp_model.ARCH, source="fashion_mnist", num_epochs=100, warmup=5,
    grids={"SGD": grid(0.03, 4), "Momentum": grid(1e-3, 4), "Momentum (source)": grid(3e-6, 4),
           "AdaGrad": grid(3e-3, 4), "AdaGrad (source)": grid(3e-3, 4),
           "RMSProp": grid(1e-4, 4), "RMSProp (source)": grid(1e-6, 4),
           "Adam": grid(1e-4, 4), "Adam (source)": grid(1e-4, 4),
           "Shampoo": grid(3e-4, 4), "K-FAC": grid(0.03, 4),
           "LocoProp-S": grid(1e-4, 4), "LocoProp-M": grid(3e-5, 4)},
    refresh=20, eval_every=3, probe_every=3, time_epochs=3)

# CPU test of the stage machinery at a reduced size (same code path as FULL)
TINY = replace(SMOKE, widths=(784, 32, 16, 8, 16, 32, 784), num_epochs=4, warmup=1, n_images=400, batch=100,
               grids={n: g[:2] for n, g in SMOKE.grids.items()}, max_extensions=1, time_epochs=1, probe_every=2)

PROFILES = {"smoke": SMOKE, "full": FULL, "tiny": TINY}


class Stage:
    """Finished pieces as JSON files in `folder` (None: compute everything, keep nothing)."""

    def __init__(self, folder: Optional[Path] = None, budget_s: Optional[float] = None, log: Callable = print):
        self.folder = Path(folder) if folder else None
        self.budget_s, self.log = budget_s, log
        self.t0 = time.perf_counter()
        self.computed: List[str] = []
        self.skipped: List[str] = []
        self.done: List[tuple] = []   # (work, seconds) of pieces computed by this process

    def path(self, name: str) -> Optional[Path]:
        return self.folder / f"{name}.json" if self.folder else None

    def has(self, name: str) -> bool:
        return bool(self.folder) and self.path(name).exists()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def _history(self) -> List[tuple]:
        """(work, seconds, kind) of every stored piece: the budget's cost model, also across commands."""
        out = list(self.done)
        if self.folder:
            for p in self.folder.glob("*.json"):
                d = json.loads(p.read_text())
                if "work" in d and p.stem not in self.computed:
                    out.append((d["work"], d["seconds"], d.get("kind", "")))
        return out

    def estimate(self, work: float, kind: str = "") -> float:
        """Seconds for a piece of `work` units: c + r * work, c = the cheapest piece seen (compilation and
        fixed costs), r = the largest seconds-per-unit beyond c among pieces of the same kind (optimizer),
        or twice the largest of any kind for a kind not seen yet (conservative); 0 if nothing was seen."""
        hist = self._history()
        if not hist:
            return 0.0
        c = min(s for _, s, _ in hist)
        rate = lambda hs: max(max(s - c, 0.0) / max(w, 1e-9) for w, s, _ in hs)   # noqa: E731
        same = [h for h in hist if h[2] == kind]
        return c + (rate(same) if same else 2.0 * rate(hist)) * work

    def piece(self, name: str, compute: Callable[[], dict], work: float = 1.0, kind: str = "") -> Optional[dict]:
        """Load piece `name`, or compute it (if the budget allows) and store it. None if skipped."""
        if self.has(name):
            return json.loads(self.path(name).read_text())
        if self.budget_s is not None:
            guess = self.estimate(work, kind)
            left = self.budget_s - self.elapsed()
            if guess > left:
                self.skipped.append(name)
                self.log(f"skip {name}: expected {guess:.0f} s, {left:.0f} s of budget left")
                return None
        if self.budget_s is not None:
            self.log(f"start {name} (expected {guess:.0f} s)")
        t0 = time.perf_counter()
        result = compute()
        result["seconds"] = time.perf_counter() - t0
        result["work"], result["kind"] = float(work), kind
        self.done.append((float(work), result["seconds"], kind))
        if self.folder:
            from labkit.paths import atomic_write_text
            atomic_write_text(self.path(name), json.dumps(result))
        self.computed.append(name)
        self.log(f"done {name} in {result['seconds']:.1f} s (elapsed {self.elapsed():.0f} s)")
        return result


# relative cost of one member-step (units: one Adam step), measured on the CPU under JAX at full size
# (this 2-core CPU, 2.8 M parameters, batch 1000: Adam 1.1 s, Shampoo 2.9 s without its refresh, LocoProp-S/M 9.8 / 12 s)
STEP_COST = {**{n: 1.0 for n in FIRST_ORDER}, "Shampoo": 4.0, "K-FAC": 4.0, "LocoProp-S": 9.0, "LocoProp-M": 10.0}


class Experiment:
    """The pieces of one profile over one data set."""

    def __init__(self, cfg: Config, stage: Optional[Stage] = None, seed: int = 0, images: Optional[np.ndarray] = None,
                 progress: Optional[Callable] = None):
        self.cfg, self.stage, self.seed = cfg, stage or Stage(None), seed
        if images is None:
            images = lp_data.load_images(cfg.source)
        self.images = images[: cfg.n_images] if cfg.n_images else images
        self.progress = progress
        self.steps = len(self.images) // cfg.batch
        self.epochs = lp_train.trained_epochs(cfg.num_epochs)
        self._opts: Dict[tuple, tuple] = {}

    # --- ingredients shared by every run of a seed ------------------------------------------------
    def orders(self, seed: int) -> np.ndarray:
        return lp_data.epoch_orders(len(self.images), self.epochs + 1, self.cfg.batch, seed)

    def init(self, seed: int):
        return lp_model.glorot_init(self.cfg.widths, seed)

    def optimizer(self, name: str, seed: int = 0):
        """The optimizer `name` and its runner, built once per experiment (its step compiles once per shape)."""
        if (name, seed) not in self._opts:
            opt = make_optimizer(name, self.cfg.acts, **self.cfg.options(name, seed))
            self._opts[name, seed] = (opt, lp_train.make_runner(opt, self.cfg.acts, self.images))
        return self._opts[name, seed]

    def work(self, name: str, members: int, epochs: Optional[int] = None) -> float:
        return STEP_COST[name] * members * self.steps * (self.epochs if epochs is None else epochs)

    # --- pieces ------------------------------------------------------------------------------------
    def _grid(self, name: str, lrs, seeds) -> dict:
        opt, runner = self.optimizer(name, self.seed)
        runs = lp_train.train_grid(opt, self.cfg.acts, self.images, list(lrs), [self.init(s) for s in seeds],
                                   [self.orders(s) for s in seeds], self.cfg.num_epochs, self.cfg.warmup,
                                   self.cfg.eval_every, seeds=seeds, runner=runner)
        return {"runs": [r.to_dict() for r in runs], "settings": opt.settings}

    def grid(self, name: str) -> Optional[Dict]:
        """All runs of `name` at seed 0: its grid, extended while the best LR sits at an edge."""
        lrs = list(self.cfg.grids[name])
        piece = self.stage.piece(f"grid_{key(name)}_s{self.seed}",
                                 lambda: self._grid(name, lrs, [self.seed] * len(lrs)), self.work(name, len(lrs)), key(name))
        if piece is None:
            return None
        runs = [Run.from_dict(d) for d in piece["runs"]]
        settings = piece["settings"]
        for k in range(self.cfg.max_extensions):
            more = lp_train.extension(runs)
            if not more:
                break
            ext = self.stage.piece(f"grid_{key(name)}_s{self.seed}_ext{k}",
                                   lambda: self._grid(name, more, [self.seed] * len(more)), self.work(name, len(more)),
                                   key(name))
            if ext is None:
                return None
            runs += [Run.from_dict(d) for d in ext["runs"]]
        return {"runs": runs, "settings": settings}

    def sweep(self, names=None) -> Optional[Dict[str, dict]]:
        """grid() for every optimizer of the configuration; None if any is missing (budget)."""
        names = list(self.cfg.grids) if names is None else names
        out = {}
        bar = self.progress(total=len(names), desc="LR grids") if self.progress else None
        for name in names:
            g = self.grid(name)
            if bar:
                bar.update(1)
            if g is None:
                return None
            out[name] = g
        if bar:
            bar.close()
        return out

    def seeds(self, name: str, lr: float) -> Optional[List[Run]]:
        """`name` at `lr` for the extra seeds (new initialisation and data order each)."""
        seeds = list(self.cfg.extra_seeds)
        piece = self.stage.piece(f"seeds_{key(name)}_lr{lr:g}",
                                 lambda: self._grid(name, [lr] * len(seeds), seeds), self.work(name, len(seeds)), key(name))
        return None if piece is None else [Run.from_dict(d) for d in piece["runs"]]

    def timing(self, name: str, lr: float) -> Optional[dict]:
        """Seconds per epoch of one run of `name` (no grid batching), after a compile epoch."""
        def compute():
            opt, runner = self.optimizer(name, self.seed)
            return lp_train.time_epochs(opt, self.cfg.acts, self.images, lr, self.init(self.seed), self.orders(self.seed),
                                        self.cfg.num_epochs, self.cfg.warmup, self.cfg.time_epochs, runner=runner)
        return self.stage.piece(f"time_{key(name)}", compute, self.work(name, 1, self.cfg.time_epochs + 1), key(name))

    def probe(self, lr: float) -> Optional[dict]:
        """LocoProp-M at `lr` with the cosine probe (lp_analysis)."""
        import lp_analysis

        def compute():
            opt, runner = self.optimizer("LocoProp-M", self.seed)
            return lp_analysis.probe_run(opt, self.cfg.acts, self.images, lr, self.init(self.seed),
                                         self.orders(self.seed), self.cfg.num_epochs, self.cfg.warmup,
                                         self.cfg.probe_layer, self.cfg.probe_every, seed=self.seed, runner=runner)
        return self.stage.piece(f"probe_locoprop_m_lr{lr:g}", compute, self.work("LocoProp-M", 1) * 1.5, "locoprop_m")

    def pieces_left(self) -> int:
        """How many pieces the stage folder still lacks (a lower bound while some grids are missing)."""
        def load(name):
            return json.loads(self.stage.path(name).read_text()) if self.stage.has(name) else None
        n, runs = 0, {}
        names = list(self.cfg.grids)
        for name in names:
            base = load(f"grid_{key(name)}_s{self.seed}")
            if base is None:
                n += 1
                continue
            rs = [Run.from_dict(d) for d in base["runs"]]
            for k in range(self.cfg.max_extensions):
                if not lp_train.extension(rs):
                    break
                ext = load(f"grid_{key(name)}_s{self.seed}_ext{k}")
                if ext is None:
                    n, rs = n + 1, None
                    break
                rs += [Run.from_dict(d) for d in ext["runs"]]
            if rs is not None:
                runs[name] = rs
        if len(runs) < len(names):
            return n + 3 + len(names) + 1      # + seeds of the trio, timing of each, the probe
        best = {n_: lp_train.best_run(r) for n_, r in runs.items()}
        names = [f"seeds_{key(nm)}_lr{best[nm].lr:g}" for nm in lp_train.headline(runs).values()]
        names += [f"time_{key(nm)}" for nm in runs] + [f"probe_locoprop_m_lr{best['LocoProp-M'].lr:g}"]
        return n + sum(not self.stage.has(nm) for nm in names)

    # --- everything ------------------------------------------------------------------------------------
    def run_all(self) -> Optional[dict]:
        """Every piece in order; None as soon as one is missing (out of budget)."""
        sweep = self.sweep()
        if sweep is None:
            return None
        runs = {n: g["runs"] for n, g in sweep.items()}
        best = {n: lp_train.best_run(r) for n, r in runs.items()}
        trio = lp_train.headline(runs)
        seed_runs = {}
        for role, name in trio.items():
            extra = self.seeds(name, best[name].lr)
            if extra is None:
                return None
            seed_runs[role] = [best[name]] + extra
        timing = {}
        for name in runs:
            t = self.timing(name, best[name].lr)
            if t is None:
                return None
            timing[name] = t
        probe = self.probe(best["LocoProp-M"].lr)
        if probe is None:
            return None
        return {"runs": runs, "settings": {n: g["settings"] for n, g in sweep.items()}, "best": best,
                "trio": trio, "seed_runs": seed_runs, "timing": timing, "probe": probe}
