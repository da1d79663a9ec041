"""ft_batch_bench at toy sizes on the CPU (--tiny): the whole code path, every part, the metrics and the merge."""
import json

import pytest
import torch

import ft_batch_bench


def test_tiny_run_and_merge(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    r1 = ft_batch_bench.main(["--tiny", "--parts", "gptj_b1,gptj_batch", "--out", str(a)])
    r2 = ft_batch_bench.main(["--tiny", "--parts", "t5", "--out", str(b)])
    b1 = r1["gptj_b1"]
    assert not [k for k in b1["checks"] if "error" in k], b1["checks"]
    assert b1["checks"]["runtime: same greedy tokens as HF (first 8)"] is True
    assert set(b1["bench"]) == {"hf eager", "runtime", "runtime int8 dequant", "runtime int8 int8pack"}
    assert b1["bench"]["runtime int8 dequant"]["weight_gb"] < b1["bench"]["runtime"]["weight_gb"]
    assert b1["int8_quality"]["token_agreement"] >= 0.95 and b1["int8_quality"]["prompts"] == 2
    assert [r["batch"] for r in r1["gptj_batch"]["runtime"]] == [3] and r1["gptj_batch"]["hf"]["batch"] == 3
    assert [(r["batch"], r["beam"]) for r in r2["t5"]["t5-tiny"]] == [(1, 1), (1, 4), (3, 1), (3, 4)]
    out = tmp_path / "merged.json"
    merged = ft_batch_bench.main(["--merge", str(a), str(b), "--out", str(out)])
    m = json.loads(out.read_text())["metrics"]
    assert m == merged["metrics"]
    for key in ("gptj_ms_per_token", "gptj_int8_ms_per_token", "gptj_int8_token_agreement", "gptj_batch3_tokens_per_s",
                "t5_tiny_batch_speedup_vs_hf", "t5_tiny_batch_speedup_vs_hf_beam4"):
        assert key in m, key
    assert m["gptj_batch3_tokens_per_s"] > 0 and len(merged["runs"]) == 2


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        ft_batch_bench.main(["--tiny", "--parts", "gptj_b1,nope"])
    assert "unknown part(s) ['nope']" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            ft_batch_bench.main(["--parts", "t5"])
        assert "no CUDA device" in capsys.readouterr().err
