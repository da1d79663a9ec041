"""ft_roofline: the bytes it counts are the runtime's, the bound switches from memory to compute where the
arithmetic says, the copy timing runs, and the files of the long GPU runs are read or refused clearly."""
import json

import pytest
import torch

import ft_bench
import ft_roofline as R
import ft_runtime_gptj

H200 = (R.H200["copy_tb_per_s"], R.H200["fp16_tflops"])


@pytest.mark.parametrize("int8", [None, "dequant"])
def test_weight_bytes_match_the_runtime(int8):
    torch.manual_seed(0)
    model = ft_bench.random_gptj("tiny", torch.float32, "cpu")
    rt = ft_runtime_gptj.GPTJRuntime.from_hf(model, dtype=torch.float32, device="cpu", max_len=16, int8=int8)
    assert R.step_weight_bytes(R.config_of(model.config), dtype_bytes=4, int8=bool(int8)) == rt.weight_bytes()


def test_gptj_6b_floors():
    fp16, int8 = R.step_weight_bytes(R.GPTJ_6B), R.step_weight_bytes(R.GPTJ_6B, int8=True)
    assert 11.5e9 < fp16 < 12.1e9                  # 6.05 B parameters less the embedding table, 2 bytes each
    assert 0.5 < int8 / fp16 < 0.53                 # layer GEMMs halved; the logits GEMM stays fp16
    b1 = R.decode_bound(R.GPTJ_6B, 1, 128, 64, *H200)
    assert b1["limit"] == "memory" and b1["kv_ms"] < 0.02 * b1["weights_ms"]
    assert b1["weights_ms"] == pytest.approx(fp16 / 4.3e12 * 1e3)


def test_bound_switches_to_compute_at_the_ridge():
    ridge = R.ridge_batch(R.GPTJ_6B, *H200)
    assert 200 < ridge < 260
    # with a one-position context the KV cache is negligible: the GEMMs decide
    assert R.step_bound(R.GPTJ_6B, int(ridge * 0.9), 1, *H200)["limit"] == "memory"
    assert R.step_bound(R.GPTJ_6B, int(ridge * 1.1), 1, *H200)["limit"] == "compute"
    # with 128 + 128 tokens the KV cache keeps batch 64 memory-bound, and it reads GBs a step
    b64 = R.decode_bound(R.GPTJ_6B, 64, 128, 128, *H200)
    assert b64["limit"] == "memory" and b64["kv_ms"] * 4.3 > 4.0    # GB
    e2e = R.generate_bound(R.GPTJ_6B, 64, 128, 128, *H200)
    assert e2e["tokens_per_s"] < b64["tokens_per_s"] and e2e["context_ms"] > b64["bound_ms"]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="batch=0"):
        R.step_bound(R.GPTJ_6B, 0, 10, *H200)
    with pytest.raises(ValueError, match="inter_size"):
        R.step_weight_bytes({"hidden": 4, "vocab_size": 10, "num_layer": 1})
    with pytest.raises(ValueError, match="at least 2 new tokens"):
        R.decode_bound(R.GPTJ_6B, 1, 8, 1, *H200)
    with pytest.raises(ValueError, match="positive"):
        R.copy_tb_per_s("cpu", nbytes=0)


def test_copy_bandwidth_on_the_cpu():
    assert R.copy_tb_per_s("cpu", nbytes=1 << 20, repeat=3) > 0


def test_stage_file(tmp_path):
    path = tmp_path / "batch_bench.json"
    assert R.load_stage(path) is None
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        R.load_stage(path)
    path.write_text(json.dumps({"metrics": {}}))
    with pytest.raises(ValueError, match="none of the parts"):
        R.load_stage(path)
    path.write_text(json.dumps({"metrics": {}, "gptj_batch": {}, "tiny": True}))
    with pytest.raises(ValueError, match="--tiny"):
        R.load_stage(path)


def test_served_row(tmp_path):
    path = tmp_path / "served_gpu.json"
    assert R.served_tokens_per_s(path) is None
    path.write_text(json.dumps({"machine": {"gpu": "x"}, "load": [{"clients": 1, "tokens_per_s": 300.0},
                                                                 {"clients": 32, "tokens_per_s": 4000.0}]}))
    assert R.served_tokens_per_s(path)["tokens_per_s"] == 4000.0
    assert R.served_tokens_per_s(path, clients=8) is None


def test_goals():
    rows = {r["metric"]: r for r in R.goals({"gptj_ms_per_token": 3.5, "gptj_int8_ms_per_token": 1.9,
                                             "gptj_int8_perplexity_rel_change": -0.02,
                                             "t5_small_batch_speedup_vs_hf": 9.0}, copy_bw=4.3,
                                            kernels=[("gemv_kernel", 1.2, 28)])}
    assert rows["gptj_ms_per_token"]["met"] is False
    assert "78% of the 4.30 TB/s" in rows["gptj_ms_per_token"]["why"] and "gemv_kernel" in rows["gptj_ms_per_token"]["why"]
    assert rows["gptj_int8_ms_per_token"]["met"] is True
    assert rows["gptj_int8_perplexity_rel_change"]["met"] is False       # 2% is outside 1%
    assert rows["t5_small_batch_speedup_vs_hf"]["met"] is None and rows["t5_small_batch_speedup_vs_hf"]["why"] == "9.0x greedy"
    assert rows["gptj_batch64_tokens_per_s"]["met"] is None and "not measured" in rows["gptj_batch64_tokens_per_s"]["why"]


def test_bound_table_grows_with_batch_until_the_kv_cache_weighs():
    rows = R.bound_table(R.GPTJ_6B, [1, 64, 256], 128, 128, *H200)
    tps = [r["decode_tokens_per_s"] for r in rows]
    assert tps[0] < tps[1] < tps[2] and tps[1] / tps[0] < 64        # the batch shares the weights, not the KV
    assert all(r["end_to_end_tokens_per_s"] <= r["decode_tokens_per_s"] * 1.001 for r in rows)
    assert rows[-1]["kv_cache_ms"] > rows[-1]["weights_ms"]


def test_batch64_goal_names_a_faster_decode_attention_only_when_there_is_one():
    base = {"gptj_batch64_tokens_per_s": 7700.0, "gptj_batch64_tokens_per_s_attn_reduce": 7700.0}
    why = lambda m: {r["metric"]: r for r in R.goals(m)}["gptj_batch64_tokens_per_s"]["why"]   # noqa: E731
    faster = {**base, "gptj_batch64_tokens_per_s_attn_sdpa": 8100.0, "gptj_batch64_tokens_per_s_attn_bmm": 7000.0}
    assert why(faster).endswith("; decode attention 'sdpa': 8,100 tokens/s")
    assert "decode attention" not in why({**base, "gptj_batch64_tokens_per_s_attn_bmm": 7000.0})   # the default is fastest
    assert {r["metric"]: r for r in R.goals(faster)}["gptj_batch64_tokens_per_s"]["measured"] == 7700.0


def test_kernel_split_counts_gemms_by_name_and_the_rest_as_other():
    rows = [("TOTAL kernel ms per step", 3.3, 676), ("nvjet_sm90_hsh_256x8_64x6", 1.6, 28),
            ("triton_red_fused__softmax_add", 0.1, 28), ("void cublasLt::splitKreduce_kernel<32>", 0.06, 28),
            ("_w8a16_kernel", 0.5, 56), ("ampere_fp16_s16816gemm_fp16_128x128", 0.2, 1)]
    k = R.kernel_split(rows, step_ms=3.5)
    assert k["gemm_ms"] == pytest.approx(1.6 + 0.06 + 0.5 + 0.2) and k["other_ms"] == pytest.approx(3.3 - 2.36)
    assert k["gap_ms"] == pytest.approx(0.2) and R.kernel_split(rows, step_ms=3.0)["gap_ms"] == 0.0
    assert R.kernel_split(rows[1:3])["kernel_ms"] == pytest.approx(1.7) and "gap_ms" not in R.kernel_split(rows[1:3])


def test_goals_say_where_the_step_time_goes_and_how_the_served_rate_compares():
    m = {"gptj_ms_per_token": 3.5, "gptj_step_gemm_ms": 2.9, "gptj_step_other_kernel_ms": 0.4, "gptj_step_gap_ms": 0.2,
         "triton_gptj_tokens_per_s_32_clients": 2400.0, "triton_gptj_direct_tokens_per_s_batch32": 4800.0,
         "triton_gptj_requests_per_execution_32_clients": 16.0}
    rows = {r["metric"]: r["why"] for r in R.goals(m, copy_bw=4.0, kernels=[("TOTAL kernel ms per step", 3.3, 9)])}
    assert f"GEMM kernels 2.90 ms ({R.GPTJ_6B_FP16_GB / 2.9:.2f} TB/s of weights" in rows["gptj_ms_per_token"]
    assert rows["gptj_ms_per_token"].endswith("other kernels 0.40 ms, between kernels 0.20 ms")
    assert rows["triton_gptj_tokens_per_s_32_clients"] == ("2,400 tokens/s = 0.50x the direct runtime at batch 32 in "
                                                           "the same run (4,800); 16.0 requests per execution")
    assert "TOTAL" not in {r["metric"]: r["why"] for r in R.goals({"gptj_ms_per_token": 3.5}, kernels=[
        ("TOTAL kernel ms per step", 3.3, 9), ("gemv", 1.0, 28)])}["gptj_ms_per_token"]
