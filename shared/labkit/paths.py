"""Where things live: the repository, the build folder and the one data root."""
from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "LABKIT_DATA_ROOT"
BUILD_ENV = "LABKIT_BUILD_DIR"
STAGE_ENV = "LABKIT_STAGE_DIR"


def repo_root() -> Path:
    """The repository root (shared/labkit/paths.py -> two folders up from shared/)."""
    return Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """The one data root: $LABKIT_DATA_ROOT, else <repo>/data."""
    return Path(os.environ.get(DATA_ENV) or repo_root() / "data").resolve()


def build_dir() -> Path:
    """Build outputs: $LABKIT_BUILD_DIR, else <repo>/build."""
    return Path(os.environ.get(BUILD_ENV) or repo_root() / "build").resolve()


def stage_dir(folder: str, profile: str) -> Path:
    """Where a notebook's long runs keep finished pieces so a later command resumes from them:
    $LABKIT_STAGE_DIR/<folder>.<profile>, else <build>/stages/<folder>.<profile> (created)."""
    base = Path(os.environ.get(STAGE_ENV) or build_dir() / "stages").resolve()
    path = base / f"{folder}.{profile}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temp file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
