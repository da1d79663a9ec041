"""ft_batch_bench at toy sizes on the CPU (--tiny): the whole code path, every part, the metrics and the merge."""
import json

import pytest
import torch

import ft_batch_bench
import ft_roofline
import ft_w8_kernel
import labkit


def test_tiny_run_and_merge(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    r1 = ft_batch_bench.main(["--tiny", "--parts", "gptj_b1,gptj_batch", "--out", str(a)])
    r2 = ft_batch_bench.main(["--tiny", "--parts", "t5", "--out", str(b)])
    b1 = r1["gptj_b1"]
    assert not [k for k in b1["checks"] if "error" in k], b1["checks"]
    assert b1["checks"]["runtime: same greedy tokens as HF (first 8)"] is True
    assert set(b1["bench"]) == {"hf eager", "runtime", "runtime int8 dequant", "runtime int8 int8pack", "runtime int8 triton"}
    # the W8A16 path was checked against the float reference before timing (here: the CPU fallback's math)
    w8 = b1["bench"]["runtime int8 triton"]["w8_kernel"]
    assert w8["backend"] == ft_w8_kernel.backend("cpu") and w8["check_w1"]["max_err_over_tol"] <= 1.0
    c1, c2 = w8["check_w1"], w8["check_w2"]   # the step's two merged GEMMs: d -> [qkv | ffn] = 7d, [attn | ffn] = 5d -> d
    assert c1["rows"] == 1 and (c1["k"], c1["n"], c2["k"]) == (c2["n"], 7 * c2["n"], 5 * c2["n"])
    assert b1["bench"]["runtime int8 dequant"]["weight_gb"] < b1["bench"]["runtime"]["weight_gb"]
    assert b1["int8_quality"]["token_agreement"] >= 0.95 and b1["int8_quality"]["prompts"] == 2
    assert [r["batch"] for r in r1["gptj_batch"]["runtime"]] == [3] and r1["gptj_batch"]["hf"]["batch"] == 3
    bt = r1["gptj_batch"]
    assert "int8_triton_error" not in bt and bt["int8_triton"]["batch"] == 3 and bt["int8_triton"]["w8_kernel"]["check_w2"]["rows"] == 3
    # the largest batch again with every other decode attention, each timed (none failed)
    assert set(bt["decode_attn"]) == set(ft_batch_bench.DECODE_ATTN)
    assert all(r.get("ms_per_step", 0) > 0 and "error" not in r for r in bt["decode_attn"].values()), bt["decode_attn"]
    assert [(r["batch"], r["beam"]) for r in r2["t5"]["t5-tiny"]] == [(1, 1), (1, 4), (3, 1), (3, 4)]
    out = tmp_path / "merged.json"
    merged = ft_batch_bench.main(["--merge", str(a), str(b), "--out", str(out), "--note", "two toy runs"])
    m = json.loads(out.read_text())["metrics"]
    assert m == merged["metrics"]
    for key in ("gptj_ms_per_token", "gptj_int8_ms_per_token", "gptj_int8_token_agreement", "gptj_batch3_tokens_per_s",
                "gptj_batch3_int8_tokens_per_s",
                "t5_tiny_batch_speedup_vs_hf", "t5_tiny_batch_speedup_vs_hf_beam4"):
        assert key in m, key
    assert m["gptj_batch3_tokens_per_s"] > 0 and len(merged["runs"]) == 2
    attn = {a: m[f"gptj_batch3_tokens_per_s_attn_{a}"] for a in ft_batch_bench.DECODE_ATTN}   # each attention's rate
    assert attn == {a: r["tokens_per_s"] for a, r in bt["decode_attn"].items()} and min(attn.values()) > 0
    assert r1["copy_tb_per_s"] > 0 and merged["copy_tb_per_s"] == r1["copy_tb_per_s"] == m["copy_tb_per_s"]
    assert merged["parts_left"] == [] and merged["tiny"] is True and json.loads(out.read_text())["note"] == "two toy runs"
    with pytest.raises(ValueError, match="--tiny"):   # the notebook does not take a toy run for a measurement
        ft_roofline.load_stage(out)


def test_stage_merge_is_what_the_notebook_loads(tmp_path, monkeypatch):
    """--stage reads and writes in labkit.stage_dir(FOLDER, "full"); the merged file there is what the
    notebook's full profile loads. The inputs are one tiny run relabelled as not tiny (the file plumbing
    under test does not depend on the sizes)."""
    monkeypatch.setenv("LABKIT_STAGE_DIR", str(tmp_path / "stages"))
    r = ft_batch_bench.main(["--tiny", "--parts", "gptj_batch", "--out", str(tmp_path / "t.json")])
    stage = labkit.stage_dir(ft_batch_bench.FOLDER, "full")
    (stage / "bt.json").write_text(json.dumps(dict(r, tiny=False, parts_left=["t5"])))
    merged = ft_batch_bench.main(["--stage", "--merge", "bt.json"])
    loaded = ft_roofline.load_stage(stage / "batch_bench.json")
    assert loaded["metrics"] == merged["metrics"] and loaded["metrics"]["gptj_batch3_tokens_per_s"] > 0
    assert loaded["parts_left"] == ["t5"] and loaded["copy_tb_per_s"] == r["copy_tb_per_s"]


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        ft_batch_bench.main(["--tiny", "--parts", "gptj_b1,nope"])
    assert "unknown part(s) ['nope']" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            ft_batch_bench.main(["--parts", "t5"])
        assert "no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ft_batch_bench.main(["--tiny", "--parts", "gptj_b1", "--int8", "dequant,fp8"])
    assert "--int8 'dequant,fp8': name one or more of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ft_batch_bench.main(["--tiny", "--stage"])
    assert "a --tiny run is not one" in capsys.readouterr().err


def test_gemm_probe_shapes(gptj_model):
    """The probe times GPT-J's two merged decode GEMMs (d -> 3d + inner, d + inner -> d) per layout and row count
    (on a GPU with a CUDA graph; here a stand-in timer that runs the calls and says 2 ms for the 4 of them)."""
    calls = []
    rows = ft_batch_bench.gemm_probe(gptj_model.config, [1, 3], "cpu", timer=lambda fn: (calls.append(fn()), 2.0)[1])
    assert [(r["gemm"], r["layout"], r["rows"]) for r in rows] == [
        (g, lay, m) for g in ("w1", "w2") for lay in ("kn", "nk") for m in (1, 3)]
    assert {(r["k"], r["n"]) for r in rows} == {(64, 3 * 64 + 256), (64 + 256, 64)}
    assert all(len(c) == 4 and c[0].shape in ((1, 448), (3, 448), (1, 64), (3, 64)) for c in calls)
    assert rows[0]["ms"] == 0.5 and rows[0]["weight_tb_per_s"] == 64 * 448 * 2 / 0.5e-3 / 1e12


def test_triton_gemv_metric_is_bytes_over_time():
    """Two GEMMs, 100 GB/s for 1 ms and 400 GB/s for 2 ms: 0.9 GB in 3 ms = 0.3 TB/s, 0.1 of a 3 TB/s copy."""
    tune = lambda gbs, ms: {"best": {"weight_gb_per_s": gbs, "ms": ms}}
    b1 = {"bench": {"runtime int8 triton": {"w8_kernel": {"tune_w1": tune(100.0, 1.0), "tune_w2": tune(400.0, 2.0)}}}}
    m = ft_batch_bench.metrics({"gptj_b1": b1, "copy_tb_per_s": 3.0})
    assert m["gptj_int8_triton_gemv_tb_per_s"] == pytest.approx(0.3)
    assert m["gptj_int8_triton_gemv_fraction_of_copy"] == pytest.approx(0.1)
    assert "gptj_int8_triton_gemv_tb_per_s" not in ft_batch_bench.metrics({"gptj_b1": {"bench": {}}})


def test_step_time_split_metrics_from_the_kernel_tables():
    """Batch 1 fp16 and int8 and the batch-64 step: GEMM kernels, other kernels, and the step's time between kernels."""
    table = lambda gemm: [("TOTAL kernel ms per step", 3.0, 100), (gemm, 2.0, 28), ("triton_red_fused_softmax", 0.5, 28)]
    bench = {"runtime": {"ms_per_token": 3.5, "speedup_vs_hf": 9.0, "kernels": table("nvjet_sm90_hsh_256x8")},
             "runtime int8 triton": {"ms_per_token": 3.2, "kernels": table("_w8a16_kernel")}}
    batch = {"runtime": [{"batch": 64, "ms_per_step": 2.5, "tokens_per_s": 1.0, "decode_tokens_per_s": 1.0}],
             "speedup_vs_hf": 1.0, "kernels": table("cutlass_80_tensorop_gemm")}
    m = ft_batch_bench.metrics({"gptj_b1": {"bench": bench, "int8_best": "runtime int8 triton"}, "gptj_batch": batch})
    for p in ("gptj_step", "gptj_int8_step", "gptj_batch64_step"):
        assert (m[f"{p}_gemm_ms"], m[f"{p}_other_kernel_ms"]) == (2.0, 1.0), p
    assert m["gptj_step_gap_ms"] == pytest.approx(0.5) and m["gptj_int8_step_gap_ms"] == pytest.approx(0.2)
    assert m["gptj_batch64_step_gap_ms"] == 0.0          # the profile's total exceeds the graph's step: no gap
    assert "gptj_step_gemm_ms" not in ft_batch_bench.metrics({"gptj_b1": {"bench": {"runtime": {"ms_per_token": 1.0,
                                                                                                 "speedup_vs_hf": 1.0}}}})


def test_quality_failure_keeps_the_timings(tmp_path, monkeypatch):
    """The int8 quality step needs the gpt2_bpe data (an H200 run lost a whole part's timings when it was not
    carried): its failure is recorded in checks, the timings and the timing metrics stay, the quality keys are absent."""
    def no_data(**kw):
        raise labkit.data.DataError("gpt2_bpe: not here")
    monkeypatch.setattr(ft_batch_bench.ft_int8, "tiny_gptj_quality", no_data)
    r = ft_batch_bench.main(["--tiny", "--parts", "gptj_b1", "--int8", "dequant", "--out", str(tmp_path / "a.json")])
    b1 = r["gptj_b1"]
    assert "gpt2_bpe: not here" in b1["checks"]["int8 quality: error"] and "int8_quality" not in b1
    assert b1["bench"]["runtime int8 dequant"]["ms_per_token"] > 0
    m = ft_batch_bench.main(["--merge", str(tmp_path / "a.json"), "--out", str(tmp_path / "m.json")])["metrics"]
    assert m["gptj_int8_ms_per_token"] > 0 and "gptj_int8_token_agreement" not in m
