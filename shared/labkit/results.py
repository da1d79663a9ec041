"""The results contract: build/results/<folder>.<profile>.json, and the committed GPU reference.

Each file holds: notebook, profile, created (ISO date), machine (cpu, gpu or null, gpu_count,
library versions) and metrics (a flat name -> number mapping).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Mapping, Optional

from labkit.env import machine_info
from labkit.paths import atomic_write_text, build_dir, repo_root
from labkit.profile import check_choice, PROFILES


def _clean_metrics(metrics: Mapping) -> dict:
    out = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"metric {name!r}={value!r}: metrics are flat name -> number")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric {name!r} is {value}: record only finite numbers")
        out[str(name)] = float(value) if isinstance(value, float) else int(value)
    return out


def results_path(folder: str, profile: str) -> Path:
    return build_dir() / "results" / f"{folder}.{profile}.json"


def record(folder: str, profile: str, metrics: Mapping, framework: str = "torch",
           machine: Optional[dict] = None, notes: Optional[dict] = None) -> Path:
    """Write this run's results atomically and return the path."""
    check_choice("profile", profile, PROFILES)
    payload = {
        "notebook": folder,
        "profile": profile,
        "created": _dt.date.today().isoformat(),
        "machine": machine or machine_info(framework),
        "metrics": _clean_metrics(metrics),
    }
    if os.environ.get("LABKIT_RUN_ID"):  # ties a results file to the executed notebook of the same run
        payload["run_id"] = os.environ["LABKIT_RUN_ID"]
    if notes:
        payload["notes"] = notes
    path = results_path(folder, profile)
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def load_reference(folder: str) -> Optional[dict]:
    """The committed full-profile results of a GPU run, or None if there are none yet."""
    path = repo_root() / "notebooks" / folder / "results" / "full.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def reference_label(reference: Optional[dict]) -> str:
    if not reference:
        return "GPU reference (not yet recorded)"
    m = reference.get("machine") or {}
    return f"reference full run ({m.get('gpu') or m.get('cpu') or 'unknown machine'}, {reference.get('created')})"


def compare_table(metrics: Mapping, reference: Optional[dict] = None,
                  source: Optional[Mapping] = None, digits: int = 3):
    """A pandas table: metric | this run | committed GPU reference | the source's figure."""
    import pandas as pd
    ref = (reference or {}).get("metrics", {})
    source = source or {}
    names = list(dict.fromkeys(list(metrics) + list(source)))
    rows = []
    for name in names:
        value = metrics.get(name)
        rows.append({
            "metric": name,
            "this run": None if value is None else round(float(value), digits),
            reference_label(reference): None if ref.get(name) is None else round(float(ref[name]), digits),
            "source (paper/blog)": source.get(name, ""),
        })
    return pd.DataFrame(rows).set_index("metric")
