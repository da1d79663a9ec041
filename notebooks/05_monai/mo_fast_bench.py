"""The two training recipes measured on their own, without the rest of the notebook.

    python mo_fast_bench.py --mode time_to_dice [--target 0.85] [--max-epochs 300] [--out ttd.json]
        [--notebook-data] [--optimizer adam --lr 1e-3]       # the notebook's race data; another optimiser
    python mo_fast_bench.py --mode ddp [--nproc 1 2] [--epochs 6] [--out ddp.json]
    python mo_fast_bench.py --mode epoch [--out bench.json]          # per-epoch time of recipe variants
    python mo_fast_bench.py --mode transforms [--epochs 3]           # where a fast-recipe epoch's data time goes
    python mo_fast_bench.py --mode steps [--epochs 3]                # the training step alone, each recipe
    python mo_fast_bench.py --mode profile [--recipes fast]          # torch.profiler over a recipe's epochs
    python mo_fast_bench.py --mode merge --inputs fast.json regular.json --out ttd.json   # --recipes runs
    add --tiny for a CPU-sized check (MNI152 at 6 mm, tiny UNet, 16^3 patches, low target)

Data and model are the notebook's full profile: SynthSeg-style synthetic subjects from the MNI152 labels at
1 mm (24 train, 4 validation, also synthetic), resampled to 1.5 mm; UNet 16..256; 96^3 patches x4; batch 2.
time_to_dice: the fast recipe, then the regular one, each until the validation mean GM/WM Dice reaches the
  target (or max epochs, or --time-budget-s), validating every epoch; seconds to target include the cache
  fill, as MONAI's fast-training guide counts them. Also the per-epoch ratio and the precision/optimiser of
  each recipe. If only one recipe reaches the target, the other run's elapsed time bounds the speed-up
  (mo_train.race_speedups: fast_vs_regular_time_to_dice_speedup_lower_bound / _upper_bound).
transforms: the fast recipe's pipeline on the device, item by item: the cached (deterministic) part once, then
  each transform from the first random one on (RandSynthd, ScalePercentilesd, the crops, RandAffined, ...) timed
  with the device synchronised around it, over --epochs passes of the training subjects; mean ms per item of
  each, and their sum per epoch (to set beside an epoch's time from --mode epoch).
steps: the training step alone (mo_train.train_step: same network, loss, optimiser, precision and memory format
  as each recipe) on random batches of the recipe's shape (batch_size x num_samples patches), no data pipeline:
  ms per step and per epoch-worth of steps, beside the epoch time --mode epoch gives.
profile: torch.profiler (CPU and CUDA) over mo_train.measure_epoch_time of each --recipes recipe (--epochs timed
  epochs after a warm-up one, the cache fill included): the ops with the most self CPU time and the most device
  time, as tables (a host-side stall - a sync, the data thread holding the GIL - shows as CPU time, not GPU time).
ddp: the fast recipe under torchrun with 1 and N processes (one per GPU), same global batch, same epochs;
  epoch time of each, the speed-up, and the validation Dice of both runs.
Results (JSON) name the machine: GPU model and count, CPU cores, torch version.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1] / "shared"))   # labkit, where the repository is not installed


from mo_stages import machine  # noqa: E402  (GPU model and count, cores, host, torch, date: one place)


def data(tiny: bool, n_train: int, n_val: int, root: Path):
    """(train items, validation items) of synthetic subjects, written once under `root`."""
    import mo_data
    mm = 6.0 if tiny else 1.0
    tpl = mo_data.resample_template(mo_data.load_mni152(), mm)
    workers = 1 if tiny else min(8, os.cpu_count() or 1)
    items = mo_data.write_subjects(tpl, root / f"synth_{mm:g}mm", n_train + n_val, seed=0, workers=workers,
                                   kind="synth")
    return items[:n_train], items[n_train:]


def notebook_data(tiny: bool, root: Path):
    """(train items, validation items, Config fields) exactly as the notebook's race uses them (mo_stages: the
    full or tiny profile's subjects, seed 0), so a variant's time to Dice sits beside the notebook's."""
    import mo_stages as S
    K = S.params("tiny" if tiny else "full")
    D = S.data(K, root / f"notebook_{'tiny' if tiny else 'full'}", 0)
    return D["train"], D["val"], S.base_config(K, 0)


def base_config(tiny: bool) -> dict:
    if tiny:
        return dict(net="unet", size="tiny", pixdim=6.0, roi=16, num_samples=2, batch_size=2, num_workers=0,
                    cache_workers=1, seed=0, synth=True)
    return dict(net="unet", size="full", pixdim=1.5, roi=96, num_samples=4, batch_size=2, num_workers=4,
                cache_workers=8, seed=0, synth=True)


def time_to_dice(a, dev: str, train, val) -> dict:
    import mo_train
    base = {**(a.base or base_config(a.tiny)), **{k: v for k, v in (("optimizer", a.optimizer), ("lr", a.lr)) if v is not None}}
    cfgs = {r: mo_train.Config(recipe=r, **base) for r in ("regular", "fast")}
    res = {}
    for r in a.recipes:      # fast first by default: its time bounds what the regular run has to be compared with
        res.update(mo_train.race({r: cfgs[r]}, train, val, dev, a.target, a.max_epochs, a.time_budget_s))
        x = res[r]
        print(f"{r}: {x['epochs_run']} epochs, {x['epoch_s']:.3f} s/epoch, cache fill {x['setup_s']:.1f} s, "
              f"time to Dice {a.target}: {x['time_to_target_s']} s (stopped by {x['stopped_by']} after "
              f"{x['elapsed_s']:.0f} s), final val Dice {x['final_val_dice']}, "
              f"threshold baseline on the same volumes {x['val_threshold_baseline']}", flush=True)
    out = {"mode": "time_to_dice", "target_val_mean_dice_gm_wm": a.target, "max_epochs": a.max_epochs,
           "time_budget_s": a.time_budget_s, "recipes": mo_train.recipe_differences(cfgs["regular"], cfgs["fast"]),
           "config": {r: asdict(cfgs[r]) for r in res}, "results": res}
    return {**out, **speedups(res)}


def speedups(res: dict) -> dict:
    """Per-epoch and time-to-target ratios of regular over fast (when both are there)."""
    if not {"regular", "fast"} <= set(res):
        return {}
    import mo_train
    out = mo_train.race_speedups(res)
    print("fast vs regular:", json.dumps({k: v if v is None else round(v, 2) for k, v in out.items()}))
    return out


def merge(paths) -> dict:
    """One result from time_to_dice runs of single recipes (when one command cannot hold both): they must
    come from the same machine, data and target."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    keys = lambda r: (r["machine"]["host"], r["machine"]["gpu"], r["machine"]["gpu_count"], r["target_val_mean_dice_gm_wm"],
                      r["max_epochs"])
    if len({keys(r) for r in runs}) != 1:
        raise SystemExit(f"cannot merge: the runs differ in host/GPU/target/epoch cap: {[keys(r) for r in runs]}")
    out = {**runs[0], "results": {}, "config": {}, "merged_from": [str(p) for p in paths],
           "time_budget_s": [r["time_budget_s"] for r in runs]}   # a stopping rule of each run, not a condition
    for r in runs:
        out["results"].update(r["results"])
        out["config"].update(r["config"])
    return {**out, **speedups(out["results"])}


def ddp(a, dev: str, train, val) -> dict:
    import mo_ddp
    import mo_train
    cfg = mo_train.Config(recipe="fast", epochs=a.epochs, val_every=a.epochs, **{**base_config(a.tiny),
                                                                                  "batch_size": a.global_batch})
    with tempfile.TemporaryDirectory() as d:
        res = mo_ddp.compare_world_sizes(cfg, train, val, Path(d), nprocs=tuple(a.nproc),
                                         global_batch=a.global_batch, timeout=3000)
    for n, r in res["runs"].items():
        print(f"{n} process(es): {r['epoch_s']:.3f} s/epoch (batch {r['per_process_batch']} per process), "
              f"val Dice {r['val_dice']}", flush=True)
    print("ddp epoch speedup", res.get("epoch_speedup"), "| val mean Dice difference",
          res.get("val_mean_dice_difference"))
    return {"mode": "ddp", "config": asdict(cfg), **res, "ddp_2gpu_epoch_speedup": res.get("epoch_speedup")}


def epoch_variants(a, dev: str, train, val) -> dict:
    """Per-epoch time of the regular recipe and of the fast one with and without its GPU-side fixes."""
    import torch
    import mo_train
    import mo_transforms
    ncpu = os.cpu_count() or 1
    orig_random_part = mo_transforms.random_part

    def cpu_grid_random_part(*args, device=None, **kw):   # the previous code: RandAffined grid built on the CPU
        return orig_random_part(*args, **kw)

    variants = [  # (name, recipe, torch threads in this process, channels_last, affine grid on the GPU, synth)
        ("regular", "regular", min(4, ncpu), False, False, True),
        ("fast_cpu_affine_grid", "fast", min(4, ncpu), True, False, True),
        ("fast_no_channels_last", "fast", min(4, ncpu), False, True, True),
        ("fast_fixed_images", "fast", min(4, ncpu), True, True, False),   # one image per subject, cached: no RandSynthd
        ("fast", "fast", min(4, ncpu), True, True, True),
    ]
    res = {"mode": "epoch", "variants": {}}
    try:
        for name, recipe, threads, cl, gpu_grid, synth in variants:
            torch.set_num_threads(threads)
            mo_transforms.random_part = orig_random_part if gpu_grid else cpu_grid_random_part
            cfg = mo_train.Config(recipe=recipe, channels_last=cl, **{**base_config(a.tiny), "synth": synth})
            torch.manual_seed(0)
            r = mo_train.measure_epoch_time(cfg, train, dev, epochs=a.epochs)
            r.update(threads=threads, channels_last=cl, gpu_affine_grid=gpu_grid, synth=synth)
            res["variants"][name] = r
            print(name, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    finally:
        mo_transforms.random_part = orig_random_part
    v = res["variants"]
    res["fast_vs_regular_epoch_speedup"] = v["regular"]["epoch_seconds"] / v["fast"]["epoch_seconds"]
    print("fast_vs_regular_epoch_speedup", round(res["fast_vs_regular_epoch_speedup"], 2))
    return res


def transform_times(a, dev: str, train, val) -> dict:
    """Mean ms per item of each transform after the cache boundary of the fast recipe's pipeline, on `dev`."""
    import numpy as np
    import torch
    from monai.transforms import RandomizableTrait, Transform, apply_transform
    import mo_transforms as T
    cfg = base_config(a.tiny)
    tfm = T.train_transforms(cfg["pixdim"], cfg["roi"], cfg["num_samples"], device=dev if dev.startswith("cuda") else None,
                             synth=cfg["synth"])
    tfm.set_random_state(seed=0)
    ts = tfm.transforms   # the cache boundary and the cached part exactly as monai.data.CacheDataset computes them
    first = tfm.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    cached = [tfm({"gen": it["gen"], "label": it["label"]} if cfg["synth"] else it, end=first, threading=True)
              for it in train]
    names = [type(t).__name__ for t in ts[first:]]
    ms = {n: [] for n in names}
    for _ in range(a.epochs):
        for item in cached:
            d = dict(item)
            for n, t in zip(names, ts[first:]):
                sync()
                t0 = time.perf_counter()
                d = apply_transform(t, d, map_items=True)
                sync()
                ms[n].append((time.perf_counter() - t0) * 1e3)
    per_item = {n: float(np.mean(v[len(train):] if len(v) > len(train) else v)) for n, v in ms.items()}  # 1st pass warms up
    res = {"mode": "transforms", "items_per_epoch": len(train), "ms_per_item": per_item,
           "data_s_per_epoch": sum(per_item.values()) * len(train) / 1e3, "cached_transforms": [type(t).__name__ for t in ts[:first]]}
    for n, v in per_item.items():
        print(f"{v:9.2f} ms per item  {n}", flush=True)
    print(f"random part: {res['data_s_per_epoch']:.2f} s per epoch of {len(train)} subjects", flush=True)
    return res


def step_times(a, dev: str, train, val) -> dict:
    """ms per training step of each recipe on random batches of its shape (the network alone, no data)."""
    import numpy as np
    import torch
    import mo_train
    base = base_config(a.tiny)
    rows = base["batch_size"] * base["num_samples"]
    steps_per_epoch = -(-len(train) // base["batch_size"])
    g = torch.Generator().manual_seed(0)
    x = torch.rand((rows, 1) + (base["roi"],) * 3, generator=g)
    y = torch.randint(0, mo_train.NUM_CLASSES, (rows, 1) + (base["roi"],) * 3, generator=g)
    cuda = dev.startswith("cuda")
    res = {"mode": "steps", "rows_per_step": rows, "steps_per_epoch": steps_per_epoch, "recipes": {}}
    for recipe in ("fast", "regular"):
        cfg = mo_train.Config(recipe=recipe, **base)
        torch.manual_seed(0)
        net, fmt, amp, scaler, loss_fn = mo_train.step_parts(cfg, mo_train.make_net(cfg.net, cfg.size, cfg.roi), dev)
        net.train()
        opt = mo_train.make_optimizer(cfg, net)
        xs, ys = (x.to(dev), y.to(dev)) if cuda else (x, y)
        times = []
        for i in range(3 + a.epochs * steps_per_epoch):     # the first 3 warm up (cuDNN's benchmark picks kernels)
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            mo_train.train_step(net, xs, ys, opt, scaler, loss_fn, dev, amp, fmt)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        ms = float(np.median(times[3:])) * 1e3
        res["recipes"][recipe] = {"ms_per_step": ms, "s_per_epoch_of_steps": ms * steps_per_epoch / 1e3,
                                  "amp": amp, "channels_last": fmt == torch.channels_last_3d}
        print(f"{recipe}: {ms:.1f} ms per step of {rows} patches, {ms * steps_per_epoch / 1e3:.2f} s per epoch "
              f"({steps_per_epoch} steps)", flush=True)
        del net, opt
    return res


def profile_epochs(a, dev: str, train, val) -> dict:
    """Where a recipe's epochs spend their time, from torch.profiler's tables."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    import mo_train
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.startswith("cuda") else [])
    res = {"mode": "profile", "epochs": a.epochs, "recipes": {}}
    for recipe in a.recipes:
        cfg = mo_train.Config(recipe=recipe, **base_config(a.tiny))
        torch.manual_seed(0)
        with profile(activities=acts) as prof:
            r = mo_train.measure_epoch_time(cfg, train, dev, epochs=a.epochs)
        ka = prof.key_averages()
        by_cpu = ka.table(sort_by="self_cpu_time_total", row_limit=25)
        by_dev = ka.table(sort_by="self_device_time_total", row_limit=25) if len(acts) > 1 else ""
        res["recipes"][recipe] = {**r, "top_self_cpu": by_cpu, "top_self_device": by_dev}
        print(f"== {recipe}: {json.dumps({k: round(v, 3) for k, v in r.items()})}\n{by_cpu}\n{by_dev}", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("time_to_dice", "ddp", "epoch", "transforms", "steps", "profile", "merge"), default="time_to_dice")
    ap.add_argument("--recipes", nargs="+", choices=("fast", "regular"), default=["fast", "regular"])
    ap.add_argument("--inputs", nargs="+", default=[], help="merge: time_to_dice JSON files of single recipes")
    ap.add_argument("--out", default=None, help="JSON file (default: <mode>.json)")
    ap.add_argument("--tiny", action="store_true", help="CPU-sized: 6 mm, tiny UNet, 16^3 patches")
    ap.add_argument("--target", type=float, default=None, help="validation mean GM/WM Dice (default 0.85; tiny 0.2)")
    ap.add_argument("--max-epochs", type=int, default=None, help="time_to_dice cap (default 300; tiny 4)")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="time_to_dice: stop a recipe after this many training seconds (then a lower bound)")
    ap.add_argument("--epochs", type=int, default=None, help="ddp / epoch mode: epochs per run (default 6; tiny 2)")
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--global-batch", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default=None,
                    help="time_to_dice: this optimiser for the recipes run (default: each recipe's own)")
    ap.add_argument("--lr", type=float, default=None, help="time_to_dice: this learning rate (default: the recipe's)")
    ap.add_argument("--notebook-data", action="store_true",
                    help="time_to_dice: the notebook's subjects and settings (mo_stages, seed 0) instead of the bench's")
    ap.add_argument("--data-root", default=os.environ.get("MO_BENCH_DATA", str(Path(tempfile.gettempdir()) / "mo_bench")))
    a = ap.parse_args(argv)
    if a.mode != "time_to_dice" and (a.optimizer or a.lr is not None or a.notebook_data):
        ap.error("--optimizer, --lr and --notebook-data are for --mode time_to_dice")
    if a.lr is not None and not a.lr > 0:
        ap.error(f"--lr must be > 0, got {a.lr}")
    a.target = a.target if a.target is not None else (0.2 if a.tiny else 0.85)
    a.max_epochs = a.max_epochs or (4 if a.tiny else 300)
    a.epochs = a.epochs or (2 if a.tiny else 6)
    n_train = a.n_train or (4 if a.tiny else 24)
    out = Path(a.out or f"{a.mode}.json")
    if a.mode == "merge":
        out.write_text(json.dumps(merge(a.inputs), indent=1, default=str))
        print("wrote", out)
        return 0
    import torch
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    a.base = None
    if a.notebook_data:
        train, val, a.base = notebook_data(a.tiny, Path(a.data_root))
    else:
        train, val = data(a.tiny, n_train, 2 if a.tiny else 4, Path(a.data_root))
    print(f"{len(train)} + {len(val)} synthetic subjects ready in {time.perf_counter() - t0:.0f} s", flush=True)
    run = {"time_to_dice": time_to_dice, "ddp": ddp, "epoch": epoch_variants, "transforms": transform_times, "steps": step_times, "profile": profile_epochs}[a.mode]
    res = {"machine": machine(), "device": dev, **run(a, dev, train, val)}
    out.write_text(json.dumps(res, indent=1, default=str))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
