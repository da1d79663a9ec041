"""Per-epoch timing of the two training recipes on one GPU, without the rest of the notebook.

    python mo_fast_bench.py [--out bench.json]

Same data (the full profile's 24 synthetic subjects at 1 mm, resampled to 1.5 mm), model (UNet 16..256),
loss and patch settings as the notebook's full profile. Runs the regular recipe, then the fast recipe in a
few variants (to show where the time goes), each for one warm-up epoch plus three timed ones.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench.json")
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    import torch
    import mo_data, mo_train, mo_transforms
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ncpu = os.cpu_count() or 1
    t0 = time.perf_counter()
    tpl = mo_data.resample_template(mo_data.load_mni152(), 1.0)
    items = mo_data.write_subjects(tpl, Path(tempfile.gettempdir()) / "mo_bench_subjects", 24, seed=0,
                                   workers=min(8, ncpu))
    print(f"subjects ready in {time.perf_counter() - t0:.0f} s", flush=True)
    base = dict(net="unet", size="full", pixdim=1.5, roi=96, num_samples=4, batch_size=2,
                num_workers=4, cache_workers=8, seed=0)
    orig_random_part = mo_transforms.random_part

    def cpu_grid_random_part(*args, device=None, **kw):   # the previous code: RandAffined grid built on the CPU
        return orig_random_part(*args, **kw)

    variants = [  # (name, recipe, torch threads in this process, channels_last, affine grid on the GPU)
        ("regular", "regular", min(4, ncpu), False, False),
        ("fast_before_cpu_grid_threads_all", "fast", ncpu, False, False),
        ("fast_threads_all", "fast", ncpu, True, True),
        ("fast_no_channels_last", "fast", min(4, ncpu), False, True),
        ("fast", "fast", min(4, ncpu), True, True),
    ]
    res = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "cpu_count": ncpu,
           "torch": torch.__version__, "variants": {}}
    for name, recipe, threads, cl, gpu_grid in variants:
        torch.set_num_threads(threads)
        mo_transforms.random_part = orig_random_part if gpu_grid else cpu_grid_random_part
        cfg = mo_train.Config(recipe=recipe, channels_last=cl, **base)
        torch.manual_seed(0)
        r = mo_train.measure_epoch_time(cfg, items, dev, epochs=a.epochs)
        r.update(threads=threads, channels_last=cl, gpu_affine_grid=gpu_grid)
        res["variants"][name] = r
        print(name, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        Path(a.out).write_text(json.dumps(res, indent=1))   # partial results survive a time-out
        if dev == "cuda":
            torch.cuda.empty_cache()
    mo_transforms.random_part = orig_random_part
    v = res["variants"]
    res["fast_vs_regular_epoch_speedup"] = v["regular"]["epoch_seconds"] / v["fast"]["epoch_seconds"]
    print("fast_vs_regular_epoch_speedup", round(res["fast_vs_regular_epoch_speedup"], 2))
    Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
