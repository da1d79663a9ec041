"""Stage command: the notebook's long runs (full profile) in resumable pieces, within a time budget.

    cd notebooks/05_monai && python mo_full.py --budget-s 480            # 1 GPU: races, main UNet, UNETR
    cd notebooks/05_monai && python mo_full.py --budget-s 480 --ddp      # 2 GPUs: 1- vs 2-process epoch time

Pieces (mo_stages): race_fast, race_regular (time to the validation Dice target, cache fill included),
main (UNet under torchrun, checkpoint kept), unetr (trained and scored on the test images), and with --ddp
only ddp_compare. Each finished piece is written atomically into labkit.stage_dir("05_monai", profile)
($LABKIT_STAGE_DIR moves it); pieces already there are skipped; a piece whose expected time (mo_stages.
expected_seconds: the H200 anchor) exceeds the budget left is not started. Prints progress and ends with
`STAGES COMPLETE` or `STAGES LEFT: <n>`. The data (synthetic and real-intensity subjects, seeded) are
written under labkit.data_root()/cache/05_monai/<profile> first, or re-used from there.
`--profile tiny` (6 mm, tiny networks, an epoch or two) or `--profile smoke` run the same code on a CPU.

On the GPU image (torch, scipy, scikit-image; no MONAI, nibabel, pydicom, fire): carry `.whl_05` (monai 1.6.1,
nibabel 5.4.2, pydicom 3.0.2, fire 0.7.1, termcolor 3.3.0: pure-Python wheels at requirements/lock.txt's
versions, 7.2 MB) beside the lead's `.whl` and `data/mni152`, then from the repository root:
    source ci/gpu_image_env.sh .whl && python3 -m pip install -q --no-index --no-deps --no-compile \
        --target "$LABKIT_GPU_SITE" .whl_05/*.whl && cd notebooks/05_monai && python3 mo_full.py --budget-s 480
ci/gpu_full_05.sh runs the whole sequence (--ddp when two GPUs are there, the one-GPU pieces, then the notebook).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parents[1] / "shared"))   # labkit, where the repository is not installed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="full", choices=("full", "smoke", "tiny"))
    ap.add_argument("--budget-s", type=float, required=True, help="start no piece expected to end after this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ddp", action="store_true", help="only the 1- vs 2-process comparison (needs 2 GPUs)")
    ap.add_argument("--allow-cpu-ddp", action="store_true", help="--ddp on a CPU with 2 gloo processes (a test)")
    ap.add_argument("--pieces", nargs="+", default=None, help="only these pieces (default: all of the command's)")
    ap.add_argument("--data-cache", default=None, help="where the subjects are written (default: under the data root)")
    a = ap.parse_args(argv)
    if a.budget_s <= 0:
        ap.error("--budget-s must be > 0")
    import torch
    import labkit
    import mo_stages as S
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    n_gpu = torch.cuda.device_count() if dev == "cuda" else 0
    if a.ddp and n_gpu < 2 and not (a.allow_cpu_ddp and dev == "cpu"):
        print(f"--ddp needs 2 GPUs, this machine has {n_gpu}: nothing run", flush=True)
        print("STAGES LEFT: 1", flush=True)
        return 2
    if dev == "cpu":
        torch.set_num_threads(min(4, os.cpu_count() or 1))
    K = S.params(a.profile)
    folder = labkit.stage_dir(S.FOLDER, a.profile)
    _check_meta(folder / "meta.json", {"seed": a.seed, "params": K})
    stage = S.Stage(folder, budget_s=a.budget_s, log=lambda m: print(m, flush=True))
    print(f"profile {a.profile} | device {dev} ({n_gpu} GPU) | budget {a.budget_s:.0f} s | stage dir {folder}", flush=True)
    names = S.PIECES_2GPU if a.ddp else S.PIECES_1GPU
    if a.pieces:
        unknown = sorted(set(a.pieces) - set(names))
        if unknown:
            ap.error(f"unknown piece(s) {unknown} for this command; choose from {list(names)}")
        names = tuple(n for n in names if n in a.pieces)
    todo = [n for n in names if not stage.done(n)]
    if not todo:
        print("STAGES COMPLETE", flush=True)
        return 0
    t = time.perf_counter()
    cache = Path(a.data_cache) if a.data_cache else labkit.data_root() / "cache" / S.FOLDER / a.profile
    D = S.data(K, cache, a.seed)
    print(f"data ready in {time.perf_counter() - t:.0f} s: {len(D['train'])} train, {len(D['val'])} val, "
          f"{len(D['test'])} test subjects + the real T1", flush=True)
    nproc = max(1, n_gpu)
    pieces = {"race_fast": lambda: S.race_piece("fast", K, D, dev, a.seed),
              "race_regular": lambda: S.race_piece("regular", K, D, dev, a.seed),
              "main": lambda: S.main_piece(K, D, a.seed, nproc),
              "unetr": lambda: S.unetr_piece(K, D, dev, a.seed, a.profile),
              "ddp_compare": lambda: S.ddp_piece(K, D, a.seed)}
    left = []
    for name in names:
        try:
            stage.piece(name, pieces[name](), S.expected_seconds(name, K, dev, nproc))
        except S.NotStarted as e:
            print(f"[stage] not started: {e}", flush=True)
            left.append(name)
    print(f"computed {len(stage.computed)} pieces in {stage.elapsed():.0f} s; stage dir "
          f"{sum(p.stat().st_size for p in folder.rglob('*') if p.is_file()) / 2**20:.1f} MiB", flush=True)
    print("STAGES COMPLETE" if not left else f"STAGES LEFT: {len(left)}", flush=True)
    return 0


def _check_meta(meta: Path, want: dict) -> None:
    """Pieces of one stage dir must come from one setting: refuse to mix seeds or parameters."""
    from labkit.paths import atomic_write_text
    want = json.loads(json.dumps(want))
    if meta.exists():
        have = json.loads(meta.read_text())
        if have != want:
            raise SystemExit(f"{meta.parent} holds pieces made with other settings ({have}), not {want}: "
                             "use another $LABKIT_STAGE_DIR or delete it")
    else:
        atomic_write_text(meta, json.dumps(want))


if __name__ == "__main__":
    sys.exit(main())
