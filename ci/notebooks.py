"""Shared bits of the ci/ scripts: where the notebooks are and what the metadata says."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BUILD = Path(os.environ.get("LABKIT_BUILD_DIR") or ROOT / "build")


def metadata() -> dict:
    return yaml.safe_load((ROOT / "ci" / "metadata.yml").read_text())["notebooks"]


def all_folders() -> list:
    """Topic folders that hold their notebook (notebooks/<folder>/<folder>.ipynb), in order."""
    return sorted(p.parent.name for p in NOTEBOOKS.glob("*/*.ipynb") if p.stem == p.parent.name)


def notebook_path(folder: str) -> Path:
    return NOTEBOOKS / folder / f"{folder}.ipynb"


def select(names: str | None) -> list:
    """'02,04' or '02_byteqrnn' or '' (all) -> folder names; unknown names are an error."""
    folders = all_folders()
    if not names:
        return folders
    picked = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        hits = [f for f in folders if f == name or f.startswith(name)]
        if not hits:
            raise SystemExit(f"NB={name!r} matches no notebook; choose from: {', '.join(folders)}")
        picked += [h for h in hits if h not in picked]
    return picked
