"""Check recorded metrics against the thresholds in ci/metadata.yml.

    python ci/check_thresholds.py --nb 04 --profile full [--results FILE]   # a fresh run (GPU workflow)
    python ci/check_thresholds.py --committed                               # every committed full.json (make test)

A threshold is {metric: {min: x}}, {metric: {max: y}} or both, optionally with `required: true`.
A goal a reference run missed for a measured, stated reason may carry `accept: z` (a bound on the far side of
the goal: below min, or above max) and `why: "..."`: a value between the goal and `accept` is reported as a
stated shortfall, not a failure; one past `accept` (a regression from the stated result) fails.
A fresh run must record every metric that has a threshold. A committed reference (notebooks/<folder>/
results/full.json) may predate a threshold: a metric it lacks is reported, and is a failure only when
its threshold says `required: true`. A value outside its bounds is always a failure.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks import BUILD, NOTEBOOKS, metadata, select  # noqa: E402

SPEC_KEYS = ("min", "max", "required", "accept", "why")


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def spec_problems(name: str, bound) -> list:
    """What is wrong with one threshold's spec in ci/metadata.yml (empty when it is fine)."""
    if not isinstance(bound, dict):
        return [f"threshold {name}: {bound!r} is not a mapping like {{min: 0.9}}"]
    out = [f"threshold {name}: unknown key {k!r} (allowed: {', '.join(SPEC_KEYS)})" for k in bound if k not in SPEC_KEYS]
    out += [f"threshold {name}: {k}={bound[k]!r} is not a number" for k in ("min", "max")
            if k in bound and not is_number(bound[k])]
    if "required" in bound and not isinstance(bound["required"], bool):
        out.append(f"threshold {name}: required={bound['required']!r} is not true/false")
    if not ("min" in bound or "max" in bound):
        out.append(f"threshold {name}: has neither min nor max")
    if "accept" in bound or "why" in bound:
        if not (isinstance(bound.get("why"), str) and bound["why"].strip()):
            out.append(f"threshold {name}: 'accept' needs 'why' (the measured reason the goal is missed)")
        acc = bound.get("accept")
        if not is_number(acc):
            out.append(f"threshold {name}: 'why' needs 'accept' (a number), got {acc!r}")
        elif ("min" in bound) == ("max" in bound):
            out.append(f"threshold {name}: 'accept' goes with exactly one of min or max")
        elif not (acc < bound["min"] if "min" in bound else acc > bound["max"]):
            out.append(f"threshold {name}: accept={acc!r} must lie past the goal (below min / above max)")
    return out


def _missed(v, bound) -> str:
    """How v misses the goal in `bound` ('' when it meets it)."""
    if "min" in bound and v < bound["min"]:
        return f"is below the minimum {bound['min']}"
    if "max" in bound and v > bound["max"]:
        return f"is above the maximum {bound['max']}"
    return ""


def _within_accept(v, bound) -> bool:
    acc = bound.get("accept")
    return is_number(acc) and (v >= acc if "min" in bound else v <= acc)


def verdict(v, bound) -> str:
    """'meets', 'stated' (goal missed within its stated `accept`), 'fails', or '' (no valid spec or not a number)."""
    if not isinstance(bound, dict) or spec_problems("", bound) or not is_number(v):
        return ""
    if not _missed(v, bound):
        return "meets"
    return "stated" if "accept" in bound and _within_accept(v, bound) else "fails"


def violations(metrics: dict, thresholds: dict, missing_ok: bool = False) -> list:
    """Failures of `metrics` against `thresholds`. A metric that is not recorded is one, unless
    `missing_ok` and its threshold is not `required` (see unrecorded())."""
    out = []
    for name, bound in thresholds.items():
        bad_spec = spec_problems(name, bound)
        if bad_spec:
            out += bad_spec
            continue
        if name not in metrics:
            if not missing_ok or bound.get("required"):
                out.append(f"{name}: not recorded" + (" (its threshold is marked required)" if missing_ok else ""))
            continue
        v = metrics[name]
        if not is_number(v):
            out.append(f"{name}={v!r} is not a number")
        elif verdict(v, bound) == "fails":
            past = f" and past the accepted {bound['accept']}" if "accept" in bound else ""
            out.append(f"{name}={v:.4g} {_missed(v, bound)}{past}")
    return out


def shortfalls(metrics: dict, thresholds: dict) -> list:
    """Goals missed within their stated `accept` bound: reported with their reason, not failed."""
    return [f"{name}={metrics[name]:.4g} {_missed(metrics[name], bound)} (goal missed, stated: {bound['why']})"
            for name, bound in thresholds.items() if verdict(metrics.get(name), bound) == "stated"]


def unrecorded(metrics: dict, thresholds: dict) -> list:
    """Metrics with a threshold, not required, that `metrics` lacks (reported, not failed)."""
    return [n for n, b in thresholds.items() if n not in metrics and isinstance(b, dict) and not b.get("required")]


def check_reference(path: Path, meta_entry: dict | None) -> tuple:
    """(failures, notes) of one committed full.json against its topic's thresholds."""
    try:
        ref = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return [f"{path} cannot be read as JSON ({err})"], []
    if not isinstance(ref, dict) or not isinstance(ref.get("metrics"), dict):
        return [f"{path} has no 'metrics' mapping"], []
    if meta_entry is None:
        return [f"{path.parent.parent.name} is not listed in ci/metadata.yml"], []
    failures = []
    if ref.get("profile") != "full":
        failures.append(f"profile is {ref.get('profile')!r}, not 'full'")
    thresholds = meta_entry.get("thresholds") or {}
    failures += violations(ref["metrics"], thresholds, missing_ok=True)
    notes = [f"{n}: not recorded in full.json (threshold not marked required: reported, not failed)"
             for n in unrecorded(ref["metrics"], thresholds)]
    notes += shortfalls(ref["metrics"], thresholds)
    return failures, notes


def check_committed(notebooks: Path = NOTEBOOKS, meta: dict | None = None) -> int:
    """Print one verdict per committed notebooks/*/results/full.json; returns how many failed."""
    meta = metadata() if meta is None else meta
    paths = sorted(notebooks.glob("*/results/full.json"))
    failed = 0
    for path in paths:
        folder = path.parent.parent.name
        failures, notes = check_reference(path, meta.get(folder))
        for line in failures:
            print(f"{folder}: FAIL {line}")
        for line in notes:
            print(f"{folder}: note {line}")
        n = len((meta.get(folder) or {}).get("thresholds") or {})
        print(f"{folder}: {'FAILED' if failures else 'ok'}: committed full.json against {n} thresholds")
        failed += bool(failures)
    without = [f for f, m in meta.items() if (m or {}).get("thresholds") and not (notebooks / f / "results" / "full.json").exists()]
    if without:
        print(f"no committed full.json yet (nothing to check): {', '.join(without)}")
    print(f"check_thresholds: {len(paths) - failed} of {len(paths)} committed reference runs meet their thresholds")
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nb", help="notebooks of a fresh run (prefixes, comma-separated)")
    ap.add_argument("--profile", default="full")
    ap.add_argument("--results", help="results file (default build/results/<nb>.<profile>.json)")
    ap.add_argument("--committed", action="store_true", help="check every notebooks/*/results/full.json")
    args = ap.parse_args(argv)
    if args.committed == bool(args.nb):
        ap.error("give either --nb (a fresh run's results) or --committed (the committed full.json files)")
    if args.committed:
        return 1 if check_committed() else 0
    meta = metadata()
    bad = 0
    for folder in select(args.nb):
        path = Path(args.results) if args.results else BUILD / "results" / f"{folder}.{args.profile}.json"
        if not path.exists():
            print(f"{folder}: no results file at {path}")
            bad += 1
            continue
        metrics, th = json.loads(path.read_text())["metrics"], meta[folder].get("thresholds") or {}
        problems = violations(metrics, th)
        for p in problems:
            print(f"{folder}: {p}")
        for line in shortfalls(metrics, th):
            print(f"{folder}: note {line}")
        print(f"{folder}: {'ok' if not problems else 'FAILED'} against {len(meta[folder].get('thresholds') or {})} thresholds")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
