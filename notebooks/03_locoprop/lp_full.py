"""Stage command: the full profile's long work in resumable pieces, within a time budget.

    cd notebooks/03_locoprop && KERAS_BACKEND=jax python lp_full.py --budget-s 280

Runs the pieces of `lp_experiment.Experiment` (LR grids, their extensions, extra seeds, single-run
timing, the cosine probe) in order. Each finished piece is written atomically into
`labkit.stage_dir("03_locoprop", <profile>)` ($LABKIT_STAGE_DIR moves it); pieces already there are
skipped; a piece whose estimated time (from the pieces measured so far) exceeds the budget left is
not started. Prints progress and ends with `STAGES COMPLETE` or `STAGES LEFT: <n>`.
`--profile tiny` runs the same code on a small network and 400 images (a CPU test).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import labkit
except ImportError:     # running from a plain checkout: labkit lives in <repo>/shared
    sys.path.insert(0, str(HERE.parents[1] / "shared"))
    import labkit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, required=True, help="start no piece expected to end after this many seconds")
    ap.add_argument("--profile", default="full", choices=("full", "tiny"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="default", choices=("default", "highest"),
                    help="float32 matmul precision under JAX: 'default' lets XLA use TF32 on the GPU")
    args = ap.parse_args(argv)
    if args.budget_s <= 0:
        ap.error("--budget-s must be > 0")

    import lp_backend
    import lp_experiment as E

    print(f"backend {lp_backend.NAME} | profile {args.profile} | budget {args.budget_s:.0f} s | precision {args.precision}",
          flush=True)
    if lp_backend.NAME != "jax":
        print("note: KERAS_BACKEND is not 'jax'; the full profile is meant for the JAX backend on a GPU", flush=True)
    lp_backend.set_matmul_precision(args.precision)
    lp_backend.enable_compilation_cache(labkit.build_dir() / "jax_cache" / E.FOLDER)
    folder = labkit.stage_dir(E.FOLDER, args.profile)
    meta = folder / "meta.json"
    _check_meta(meta, args)
    stage = E.Stage(folder, budget_s=args.budget_s, log=lambda m: print(m, flush=True))
    ex = E.Experiment(E.PROFILES[args.profile], stage=stage, seed=args.seed)
    print(f"stage dir {folder} | {len(ex.images)} images, {ex.steps} steps/epoch, {ex.epochs} epochs", flush=True)
    result = ex.run_all()
    left = 0 if result is not None else max(ex.pieces_left(), 1)
    print(f"computed {len(stage.computed)} pieces in {stage.elapsed():.0f} s", flush=True)
    print("STAGES COMPLETE" if left == 0 else f"STAGES LEFT: {left}", flush=True)
    return 0


def _check_meta(meta: Path, args) -> None:
    """Pieces of one stage dir must come from one setting: refuse to mix precisions or seeds."""
    import json
    import lp_backend
    from labkit.paths import atomic_write_text
    want = {"precision": args.precision, "seed": args.seed, "backend": lp_backend.NAME}
    if meta.exists():
        have = json.loads(meta.read_text())
        if have != want:
            raise SystemExit(f"{meta.parent} holds pieces made with {have}, not {want}: use another $LABKIT_STAGE_DIR")
    else:
        atomic_write_text(meta, json.dumps(want))


if __name__ == "__main__":
    sys.exit(main())
