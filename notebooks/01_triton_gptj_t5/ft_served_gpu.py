"""GPT-J served by Triton with the model on the GPU: what the server adds to each request.

The in-memory model (GPT-J-6B in the full profile) is converted to FT's layout (fp16, tensor_para_size 1),
served as the `gptj` python-backend model on `cuda` (compiled decode step in a CUDA graph, warmed up
before the server reports READY), and timed over gRPC and HTTP at batch 1:
- overhead: the client's latency minus the time the server spent inside the model for exactly those
  requests (its own statistics), as a fraction of the model time (ft_client.served_overhead);
- ms per generated token through the server, measured like the direct runtime (ft_bench.triton_gptj);
- with `clients` (e.g. 1, 8, 32) and max_batch_size > 1: closed-loop load over gRPC, each client its own
  connection sending one request after another; the dynamic batcher merges concurrent requests into one
  execution, which the runtime decodes as one batch (one CUDA graph per batch bucket, warmed up here before
  timing). Generated tokens per second and p50/p99 latency, beside the direct runtime at batch = clients
  measured in this process before the server starts (same prompt and output length).

Also runs on its own (random GPT-J-6B weights: timing only):
    python ft_served_gpu.py --out served_gpu.json --max-batch-size 32 --clients 1,8,32
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import ft_bench
import ft_client
import ft_convert
import ft_runtime_gptj
import ft_triton_repo
import ft_weights


def load(url: str, prompt: Sequence[int], output_len: int, clients: int, requests: int, protocol: str = "grpc") -> dict:
    """`requests` gptj requests (one prompt each) from `clients` threads, each with its own client, one request
    after another; latency percentiles and generated tokens per second (from the returned sequence lengths)."""
    def send(c, i):
        _, lens = ft_client.gptj_ids(c, protocol, [prompt], output_len)
        return int(lens.reshape(-1)[0]) - len(prompt)          # tokens generated for this request

    run = ft_client.closed_loop(url, protocol, clients, requests, send)
    a, gen, wall = ft_client.latency_ms(run["latencies_s"]), sum(run["results"]), run["wall_s"]
    return {"clients": clients, "requests": requests, "failed": run["failed"], "errors": run["errors"],
            "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "tokens_per_s": gen / wall, "generated_tokens": gen, "wall_s": wall}


def direct(model, prompt: Sequence[int], output_len: int, batches: Sequence[int], device: str, dtype,
           repeat: int = 3) -> list:
    """The runtime in this process (as the served model builds it: CUDA graph on CUDA) at each batch of the
    same prompt: generated tokens per second over the whole request (context + decode)."""
    import labkit
    rt = ft_runtime_gptj.GPTJRuntime.from_hf(model, dtype=dtype, device=device, max_len=len(prompt) + output_len,
                                             max_batch=max(batches), cuda_graph=device.startswith("cuda"))
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    rows = []
    for b in batches:
        prompts = [list(prompt)] * b
        t = labkit.time_it(lambda: rt.generate(prompts, output_len, stop_at_end=False), repeat=repeat, warmup=1,
                           sync=sync).median
        rows.append({"batch": b, "request_ms": t * 1e3, "tokens_per_s": b * output_len / t})
    del rt
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def load_table(res: dict) -> list:
    """One row per client count of measure()'s "load": served tokens/s, p50/p99 latency, requests merged per
    execution and failures, beside the direct runtime at batch = clients (its tokens/s and time per request; same
    prompt and output length, same process) and the served/direct ratio; [] when the run had no load."""
    direct = {r["batch"]: r for r in res.get("direct", [])}
    rows = []
    for r in res.get("load", []):
        d = direct.get(r["clients"], {})
        tps = d.get("tokens_per_s")
        rows.append({"clients": r["clients"], "served_tokens_per_s": r["tokens_per_s"], "p50_ms": r["p50_ms"],
                     "p99_ms": r["p99_ms"], "requests_per_execution": r.get("requests_per_execution"),
                     "failed": r["failed"], "direct_tokens_per_s": tps, "direct_request_ms": d.get("request_ms"),
                     "served_over_direct": r["tokens_per_s"] / tps if tps else None})
    return rows


def measure(model, work: Path, prompt: Sequence[int], output_lens: Sequence[int] = (8, 64), repeat: int = 10,
            per_token_repeat: int = 3, device: str = "cuda", data_type: str = "fp16", start_timeout: float = 900.0,
            log=print, max_batch_size: int = 1, clients: Sequence[int] = (), requests_per_client: int = 4,
            load_len: int = 64) -> dict:
    """Serve `model` (an HF GPT-J) through a real tritonserver, the model on `device` in `data_type`
    (the tests use a tiny model on the CPU), and time it. Returns
    {"overhead": {"<protocol>, <n> new tokens": {...}}, "per_token": {...}, "start_s": ..., "convert_s": ...}
    and, with `clients`, "load" (per client count) and "direct" (the runtime at batch = each client count)."""
    if clients and max(clients) > max_batch_size:
        raise ValueError(f"clients={max(clients)} exceeds max_batch_size={max_batch_size}: the batcher could not "
                         "merge them all")
    work = Path(work)
    out = {"overhead": {}, "per_token": {}}
    out_max = max([*output_lens, load_len if clients else 0])
    if clients:
        dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[data_type]
        out["direct"] = direct(model, prompt, load_len, clients, device, dtype)
        log("direct runtime", out["direct"])
    ckpt_root = work / f"gptj_ft_{data_type}"
    t0 = time.perf_counter()
    ckpt = ft_convert.convert_gptj(model, model.config, ckpt_root, 1, data_type)
    convert_s = time.perf_counter() - t0
    log(f"converted to FT {data_type} in {convert_s:.0f} s ({ft_convert.ckpt_size_bytes(ckpt) / 1e9:.1f} GB)")
    repo = ft_triton_repo.build_repository(
        work / "model_repository_gpu", ckpt, None, ft_weights.gpt2_tokenizer_files() / "tokenizer.json",
        data_type=data_type, device=device, max_batch_size=max_batch_size,
        max_output_len=out_max, gptj_params={"warmup": 1, "max_seq_len": len(prompt) + out_max})
    server = ft_triton_repo.triton_server(repo, ft_weights.cache_dir(), log_path=work / "tritonserver_gpu.log",
                                          start_timeout=start_timeout)
    out["convert_s"] = convert_s
    try:
        t0 = time.perf_counter()
        server.start()
        out["start_s"] = time.perf_counter() - t0
        log(f"tritonserver with GPT-J on {device} ready in {out['start_s']:.0f} s (load, compile, graph capture)")
        for protocol in ("grpc", "http"):
            c = ft_client.client(server.urls[protocol], protocol)
            try:
                for n in output_lens:
                    out["overhead"][f"{protocol}, {n} new tokens"] = ft_client.served_overhead(c, protocol, prompt, n, repeat)
                out["per_token"][protocol] = ft_bench.triton_gptj(c, protocol, list(prompt), max(output_lens),
                                                                  repeat=per_token_repeat)
                if protocol == "grpc" and clients:
                    # one request per batch bucket: compiles and captures each before anything is timed
                    for b in ft_runtime_gptj.BUCKETS:
                        if b <= max_batch_size:
                            ft_client.gptj_ids(c, protocol, [list(prompt)] * b, 2)
            finally:
                c.close()
        if clients:
            out["load"] = []
            c = ft_client.client(server.urls["grpc"], "grpc")
            try:
                for k in clients:
                    _, n0 = ft_client._settled_model_time(c, "gptj")
                    s0 = ft_client.batching_stats(c, "gptj")
                    row = load(server.urls["grpc"], prompt, load_len, k, requests_per_client * k)
                    ft_client._settled_model_time(c, "gptj", n0 + row["requests"] - row["failed"])
                    s1 = ft_client.batching_stats(c, "gptj")
                    # requests the dynamic batcher merged into one execution, over this run only
                    row["requests_per_execution"] = ((s1["inference_count"] - s0["inference_count"])
                                                     / max(1, s1["execution_count"] - s0["execution_count"]))
                    out["load"].append(row)
                    log("served, gRPC", {key: v for key, v in row.items() if key != "errors"})
            finally:
                c.close()
    finally:
        server.stop()
        shutil.rmtree(ckpt_root, ignore_errors=True)   # 12 GB for GPT-J-6B
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="served_gpu.json")
    ap.add_argument("--work", default=None, help="scratch folder (default: the topic's cache folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-batch-size", type=int, default=32, help="the gptj model's max_batch_size")
    ap.add_argument("--clients", default="1,8,32", help="concurrent gRPC clients to time ('' for none)")
    a = ap.parse_args(argv)
    clients = [int(x) for x in a.clients.split(",") if x.strip()]
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    big = ft_bench.random_gptj("gptj-6b", torch.float16, "cuda")
    prompt = torch.randint(0, 50000, (128,)).tolist()
    res = measure(big, Path(a.work) if a.work else ft_weights.cache_dir() / "served_gpu", prompt,
                  log=lambda *x: print(*x, flush=True), max_batch_size=a.max_batch_size, clients=clients)
    res["machine"] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": sys.version.split()[0]}
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["total_s"] = time.perf_counter() - t0
    from labkit.paths import atomic_write_text      # the notebook loads this file: never a half-written one
    atomic_write_text(Path(a.out), json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
