"""ft_served_gpu's measurement on the CPU with the tiny model (the served repository itself, both protocols,
bad requests and failures are tested in test_triton_hardening.py against one server)."""
import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton carries the tritonserver binary")


def test_served_overhead_gptj_only_repo(tmp_path, gptj_model):
    """ft_served_gpu (the full profile's GPU measurement) on the CPU with the tiny model: a GPT-J-only
    repository, the warm-up in initialize, both protocols timed against the server's own statistics."""
    import ft_served_gpu
    res = ft_served_gpu.measure(gptj_model, tmp_path, [15496, 995, 11, 314], output_lens=(2, 4), repeat=2,
                                per_token_repeat=1, device="cpu", data_type="fp32", start_timeout=240, log=lambda *a: None)
    repo = tmp_path / "model_repository_gpu"
    assert not (repo / "t5").exists() and (repo / "gptj").exists()
    assert 'key: "warmup" value: { string_value: "1" }' in (repo / "gptj" / "config.pbtxt").read_text()
    assert set(res["overhead"]) == {"grpc, 2 new tokens", "grpc, 4 new tokens", "http, 2 new tokens", "http, 4 new tokens"}
    for row in res["overhead"].values():
        assert 0 < row["model_ms"] < row["client_ms"]
        assert row["overhead_fraction"] == pytest.approx(row["client_ms"] / row["model_ms"] - 1)
    assert set(res["per_token"]) == {"grpc", "http"} and res["per_token"]["grpc"]["ms_per_token"] > 0
    assert not (tmp_path / "gptj_ft_fp32").exists()   # the converted checkpoint is removed afterwards
