"""Check recorded metrics against the thresholds in ci/metadata.yml (used by the GPU workflow).

    python ci/check_thresholds.py --nb 04 --profile full [--results FILE]
A threshold is {metric: {min: x}} or {metric: {max: y}}; a missing metric is a failure.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks import BUILD, metadata, select  # noqa: E402


def violations(metrics: dict, thresholds: dict) -> list:
    out = []
    for name, bound in thresholds.items():
        if name not in metrics:
            out.append(f"{name}: not recorded")
            continue
        v = metrics[name]
        if "min" in bound and v < bound["min"]:
            out.append(f"{name}={v:.4g} is below the minimum {bound['min']}")
        if "max" in bound and v > bound["max"]:
            out.append(f"{name}={v:.4g} is above the maximum {bound['max']}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nb", required=True)
    ap.add_argument("--profile", default="full")
    ap.add_argument("--results", help="results file (default build/results/<nb>.<profile>.json)")
    args = ap.parse_args(argv)
    meta = metadata()
    bad = 0
    for folder in select(args.nb):
        path = Path(args.results) if args.results else BUILD / "results" / f"{folder}.{args.profile}.json"
        if not path.exists():
            print(f"{folder}: no results file at {path}")
            bad += 1
            continue
        problems = violations(json.loads(path.read_text())["metrics"], meta[folder].get("thresholds") or {})
        for p in problems:
            print(f"{folder}: {p}")
        print(f"{folder}: {'ok' if not problems else 'FAILED'} against {len(meta[folder].get('thresholds') or {})} thresholds")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
