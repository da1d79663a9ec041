"""Pytest checks of the two locks (run by `make test`): the GPU lock is the CPU lock with only the CUDA
builds swapped in, every line is an exact pin, and the installers read the lock they should."""
import os
import subprocess
import sys

import pytest

import freeze_lock
from notebooks import ROOT

CPU, GPU = ROOT / "requirements" / "lock.txt", ROOT / "requirements" / "lock-gpu.txt"
# packages only the GPU lock may hold: the CUDA builds' own dependencies
CUDA_ONLY_PREFIXES = ("nvidia-", "jax-cuda", "cuda-", "triton")


def test_every_line_of_both_locks_is_an_exact_pin():
    for path in (CPU, GPU):
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                assert "==" in line and not any(c in line for c in "<>~*"), f"{path.name}: {line}"


def test_gpu_lock_differs_from_cpu_lock_only_in_the_cuda_builds():
    cpu, gpu = freeze_lock.pins(CPU), freeze_lock.pins(GPU)
    swapped = {"torch", "tensorflow-cpu", "tensorflow"}
    for name, version in cpu.items():
        if name in swapped:
            continue
        assert gpu.get(name) == version, f"{name}: CPU {version} vs GPU {gpu.get(name)}"
    # torch: the same release, CUDA build (no +cpu local version); TF: the full package for tensorflow-cpu
    assert gpu["torch"] == cpu["torch"].split("+")[0] and "+cpu" in cpu["torch"]
    assert gpu["tensorflow"] == cpu["tensorflow-cpu"] and "tensorflow-cpu" not in gpu
    extra = sorted(n for n in gpu if n not in cpu and n != "tensorflow")
    assert extra and all(n.startswith(CUDA_ONLY_PREFIXES) for n in extra), extra
    assert "jax-cuda12-plugin" in gpu and gpu["jax-cuda12-plugin"] == cpu["jax"]


def test_gpu_lock_header_names_the_driver_and_the_command():
    head = GPU.read_text().splitlines()[:3]
    assert any("make lock" in l for l in head) and any("driver" in l for l in head)


def test_bootstrap_picks_the_lock_by_flavour_and_make_passes_gpu():
    import bootstrap
    assert bootstrap.LOCKS["gpu"] == GPU and bootstrap.LOCKS["cpu"] == CPU
    make = (ROOT / "Makefile").read_text()
    assert "bootstrap.py $(if $(GPU),--gpu,)" in make
    assert "GPU=1" in (ROOT / ".github" / "workflows" / "gpu.yml").read_text()


@pytest.mark.skipif(not os.environ.get("LABKIT_RESOLVE_GPU_LOCK"),
                    reason="downloads several GB of CUDA wheels to resolve; set LABKIT_RESOLVE_GPU_LOCK=1 to run")
def test_pip_resolves_the_gpu_lock_as_pinned():
    res = subprocess.run([sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed",
                          "--no-deps", "-q", "-r", str(GPU)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed",
                          "-q", "-r", str(GPU)], capture_output=True, text=True)
    assert res.returncode == 0 and "Would install" in res.stdout, res.stderr[-2000:]
