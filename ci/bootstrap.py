"""Create or refresh the project's virtual environment; idempotent (standard library only).

Re-installs only when requirements/lock.txt or this script changes (a stamp in .venv records the
hash). Installs the pins, the labkit package (editable), and a `python3` Jupyter kernel inside the
venv so papermill, nbval and JupyterLab all run the notebooks in this environment.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements" / "lock.txt"
NODEPS = ROOT / "requirements" / "nodeps.txt"  # packages whose declared requirements would break the pins
STAMP = VENV / ".labkit-installed"


def digest() -> str:
    h = hashlib.sha256(LOCK.read_bytes())
    h.update(NODEPS.read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update((ROOT / "shared" / "pyproject.toml").read_bytes())
    return h.hexdigest()


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    want = digest()
    if STAMP.exists() and STAMP.read_text().strip() == want and (VENV / "bin" / "python").exists():
        print("[setup] .venv is up to date with requirements/lock.txt")
        return 0
    if not (VENV / "bin" / "python").exists():
        run(sys.executable, "-m", "venv", str(VENV))
    py = str(VENV / "bin" / "python")
    run(py, "-m", "pip", "install", "-q", "--upgrade", "pip==26.3", "setuptools==84.2.1", "wheel")
    run(py, "-m", "pip", "install", "-q", "-r", str(LOCK))
    run(py, "-m", "pip", "install", "-q", "--no-deps", "-r", str(NODEPS))
    run(py, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT / "shared"))
    run(py, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3", "--display-name", "Python 3 (labkit)")
    STAMP.write_text(want + "\n")
    print("[setup] .venv ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
