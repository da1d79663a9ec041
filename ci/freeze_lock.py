"""Write both locks (`make lock`): requirements/lock.txt from the current venv (after
`pip install -r requirements.in`), then requirements/lock-gpu.txt by pip's resolver.

The GPU lock is the CPU lock with the CUDA builds swapped in (GPU_SWAPS below: torch's default PyPI
build, TensorFlow with its CUDA extra, JAX with its CUDA 12 plugin) and every other package pinned to
the CPU lock's version (all of lock.txt is passed as exact requirements). pip resolves it for this platform (Linux
x86_64, the pinned Python) from PyPI itself (--isolated: no local wheel folders, whose CPU torch would
otherwise win), without installing anything (--dry-run --report). It downloads the large CUDA wheels
to read their metadata: expect several minutes. `--gpu-only` redoes just the GPU lock.
"""
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
# package in the CPU lock -> what a GPU runner installs instead (one place for the GPU differences)
GPU_SWAPS = {"torch": "torch=={v}", "tensorflow-cpu": "tensorflow[and-cuda]=={v}", "jax": "jax[cuda12]=={v}"}
CUDA_DRIVER = "NVIDIA driver >= 580 (CUDA 13 for torch 2.13.0; TensorFlow and JAX bring CUDA 12.9 wheels)"


def name(line):
    return line.split("==")[0].split(" @ ")[0].split("[")[0].strip().lower().replace("_", "-")


def pins(path: Path) -> dict:
    """name -> version of a lock file's `name==version` lines."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            out[name(line)] = line.split("==", 1)[1].strip()
    return out


def write(path: Path, header: list, lines: list) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(header + lines) + "\n")
    tmp.replace(path)


def freeze_cpu() -> None:
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    # requirements/nodeps.txt is installed apart, with --no-deps: keep those out of the lock
    nodeps = {name(l) for l in (REQ / "nodeps.txt").read_text().splitlines() if l.strip() and not l.startswith("#")}
    lines = [l for l in frozen if l and name(l) != "labkit" and name(l) not in nodeps]
    write(REQ / "lock.txt", [f"# Exact pins resolved from requirements.in with 'make lock' on Python "
                             f"{sys.version_info.major}.{sys.version_info.minor} ({datetime.date.today().isoformat()}).",
                             "# Every installer reads this file: the Makefile's venv, CI and environment.yml."], lines)
    print(f"wrote requirements/lock.txt ({len(lines)} pins)")


def gpu_inputs(cpu: dict) -> list:
    """The GPU resolve's requirements: every CPU pin, the swapped packages replaced by their CUDA builds."""
    reqs = []
    for pkg, version in cpu.items():
        base = version.split("+")[0]  # torch 2.13.0+cpu -> 2.13.0 (PyPI's default build is the CUDA one)
        reqs.append(GPU_SWAPS[pkg].format(v=base) if pkg in GPU_SWAPS else f"{pkg}=={version}")
    return reqs


def freeze_gpu() -> None:
    cpu = pins(REQ / "lock.txt")
    reqs = gpu_inputs(cpu)
    with tempfile.TemporaryDirectory() as tmp:
        req, report = Path(tmp) / "gpu.in", Path(tmp) / "report.json"
        req.write_text("\n".join(reqs) + "\n")
        subprocess.run([sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed",
                        "--quiet", "--report", str(report), "-r", str(req)], check=True)
        got = {m["name"]: m["version"] for m in (i["metadata"] for i in json.loads(report.read_text())["install"])}
    lines = sorted((f"{n}=={v}" for n, v in got.items() if name(n) not in {"pip", "setuptools", "wheel"}),
                   key=lambda l: name(l))
    write(REQ / "lock-gpu.txt", [
        f"# GPU runners (`make setup GPU=1`): requirements/lock.txt with the CUDA builds swapped in, resolved by pip",
        f"# for Linux x86_64, Python {sys.version_info.major}.{sys.version_info.minor} ({datetime.date.today().isoformat()}, "
        f"'make lock'; see ci/freeze_lock.py). Needs an {CUDA_DRIVER}."], lines)
    print(f"wrote requirements/lock-gpu.txt ({len(lines)} pins)")


if __name__ == "__main__":
    if "--gpu-only" not in sys.argv:
        freeze_cpu()
    freeze_gpu()
