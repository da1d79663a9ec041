"""Solutions to the exercises of 00_environment_check (run by tests/test_solutions.py)."""
from __future__ import annotations

import os
import tempfile

import labkit
from labkit import data
from labkit.paths import DATA_ENV


def exercise_1() -> str:
    """A bad device value is refused with a message that names the allowed ones."""
    try:
        labkit.check_params("smoke", "gpu", 0)
    except ValueError as err:
        return str(err)
    raise AssertionError("device='gpu' should have been refused")


def exercise_2(sizes=(64, 256, 1024)) -> dict:
    """ms per square matrix product for each size (plot these on log axes)."""
    import torch
    out = {}
    for n in sizes:
        m = torch.randn(n, n)
        out[n] = labkit.time_it(lambda: m @ m.T, repeat=5, warmup=1).ms
    return out


def exercise_3() -> bool:
    """Deleting a prepared file and asking again restores it (in a throwaway data root)."""
    old = os.environ.get(DATA_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[DATA_ENV] = tmp
        try:
            folder = data.require("astronaut")
            (folder / "astronaut.png").unlink()
            folder = data.require("astronaut")
            return data.check(data.registry()["astronaut"]) == [] and (folder / "astronaut.png").exists()
        finally:
            if old is None:
                os.environ.pop(DATA_ENV)
            else:
                os.environ[DATA_ENV] = old
