"""The notebook's full-profile branch of section 6's batch/int8/served cells, run on the CPU against a recorded
H200 stage file (results/batch_bench_h200_20261202.json: ft_batch_bench's merged output, the published run's) and a served_gpu.json of
ft_served_gpu's shape: CI cannot run the GPU profile, and an error in these cells would only show on the GPU."""
import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]
MARKERS = ("import ft_roofline as R", "bb = R.load_stage(", "SAME_NAME = {", "bw = copy_bw or BW")


def cells():
    nb = json.loads((HERE / "01_triton_gptj_t5.ipynb").read_text())
    src = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    found = [next((s for s in src if m in s), None) for m in MARKERS]
    assert all(found), f"notebook cells not found: {[m for m, s in zip(MARKERS, found) if s is None]}"
    return found


def served(clients=(1, 8, 32)):
    """What ft_served_gpu.main writes, with made-up numbers (the tables' code is under test, not the values)."""
    return {"overhead": {}, "per_token": {}, "machine": {"gpu": "NVIDIA H200"}, "date": "2026-12-01 00:00 UTC",
            "direct": [{"batch": k, "request_ms": 100.0 + k, "tokens_per_s": 600.0 * k} for k in clients],
            "load": [{"clients": k, "requests": 4 * k, "failed": 0, "errors": [], "p50_ms": 200.0 + k,
                      "p99_ms": 250.0 + k, "tokens_per_s": 500.0 * k, "generated_tokens": 256 * k, "wall_s": 2.0,
                      "requests_per_execution": float(k)} for k in clients]}


def test_full_profile_cells_load_the_stage_files_and_judge_every_goal(tmp_path, monkeypatch, capsys):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import torch
    import labkit
    monkeypatch.setenv("LABKIT_STAGE_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    stage = labkit.stage_dir("01_triton_gptj_t5", "full")
    (stage / "batch_bench.json").write_text((HERE / "results" / "batch_bench_h200_20261202.json").read_text())
    (stage / "served_gpu.json").write_text(json.dumps(served()))
    shown = []
    ns = dict(BIG=True, np=np, pd=pd, plt=plt, torch=torch, labkit=labkit, FOLDER="01_triton_gptj_t5", metrics={},
              time=__import__("time"), display=shown.append)
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    for i, src in enumerate(cells()):
        exec(compile(src, f"<notebook cell {MARKERS[i]!r}>", "exec"), ns)
    plt.close("all")
    out = capsys.readouterr().out
    assert "loaded from 01_triton_gptj_t5.full/batch_bench.json" in out and "NOT this notebook's GPU" not in out
    m = ns["metrics"]
    assert m["gptj_int8_ms_per_token"] == pytest.approx(2.591, abs=1e-3) and m["gptj_int8_token_agreement"] == 1.0
    assert m["gptj_batch64_tokens_per_s"] == pytest.approx(7624, abs=1) and m["t5_small_batch_speedup_vs_hf"] == pytest.approx(19.14, abs=0.01)
    assert m["triton_gptj_tokens_per_s_32_clients"] == 500.0 * 32
    assert m["triton_gptj_direct_tokens_per_s_batch32"] == 600.0 * 32 and m["triton_gptj_requests_per_execution_32_clients"] == 32
    assert m["gptj_step_gemm_ms"] == pytest.approx(2.867, abs=1e-3) and m["gptj_batch64_step_other_kernel_ms"] > 3
    load = next(t for t in shown if "served_over_direct" in getattr(t, "columns", []))
    assert list(load.index) == [1, 8, 32] and (load["served_over_direct"] == round(500 / 600, 2)).all()
    goals = next(t for t in shown if "met" in getattr(t, "columns", []))
    assert set(goals["met"]) <= {"met", "MISSED", "reported", "-"} and "MISSED" in set(goals["met"])
    why = goals["why"]
    assert "(triton GEMM); a step: GEMM kernels 2.05 ms" in why["GPT-J-6B int8 weight-only batch 1"]
    assert "GEMM kernels 2.87 ms (4.08 TB/s of weights" in why["GPT-J-6B fp16 batch 1"]
    assert why["GPT-J-6B fp16 batch 64, 128 in / 128 out"].endswith("; decode attention 'bmm': 8,559 tokens/s")
    assert why["served GPT-J-6B, 32 gRPC clients"].endswith("(19,200); 32.0 requests per execution")
