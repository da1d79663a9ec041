"""The notebook's long runs as resumable pieces, shared by the notebook and the stage command (mo_full.py).

Each piece is a function of the profile's parameters and the data; its result (JSON, plus files such as a
checkpoint) is written atomically into a stage folder (labkit.stage_dir("05_monai", profile)). A piece
whose JSON is there is loaded, not recomputed, so the stage command can run the long work in commands of a
few minutes each and the notebook (full profile) then loads the pieces. The smoke profile computes every
piece where the notebook asks for it (`Stage(folder, reuse=False)`).

Pieces: race_fast, race_regular (time to a validation Dice target, mo_train.race), main (the UNet trained
by mo_ddp.launch on every GPU of the machine: checkpoint + history), unetr (UNETR trained and scored on the
test images; its weights are too large to keep), ddp_compare (1 vs 2 processes, needs 2 GPUs).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, Optional

FOLDER = "05_monai"
PIECES_1GPU = ("race_fast", "race_regular", "main", "unetr")
PIECES_2GPU = ("ddp_compare",)


def params(profile: str) -> dict:
    """The notebook's knobs per profile ("tiny": a few-second CPU test of the stage machinery)."""
    pick = lambda **v: v[profile]
    if profile not in ("smoke", "full", "tiny"):
        raise ValueError(f"profile={profile!r}; use 'smoke', 'full' or 'tiny'")
    return dict(
        file_mm=pick(tiny=6.0, smoke=3.0, full=1.5),       # spacing the subjects are written at (= training spacing)
        pixdim=pick(tiny=6.0, smoke=3.0, full=1.5),        # spacing the transforms resample to
        roi=pick(tiny=16, smoke=32, full=96),              # patch / sliding-window size (voxels per side)
        n_train=pick(tiny=2, smoke=6, full=24), n_val=pick(tiny=1, smoke=2, full=4),
        n_test=pick(tiny=1, smoke=2, full=6),
        n_pool=pick(tiny=1, smoke=3, full=4),              # unlabelled images the MONAI Label annotator can correct
        size=pick(tiny="tiny", smoke="tiny", full="full"),  # network size
        num_samples=pick(tiny=2, smoke=2, full=4), batch_size=2,
        compare_epochs=pick(tiny=2, smoke=3, full=120),    # at most this many epochs per recipe in the time-to-Dice race
        # and at most this many training seconds per recipe, the same for both (if only one reaches the target, the
        # other's elapsed time gives a bound); 2 x H200, 2026-12-01: regular reached 0.85 at 235 s, fast not in 150 s
        race_budget_s=pick(tiny=None, smoke=None, full={"fast": 300, "regular": 300}),
        # the DDP training run (full: 2,400 steps; the CPU probe at 3 mm was still improving at 600, see notes)
        main_epochs=pick(tiny=2, smoke=6, full=200),
        main_budget_s=pick(tiny=None, smoke=None, full=300),   # and at most this many training seconds
        # SGD (the fast recipe's optimiser) needs more epochs than the smoke budget has: smoke trains with Adam
        main_opt=pick(tiny=dict(optimizer="adam", lr=3e-3), smoke=dict(optimizer="adam", lr=3e-3), full={}),
        val_every=pick(tiny=1, smoke=3, full=20),
        unetr_epochs=pick(tiny=1, smoke=2, full=30),
        unetr_budget_s=pick(tiny=None, smoke=None, full=150),  # 30 epochs took 88 s on one H200 (2026-12-01, after the blur fix)
        target=pick(tiny=0.0, smoke=0.35, full=0.85),      # validation mean GM/WM Dice target for "time to target"
        # epochs of the 1- vs 2-GPU runs (full: a whole cosine schedule, so both Dice are of trained networks)
        ddp_epochs=pick(tiny=1, smoke=2, full=60),    # full: its 4 runs (expected_seconds) fit one 480 s piece
        al_rounds=pick(tiny=1, smoke=1, full=2), al_epochs=pick(tiny=1, smoke=3, full=10),
        workers=pick(tiny=0, smoke=1, full=4),             # DataLoader worker processes for the regular recipe
        cache_workers=pick(tiny=1, smoke=1, full=8),
    )


def base_config(K: dict, seed: int) -> dict:
    """mo_train.Config fields shared by every run of the notebook."""
    return dict(net="unet", size=K["size"], pixdim=K["pixdim"], roi=K["roi"], num_samples=K["num_samples"],
                batch_size=K["batch_size"], epochs=K["compare_epochs"], val_every=1 if K["size"] == "tiny" else 2,
                num_workers=K["workers"], cache_workers=K["cache_workers"], dice_target=K["target"], seed=seed,
                synth=True)


def data(K: dict, cache: Path, seed: int) -> dict:
    """Write (or re-use) the subjects: synthetic train/val, real-intensity test/pool, the template's real T1."""
    import mo_data
    tpl = mo_data.resample_template(mo_data.load_mni152(), K["file_mm"])
    workers = min(8, os.cpu_count() or 1) if K["file_mm"] <= 1.5 else 1
    synth = mo_data.write_subjects(tpl, Path(cache) / "synth", K["n_train"] + K["n_val"], seed=seed,
                                   workers=workers, kind="synth")
    real = mo_data.write_subjects(tpl, Path(cache) / "real", K["n_test"] + K["n_pool"], seed=seed + 1000,
                                  workers=workers, kind="real")
    real_t1 = mo_data.write_template_item(tpl, Path(cache) / "real")
    train, val, _ = mo_data.split(synth, K["n_train"], K["n_val"])
    return {"tpl": tpl, "train": train, "val": val, "test": real[:K["n_test"]], "pool": real[K["n_test"]:],
            "real_t1": real_t1}


class NotStarted(Exception):
    """A piece was not started: its expected time exceeds the budget left."""


class Stage:
    """Finished pieces in `folder`. A piece is <name>.json (written last, atomically: it marks the piece done)
    and, if the piece writes files, the folder <name>/. reuse=False (the smoke profile) computes every piece
    asked for, still keeping its files there. A piece function marked `resumable` keeps its work folder
    (.<name>.partial) across a failed or cut-short attempt, to pick up the parts it finished (ddp_piece)."""

    def __init__(self, folder: Path, budget_s: Optional[float] = None, log: Callable = print, reuse: bool = True):
        self.folder, self.reuse = Path(folder), reuse
        self.folder.mkdir(parents=True, exist_ok=True)
        self.budget_s, self.log, self.t0, self.computed = budget_s, log, time.perf_counter(), []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def done(self, name: str) -> bool:
        return self.reuse and (self.folder / f"{name}.json").exists()

    def files(self, name: str) -> Path:
        return self.folder / name

    def piece(self, name: str, fn: Callable[[Path], dict], expect_s: float = 0.0) -> dict:
        """The piece's result: loaded if done, else fn(work_dir) computed (and kept, with the files fn wrote
        into work_dir, when there is a stage folder). Raises NotStarted when expect_s exceeds the budget left."""
        if self.done(name):
            self.log(f"[stage] {name}: loaded from {self.folder}")
            return json.loads((self.folder / f"{name}.json").read_text())
        if self.budget_s is not None and self.elapsed() + expect_s > self.budget_s:
            raise NotStarted(f"{name}: expected {expect_s:.0f} s, {self.budget_s - self.elapsed():.0f} s of the budget left")
        work = self.folder / f".{name}.partial"
        if not (self.reuse and getattr(fn, "resumable", False)):   # a resumable piece resumes its last attempt
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        self.log(f"[stage] {name}: computing (expected {expect_s:.0f} s)")
        res = fn(work)
        res = {**res, "piece_seconds": time.perf_counter() - t}
        final = self.files(name)
        shutil.rmtree(final, ignore_errors=True)
        if any(work.iterdir()):
            work.rename(final)
        else:
            work.rmdir()
        text = json.dumps(res, default=str)
        from labkit.paths import atomic_write_text
        atomic_write_text(self.folder / f"{name}.json", text)
        self.computed.append(name)
        self.log(f"[stage] {name}: done in {res['piece_seconds']:.0f} s")
        return json.loads(text)     # what a later load gives (JSON types), so both paths run the same code


# ---- the pieces -------------------------------------------------------------------------------------------

def race_piece(recipe: str, K: dict, D: dict, device: str, seed: int) -> Callable[[Path], dict]:
    """One recipe's time to the validation Dice target (mo_train.race), cache fill included."""
    def run(_work: Path) -> dict:
        import torch
        import labkit
        import mo_train
        cfg = mo_train.Config(**{**base_config(K, seed), "recipe": recipe})
        labkit.seed_everything(seed)
        budget = K["race_budget_s"][recipe] if K["race_budget_s"] else None
        res = mo_train.race({recipe: cfg}, D["train"], D["val"], device, K["target"], K["compare_epochs"], budget)
        return {**res[recipe], "config": asdict(cfg), "time_budget_s": budget, "machine": machine(),
                "torch_threads": torch.get_num_threads()}
    return run


def main_config(K: dict, seed: int):
    import mo_train
    return mo_train.Config(**{**base_config(K, seed), "recipe": "fast", "epochs": K["main_epochs"],
                              "val_every": K["val_every"], "time_budget_s": K["main_budget_s"], **K["main_opt"]})


def main_piece(K: dict, D: dict, seed: int, nproc: int) -> Callable[[Path], dict]:
    """The main UNet, trained under torchrun on `nproc` processes (one per GPU); the checkpoint is kept."""
    def run(work: Path) -> dict:
        import mo_ddp
        t = time.perf_counter()
        hist, ckpt, log = mo_ddp.launch(main_config(K, seed), D["train"], D["val"], work / "ddp", nproc=nproc)
        shutil.move(str(ckpt), str(work / "checkpoint.pt"))
        shutil.rmtree(work / "ddp")
        return {"history": asdict(hist), "seconds": time.perf_counter() - t, "log_tail": log.strip().splitlines()[-1],
                "nproc": nproc, "machine": machine()}
    return run


def unetr_config(K: dict, seed: int, profile: str):
    import mo_train
    return mo_train.Config(**{**base_config(K, seed), "recipe": "fast", "net": "unetr", "epochs": K["unetr_epochs"],
                              "val_every": K["unetr_epochs"], "lr": 2e-4 if profile == "full" else 1e-3,
                              "optimizer": "adamw", "time_budget_s": K["unetr_budget_s"]})


def unetr_piece(K: dict, D: dict, device: str, seed: int, profile: str) -> Callable[[Path], dict]:
    """UNETR trained, then its Dice (GM, WM) on each test image (the real T1 and the subjects)."""
    def run(_work: Path) -> dict:
        import labkit
        import mo_train
        import mo_transforms as T
        labkit.seed_everything(seed)
        cfg = unetr_config(K, seed, profile)
        net, hist = mo_train.fit(cfg, D["train"], D["val"], device, progress=labkit.progress)
        items = [D["real_t1"]] + list(D["test"])
        dice = {it["id"]: [float(v) for v in mo_train.dice_per_class(
            mo_train.predict(net, d["image"], K["roi"], device), d["label"][0])]
            for it, d in ((it, T.val_transforms(K["pixdim"])(it)) for it in items)}
        return {"test_dice": dice, "history": asdict(hist), "n_params": mo_train.n_params(net),
                "config": asdict(cfg), "machine": machine()}
    return run


def ddp_piece(K: dict, D: dict, seed: int, nprocs=(1, 2), timeout: float = 1200) -> Callable[[Path], dict]:
    """The fast recipe with 1 and 2 processes (one per GPU) at the same global batch: epoch times, both Dice."""
    def run(work: Path) -> dict:
        import mo_ddp
        import mo_train
        cfg = mo_train.Config(**{**base_config(K, seed), "recipe": "fast", "epochs": K["ddp_epochs"],
                                 "val_every": K["ddp_epochs"]})
        res = mo_ddp.compare_world_sizes(cfg, D["train"], D["val"], work / "runs", nprocs=tuple(nprocs),
                                         global_batch=K["batch_size"], timeout=timeout,
                                         sync_bn_run=K["size"] == "full",   # the GPU run: per-process BN or not
                                         seed_run=K["size"] == "full")      # and the seed-to-seed difference
        shutil.rmtree(work / "runs")    # checkpoints of a timing run: not kept
        res["runs"] = {str(k): v for k, v in res["runs"].items()}
        return {**res, "config": asdict(cfg), "machine": machine()}
    run.resumable = True    # its runs are kept in the work folder as they finish (mo_ddp._launch_once)
    return run


def machine() -> dict:
    import platform
    import torch
    n = torch.cuda.device_count()
    return {"gpu": torch.cuda.get_device_name(0) if n else None, "gpu_count": n, "cpu_count": os.cpu_count(),
            "host": platform.node(), "torch": torch.__version__,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def expected_seconds(name: str, K: dict, device: str, nproc: int = 1) -> float:
    """A piece's expected time: for the full profile on CUDA from the H200 anchor (fast 0.905 s/epoch, regular
    6.43 s/epoch, mo_fast_bench 2026-11-30; validation and cache fill estimated on top), elsewhere 0 (not
    estimated: the tiny/smoke pieces take seconds to minutes on a CPU)."""
    if not device.startswith("cuda") or K["size"] != "full":
        return 0.0
    fast, regular, val, fill = 0.905, 6.43, 2.0, 40.0
    if name in ("race_fast", "race_regular"):
        r = name.split("_")[1]
        per = (fast if r == "fast" else regular) + val
        cap = K["compare_epochs"] * per
        return fill + min(cap, (K["race_budget_s"] or {}).get(r, cap) + per)
    if name == "main":
        train = K["main_epochs"] * fast + (K["main_epochs"] // K["val_every"]) * val
        return 20 + fill + min(train, (K["main_budget_s"] or train) + fast + val)
    if name == "unetr":     # UNETR epoch: guessed at 4 UNet epochs; its time budget caps the piece anyway
        train = K["unetr_epochs"] * 4 * fast
        return fill + min(train, (K["unetr_budget_s"] or train) + 4 * fast) + 7 * val
    if name == "ddp_compare":   # 1 process (two seeds), 2 processes, and 2 with SyncBatchNorm: bounded by 4 one-process runs
        return 4 * (20 + fill + K["ddp_epochs"] * fast + val)
    raise ValueError(f"unknown piece {name!r}")
