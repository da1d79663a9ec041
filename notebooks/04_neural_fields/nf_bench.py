"""Encoding throughput: points per second through a grid, forward and forward+backward, eager and
torch.compile'd. Timings use labkit.time_it (warm-up, then the median of repeats, GPU synchronized)."""
from __future__ import annotations

import time
from typing import Dict, Optional

import torch

import labkit


def _sync(device):
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else None


def encoding_throughput(grid, n_points: int, repeat: int = 5, compiled: bool = False) -> Dict[str, float]:
    """Points/s for forward (no grad) and forward+backward (gradients into the features).
    With compiled=True the grid's forward goes through torch.compile; the first call's time
    (compilation included) is reported as compile_s."""
    dev = next(grid.parameters()).device
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.rand(n_points, grid.dim, device=dev, generator=g) * 2 - 1
    fn = torch.compile(grid, dynamic=False) if compiled else grid
    sync = _sync(dev)
    out = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        fn(x)
    if sync:
        sync()
    out["first_call_s"] = time.perf_counter() - t0

    def fwd():
        with torch.no_grad():
            fn(x)

    def fwd_bwd():
        grid.zero_grad(set_to_none=True)
        fn(x).sum().backward()

    fwd_bwd()                                   # compiles the backward graph too
    tf = labkit.time_it(fwd, repeat=repeat, warmup=1, sync=sync)
    tb = labkit.time_it(fwd_bwd, repeat=repeat, warmup=1, sync=sync)
    out.update(forward_pts_s=n_points / tf.median, backward_pts_s=n_points / tb.median,
               forward_ms=tf.ms, backward_ms=tb.ms)
    return out


def bench_grids(grids: Dict[str, torch.nn.Module], n_points: int, repeat: int = 5, compiled: bool = False,
                show_progress: bool = True, compile_budget_s: float = float("inf")):
    """One row per grid: eager throughput, and with compiled=True the compiled one and the speed-up.
    A grid whose compilation fails gets NaN compiled numbers and the error in the 'note' column; once
    the compilations have taken compile_budget_s seconds, the remaining grids are not compiled (noted)."""
    import pandas as pd
    rows, spent = [], 0.0
    items = list(grids.items())
    for name, grid in (labkit.progress(items, desc="encoding throughput") if show_progress else items):
        e = encoding_throughput(grid, n_points, repeat)
        row = {"grid": name, "params": grid.num_params(), "forward Mpts/s": e["forward_pts_s"] / 1e6,
               "fwd+bwd Mpts/s": e["backward_pts_s"] / 1e6}
        nan = float("nan")
        if compiled and spent > compile_budget_s:
            row.update({"compiled fwd Mpts/s": nan, "compiled fwd+bwd Mpts/s": nan, "compile speed-up fwd": nan,
                        "compile speed-up fwd+bwd": nan, "compile s": nan,
                        "note": f"not compiled: compile budget of {compile_budget_s:.0f} s spent"})
        elif compiled:
            try:
                t0 = time.perf_counter()
                c = encoding_throughput(grid, n_points, repeat, compiled=True)
                spent += time.perf_counter() - t0
                row.update({"compiled fwd Mpts/s": c["forward_pts_s"] / 1e6,
                            "compiled fwd+bwd Mpts/s": c["backward_pts_s"] / 1e6,
                            "compile speed-up fwd": c["forward_pts_s"] / e["forward_pts_s"],
                            "compile speed-up fwd+bwd": c["backward_pts_s"] / e["backward_pts_s"],
                            "compile s": c["first_call_s"], "note": ""})
            except Exception as exc:  # report, don't hide: the table says which grid did not compile
                row.update({"compiled fwd Mpts/s": float("nan"), "compiled fwd+bwd Mpts/s": float("nan"),
                            "compile speed-up fwd": float("nan"), "compile speed-up fwd+bwd": float("nan"),
                            "compile s": float("nan"), "note": f"{type(exc).__name__}: {str(exc)[:80]}"})
        rows.append(row)
    return pd.DataFrame(rows).set_index("grid")
