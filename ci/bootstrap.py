"""Create or refresh the project's virtual environment; idempotent (standard library only).

    python ci/bootstrap.py          CPU builds (requirements/lock.txt): laptops, CI
    python ci/bootstrap.py --gpu    CUDA builds (requirements/lock-gpu.txt): GPU runners (`make setup GPU=1`)

Re-installs only when the lock in use or this script changes (a stamp in .venv records the hash and
which lock). Installs the pins, the labkit package (editable), and a `python3` Jupyter kernel inside the
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
LOCKS = {"cpu": ROOT / "requirements" / "lock.txt", "gpu": ROOT / "requirements" / "lock-gpu.txt"}
NODEPS = ROOT / "requirements" / "nodeps.txt"  # packages whose declared requirements would break the pins
STAMP = VENV / ".labkit-installed"


def digest(lock: Path) -> str:
    h = hashlib.sha256(lock.read_bytes())
    h.update(NODEPS.read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update((ROOT / "shared" / "pyproject.toml").read_bytes())
    return h.hexdigest()


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flavour = "gpu" if "--gpu" in argv else "cpu"
    lock = LOCKS[flavour]
    want = f"{flavour} {digest(lock)}"
    if STAMP.exists() and STAMP.read_text().strip() == want and (VENV / "bin" / "python").exists():
        print(f"[setup] .venv is up to date with requirements/{lock.name}")
        return 0
    if not (VENV / "bin" / "python").exists():
        run(sys.executable, "-m", "venv", str(VENV))
    py = str(VENV / "bin" / "python")
    run(py, "-m", "pip", "install", "-q", "--upgrade", "pip==26.3", "setuptools==84.2.1", "wheel")
    previous = STAMP.read_text().split()[0] if STAMP.exists() else None
    if previous in LOCKS and previous != flavour:
        # switching builds: the other build's files would stay beside these under the same import names
        run(py, "-m", "pip", "uninstall", "-q", "-y", "torch", "tensorflow", "tensorflow-cpu")
    run(py, "-m", "pip", "install", "-q", "-r", str(lock))
    run(py, "-m", "pip", "install", "-q", "--no-deps", "-r", str(NODEPS))
    run(py, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT / "shared"))
    run(py, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3", "--display-name", "Python 3 (labkit)")
    STAMP.write_text(want + "\n")
    print(f"[setup] .venv ready ({flavour} builds, requirements/{lock.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
