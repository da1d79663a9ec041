import pytest

import ft_gemm


def test_config_round_trip_and_plan(tmp_path):
    meta = {"hidden": 64, "inter_size": 256, "vocab_size": 1000}
    rows = ft_gemm.tune(ft_gemm.gptj_gemm_shapes(meta, 2, 4), iters=3, heads=4, head_dim=16, kv_len=16)
    assert len(rows) == 12  # 5 GEMMs x 2 phases + 2 attention
    path = ft_gemm.write_config(rows, tmp_path / "gemm_config.csv")
    back = ft_gemm.read_config(path)
    assert [(r["phase"], r["gemm"], r["m"], r["n"], r["k"], r["impl"]) for r in back] == \
           [(r["phase"], r["gemm"], r["m"], r["n"], r["k"], r["impl"]) for r in rows]
    for r in back:  # the chosen implementation is a fastest one (the file rounds to 0.1 us, so ties can appear)
        assert r["candidates"][r["impl"]] == min(r["candidates"].values())
    plan = ft_gemm.plan_from_config(path)
    decode = {r["gemm"]: r["impl"] for r in back if r["phase"] == "decode"}
    assert plan["qkv"]["layout"] == decode["qkv"] and plan["attention"]["impl"] == decode["attention"]
    gain = ft_gemm.predicted_gain(back, layers=2)
    assert gain["tuned_us"] <= gain["default_us"]


def test_shapes_follow_tensor_parallelism():
    meta = {"hidden": 4096, "inter_size": 16384, "vocab_size": 50400}
    s1 = {(r["phase"], r["gemm"]): r for r in ft_gemm.gptj_gemm_shapes(meta, 1, 128, tp=1)}
    s2 = {(r["phase"], r["gemm"]): r for r in ft_gemm.gptj_gemm_shapes(meta, 1, 128, tp=2)}
    assert s1[("context", "qkv")]["m"] == 128 and s1[("decode", "qkv")]["n"] == 12288
    assert s2[("decode", "qkv")]["n"] == 6144 and s2[("decode", "ffn2")]["k"] == 8192


def test_bad_file(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("nonsense\n")
    with pytest.raises(ValueError, match="gemm_config"):
        ft_gemm.read_config(p)
