"""Execute notebooks with papermill, collect their results files, print a summary table.

    python ci/run_notebooks.py [--nb 02,04] [--profile smoke|full] [--device auto] [--jobs 2]

Executed notebooks go to build/executed/, results to build/results/, the summary to
build/summary.{md,json}. Exit status 1 if any notebook failed; the failing notebook and cell are named.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks import BUILD, ROOT, metadata, notebook_path, select  # noqa: E402

PROFILES = ("smoke", "full")
DEVICES = ("auto", "cpu", "cuda")


def first_error(executed: Path):
    """(cell number, cell's first line, 'Error: message') of the first failing cell, or None."""
    if not executed.exists():
        return None
    nb = nbformat.read(executed, as_version=4)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                head = (cell.source.strip().splitlines() or [""])[0][:80]
                return i + 1, head, f"{out.get('ename')}: {str(out.get('evalue'))[:300]}"
    return None


def write_atomic(nb, path: Path) -> None:
    """Write a notebook beside `path`, then rename: nobody reads half a notebook."""
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)


def new_run_id(folder: str, profile: str) -> str:
    """One id per notebook run, shared by its executed notebook and its results file: time, topic, profile and
    the commit, marked "+dirty" when tracked files differ from it (a copied working tree whose .git is older
    than its files - as on a GPU machine that received the tree - would otherwise name the wrong code).
    A dirty id also names the tree of the files as they are ("+tree" and 10 hex digits, tracked and untracked
    files git does not ignore): the copied tree of a clean commit gives that commit's tree, which
    `git log --format='%h %T' | grep <digits>` finds where the commit was made."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        sha = _git("rev-parse", "--short", "HEAD")
        if sha and _git("status", "--porcelain", "--untracked-files=no"):
            sha += "+dirty"
            tree = content_tree()
            sha += f"+tree{tree[:10]}" if tree else ""
    except (OSError, subprocess.TimeoutExpired):
        sha = ""
    return "-".join(x for x in (stamp, folder[:2], profile, sha or "nogit"))


def _git(*args, env=None) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=env).stdout.strip()


def content_tree() -> str:
    """The git tree id of the working tree's files (not ignored), computed in a scratch index: the real index
    and HEAD are left alone. "" when git cannot tell."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, GIT_INDEX_FILE=str(Path(d) / "index"))
        _git("read-tree", "HEAD", env=env)
        _git("add", "-A", ".", env=env)
        return _git("write-tree", env=env)


def stamp_notebook(executed: Path, run_id: str, profile: str, results: dict | None) -> None:
    """Write metadata.labkit (run id, profile, date, machine) into the executed notebook, atomically."""
    nb = nbformat.read(executed, as_version=4)
    nb.metadata["labkit"] = {"run_id": run_id, "profile": profile,
                             "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                             "machine": (results or {}).get("machine")}
    write_atomic(nb, executed)


def run_one(folder: str, profile: str, device: str, timeout_min: float, extra: list) -> dict:
    src = notebook_path(folder)
    out = BUILD / "executed" / f"{folder}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    log = BUILD / "logs" / f"{folder}.{profile}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", str(src), str(out), "--cwd", str(src.parent),
           "-p", "profile", profile, "-p", "device", device, "--kernel", "python3",
           "--execution-timeout", str(int(timeout_min * 60)), "--no-progress-bar"]
    for kv in extra:
        k, _, v = kv.partition("=")
        cmd += ["-p", k, v]
    run_id = os.environ.get("LABKIT_RUN_ID") or new_run_id(folder, profile)
    env = dict(os.environ, LABKIT_NO_PROGRESS=os.environ.get("LABKIT_NO_PROGRESS", "1"), LABKIT_RUN_ID=run_id)
    t0 = time.perf_counter()
    try:
        with open(log, "w") as f:
            res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout_min * 60 + 60)
        status = "ok" if res.returncode == 0 else "FAILED"
    except subprocess.TimeoutExpired:
        status = "TIMEOUT"
    wall = time.perf_counter() - t0
    row = {"notebook": folder, "status": status, "wall_s": round(wall, 1), "log": str(log), "run_id": run_id}
    if status != "ok":
        err = first_error(out)
        row["error"] = (f"cell {err[0]} ({err[1]!r}) raised {err[2]}" if err
                        else f"see {row['log']}: " + " | ".join(log.read_text(errors="replace").splitlines()[-3:]))
    res_file = BUILD / "results" / f"{folder}.{profile}.json"
    results = None
    if status == "ok" and res_file.exists() and res_file.stat().st_mtime >= time.time() - wall - 5:
        results = json.loads(res_file.read_text())
        row["metrics"] = results.get("metrics", {})
    if out.exists():
        stamp_notebook(out, run_id, profile, results)
    return row


def commit_outputs(executed: Path, committed: Path) -> None:
    """Copy an executed notebook over the committed one, minus papermill's injected-parameters cell
    (the committed notebook keeps its own defaults) and papermill's run metadata; atomic."""
    nb = nbformat.read(executed, as_version=4)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("labkit", None)  # a run's id belongs to build/ and results/full.*, not the smoke copy
    for c in nb.cells:
        c.metadata.pop("papermill", None)
        c.metadata.get("execution", {}).clear()
        c.metadata.pop("execution", None)
    write_atomic(nb, committed)


def key_metrics(metrics: dict, preferred=(), limit: int = 4) -> str:
    """The metrics the notebook is judged by (its thresholds in ci/metadata.yml) first."""
    names = [k for k in preferred if k in metrics] + [k for k in metrics if k not in preferred]
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in names[:limit])


def write_summary(rows: list, profile: str) -> str:
    lines = [f"| notebook | status | wall time | key metrics ({profile}) |", "|---|---|---|---|"]
    for r in rows:
        preferred = list((metadata().get(r["notebook"], {}).get("thresholds") or {}))
        detail = key_metrics(r.get("metrics", {}), preferred) or r.get("error", "")
        lines.append(f"| {r['notebook']} | {r['status']} | {r['wall_s']:.0f} s | {detail} |")
    text = "\n".join(lines)
    BUILD.mkdir(exist_ok=True)
    (BUILD / "summary.md").write_text(text + "\n")
    (BUILD / "summary.json").write_text(json.dumps({"profile": profile, "notebooks": rows}, indent=2) + "\n")
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nb", default=os.environ.get("NB", ""), help="notebooks to run (prefixes, comma-separated)")
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=1, help="notebooks executed in parallel")
    ap.add_argument("-p", "--param", action="append", default=[], help="extra papermill parameter NAME=VALUE")
    ap.add_argument("--update-committed", action="store_true",
                    help="copy each executed smoke notebook back over the committed one (to refresh outputs)")
    args = ap.parse_args(argv)
    if args.profile not in PROFILES:
        raise SystemExit(f"PROFILE={args.profile!r} is not allowed; use one of {PROFILES}")
    if args.device not in DEVICES:
        raise SystemExit(f"DEVICE={args.device!r} is not allowed; use one of {DEVICES}")
    folders = select(args.nb)
    meta = metadata()
    key = "cpu_smoke_minutes" if args.profile == "smoke" else "gpu_full_minutes"

    def job(folder):
        m = meta.get(folder, {})
        timeout = m.get("timeout_minutes", 30) if args.profile == "smoke" else max(60, 3 * m.get(key, 20))
        print(f"[run] {folder} (profile={args.profile}, expected ~{m.get(key, '?')} min)", flush=True)
        row = run_one(folder, args.profile, args.device, timeout, args.param)
        print(f"[run] {folder}: {row['status']} in {row['wall_s']:.0f} s" + (f" -- {row['error']}" if 'error' in row else ""), flush=True)
        return row

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(job, folders))
    print()
    print(write_summary(rows, args.profile))
    failed = [r for r in rows if r["status"] != "ok"]
    if args.update_committed and args.profile == "smoke":
        for r in rows:
            if r["status"] == "ok":
                commit_outputs(BUILD / "executed" / f"{r['notebook']}.ipynb", notebook_path(r["notebook"]))
                print(f"[run] refreshed committed outputs of {r['notebook']}")
    if failed:
        for r in failed:
            print(f"\nFAILED: {r['notebook']}: {r['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
