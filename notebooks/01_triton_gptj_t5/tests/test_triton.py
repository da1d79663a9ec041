"""The real tritonserver (from nvidia-pytriton) serving a generated repository: both protocols, bad
requests, dynamic batching, and no process left behind after stop."""
import os

import numpy as np
import psutil
import pytest

import ft_client
import ft_triton_repo
import ft_weights

pytest.importorskip("pytriton", reason="nvidia-pytriton carries the tritonserver binary")


def _group(pgid):
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid:
                out.append(p.info["pid"])
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def test_server_end_to_end(tmp_path, ft_dirs):
    tok = ft_weights.gpt2_tokenizer_files() / "tokenizer.json"
    repo = ft_triton_repo.build_repository(tmp_path / "repo", ft_dirs[("gptj", 1)], ft_dirs[("t5", 2)], tok,
                                           tensor_para_size=1, t5_tensor_para_size=2, max_output_len=8)
    assert "tensor_para_size" in (repo / "gptj" / "config.pbtxt").read_text()
    server = ft_triton_repo.triton_server(repo, ft_weights.cache_dir(), log_path=tmp_path / "triton.log")
    try:
        server.start()
        pgid = server.pid
        members = _group(pgid)
        assert len(members) >= 1 + 4 + 2  # server + 4 python stubs + 2 T5 tensor-parallel ranks
        for proto in ("http", "grpc"):
            c = ft_client.client(server.urls[proto], proto)
            table = ft_client.ready_table(c)
            assert set(table.index) == {"ensemble", "gptj", "preprocessing", "postprocessing", "t5"}
            assert (table["state"] == "READY").all()
            text = ft_client.gptj_text(c, proto, ["Hello world", "The capital of France is"], 4)
            assert text[0].startswith("Hello world") and text[1].startswith("The capital of France is")
            ids, lens = ft_client.gptj_ids(c, proto, [[15496, 995], [464, 3139, 286]], 3)
            assert ids.shape[:2] == (2, 1) and lens[:, 0].tolist() == [5, 6]
            assert ids[0, 0, :2].tolist() == [15496, 995]
            out, seq, cum = ft_client.t5_request(c, proto, [[5, 17, 1], [7, 8, 9, 1]], 6, beam_width=2)
            assert out.shape[:2] == (2, 2) and (seq <= 6).all() and (cum[:, 0] >= cum[:, 1]).all()
        bad = ft_client.malformed_requests(c, "grpc", 8)
        assert bad["rejected"].all() and bad["server ready after"].all()
        assert bad["error"].str.contains("UINT32").iloc[0]
        assert bad["error"].str.contains("empty prompt").iloc[2]
        assert bad["error"].str.contains("max_output_len").iloc[3]
        load = ft_client.load_run(server.urls["http"], ["Hello world"], 3, concurrency=3, requests=9)
        assert load["failed"] == 0 and load["p50_ms"] > 0
        stats = ft_client.batching_stats(c, "gptj")
        assert stats["inference_count"] >= 13
    finally:
        server.stop()
    assert _group(pgid) == []
    assert not server.alive()


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
