"""The TP=2 benchmark path (ft_tp_bench) on CPU: two gloo ranks, a tiny GPT-J, the same code as on two GPUs."""
import math

import pytest
import torch

import ft_runtime_gptj as rg
import ft_tp_bench as tb


def test_rank_tensors_split_the_model_in_halves():
    model = tb.build_model("tiny", torch.float32, "cpu", seed=3)
    meta1, whole = tb.rank_tensors(model, 1, 0)
    parts = [tb.rank_tensors(model, 2, r) for r in (0, 1)]
    assert meta1["tensor_para_size"] == 1 and all(m["tensor_para_size"] == 2 for m, _ in parts)
    assert set(whole) == set(parts[0][1]) == set(parts[1][1])
    name = "model.layers.1.mlp.dense_4h_to_h.weight"      # split on axis 0
    assert torch.equal(torch.cat([parts[0][1][name], parts[1][1][name]], 0), whole[name])
    name = "model.layers.0.attention.query_key_value.weight"  # split on the last axis
    assert torch.equal(torch.cat([parts[0][1][name], parts[1][1][name]], -1), whole[name])
    assert torch.equal(parts[1][1]["model.wte"], whole["model.wte"])


def test_tp2_benchmark_with_gloo_matches_tp1_and_hf(tmp_path):
    out = tmp_path / "tp2.json"
    res = tb.run(arch="tiny", device="cpu", dtype="fp32", world=2, prompt_len=16, new_tokens=6, repeat=1,
                 modes=("graph", "eager"), max_len=64, time_limit=120, out=str(out))
    assert res["complete"] and res["exitcodes"] == [0, 0] and not res["errors"], res.get("errors")
    assert out.exists() and not res["killed_at_time_limit"]
    assert res["checks"]["same weights on every rank"] is True
    for mode in ("graph", "eager"):
        t1, t2 = res["tp1"][mode], res["tp2"][mode]
        assert len(t2["tokens"]) == 6 and t2["tokens"] == t1["tokens"], mode
        assert res["checks"][f"{mode}: TP=2 greedy tokens == TP=1"] is True
        assert math.isfinite(t2["ms_per_token"]) and t2["ms_per_token"] > 0
        assert t2["speedup_vs_tp1"] == pytest.approx(t1["ms_per_token"] / t2["ms_per_token"])
    s = res["summary"]
    assert s["mode"] == "graph" and s["same_tokens"] is True
    assert s["gptj_tp2_ms_per_token"] == res["tp2"]["graph"]["ms_per_token"]
    assert s["gptj_tp2_speedup_vs_tp1"] == pytest.approx(s["gptj_tp1_ms_per_token"] / s["gptj_tp2_ms_per_token"])
    # the ranks ran the intended model: the same greedy tokens in this process, by the runtime and by HF
    model = tb.build_model("tiny", torch.float32, "cpu", seed=0)
    prompt = tb.make_prompt(16, 50000, 0)
    rt = rg.GPTJRuntime.from_hf(model, max_len=64, max_batch=1)
    assert rt.generate([prompt], 6, stop_at_end=False)[0][0].tolist() == res["tp1"]["graph"]["tokens"]
    ids = torch.tensor([prompt])
    with torch.no_grad():
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                            do_sample=False, pad_token_id=50256)[0, 16:].tolist()
    assert hf == res["tp2"]["graph"]["tokens"]


def test_summary_without_a_common_mode_is_empty():
    res = {"config": {"modes": ["graph", "eager"]}, "tp1": {"graph": {"ms_per_token": 2.0}},
           "tp2": {"eager": {"ms_per_token": 1.0}}, "checks": {}}
    assert tb.summarize(res) == {}
    res["tp2"]["graph"] = {"ms_per_token": 1.0}
    assert tb.summarize(res)["gptj_tp2_speedup_vs_tp1"] == 2.0
    # compiled is preferred where both sizes have it; a ms/token well below the replay time is flagged
    res["tp1"]["compiled"] = {"ms_per_token": 1.5, "graph_replay_ms": 1.4}
    res["tp2"]["compiled"] = {"ms_per_token": 0.5, "graph_replay_ms": 1.0}
    s = tb.summarize(res)
    assert s["mode"] == "compiled" and s["gptj_tp2_speedup_vs_tp1"] == 3.0
    assert s["speedup_by_graph_replay"] == pytest.approx(1.4) and s["consistent_with_replay"] is False
