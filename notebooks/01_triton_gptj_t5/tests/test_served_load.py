"""ft_served_gpu's concurrent-clients load on the CPU with the tiny model: the gptj model with max_batch_size > 1
under dynamic batching, several gRPC clients at once, beside the direct runtime."""
import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton carries the tritonserver binary")


def test_concurrent_clients_are_batched(tmp_path, gptj_model):
    import ft_client
    import ft_served_gpu
    res = ft_served_gpu.measure(gptj_model, tmp_path, [15496, 995, 11, 314], output_lens=(2,), repeat=1,
                                per_token_repeat=1, device="cpu", data_type="fp32", start_timeout=240,
                                log=lambda *a: None, max_batch_size=4, clients=(1, 3), requests_per_client=2, load_len=4)
    assert [r["batch"] for r in res["direct"]] == [1, 3] and all(r["tokens_per_s"] > 0 for r in res["direct"])
    assert [r["clients"] for r in res["load"]] == [1, 3]
    for row in res["load"]:
        assert row["failed"] == 0 and row["requests"] == 2 * row["clients"], row
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["generated_tokens"] > 0
    assert res["load"][0]["requests_per_execution"] == 1.0       # one client: nothing to merge
    assert res["load"][1]["requests_per_execution"] > 1.0        # three at once: the batcher merged some
    assert 'max_batch_size: 4' in (tmp_path / "model_repository_gpu" / "gptj" / "config.pbtxt").read_text()
    rows = ft_served_gpu.load_table(res)        # what the notebook shows: served beside direct, per client count
    assert [r["clients"] for r in rows] == [1, 3]
    for row, load, direct in zip(rows, res["load"], res["direct"]):
        assert row["served_tokens_per_s"] == load["tokens_per_s"] and row["direct_tokens_per_s"] == direct["tokens_per_s"]
        assert row["served_over_direct"] == pytest.approx(load["tokens_per_s"] / direct["tokens_per_s"])
        assert row["direct_request_ms"] == direct["request_ms"]
    assert ft_served_gpu.load_table({"overhead": {}, "per_token": {}}) == []     # a run without clients


def test_more_clients_than_the_batch_is_refused(tmp_path, gptj_model):
    import ft_served_gpu
    with pytest.raises(ValueError, match="clients=8 exceeds max_batch_size=4"):
        ft_served_gpu.measure(gptj_model, tmp_path, [1, 2], device="cpu", max_batch_size=4, clients=(1, 8))
