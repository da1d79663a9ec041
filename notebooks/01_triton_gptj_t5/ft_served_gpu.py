"""GPT-J served by Triton with the model on the GPU: what the server adds to each request.

The in-memory model (GPT-J-6B in the full profile) is converted to FT's layout (fp16, tensor_para_size 1),
served as the `gptj` python-backend model on `cuda` (compiled decode step in a CUDA graph, warmed up
before the server reports READY), and timed over gRPC and HTTP at batch 1:
- overhead: the client's latency minus the time the server spent inside the model for exactly those
  requests (its own statistics), as a fraction of the model time (ft_client.served_overhead);
- ms per generated token through the server, measured like the direct runtime (ft_bench.triton_gptj).

Also runs on its own (random GPT-J-6B weights: timing only):
    python ft_served_gpu.py --out served_gpu.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

import ft_bench
import ft_client
import ft_convert
import ft_triton_repo
import ft_weights


def measure(model, work: Path, prompt: Sequence[int], output_lens: Sequence[int] = (8, 64), repeat: int = 10,
            per_token_repeat: int = 3, device: str = "cuda", data_type: str = "fp16", start_timeout: float = 900.0,
            log=print) -> dict:
    """Serve `model` (an HF GPT-J) through a real tritonserver, the model on `device` in `data_type`
    (the tests use a tiny model on the CPU), and time it. Returns
    {"overhead": {"<protocol>, <n> new tokens": {...}}, "per_token": {...}, "start_s": ..., "convert_s": ...}."""
    work = Path(work)
    ckpt_root = work / f"gptj_ft_{data_type}"
    t0 = time.perf_counter()
    ckpt = ft_convert.convert_gptj(model, model.config, ckpt_root, 1, data_type)
    convert_s = time.perf_counter() - t0
    log(f"converted to FT {data_type} in {convert_s:.0f} s ({ft_convert.ckpt_size_bytes(ckpt) / 1e9:.1f} GB)")
    repo = ft_triton_repo.build_repository(
        work / "model_repository_gpu", ckpt, None, ft_weights.gpt2_tokenizer_files() / "tokenizer.json",
        data_type=data_type, device=device, max_batch_size=1, max_output_len=max(output_lens),
        gptj_params={"warmup": 1, "max_seq_len": len(prompt) + max(output_lens)})
    server = ft_triton_repo.triton_server(repo, ft_weights.cache_dir(), log_path=work / "tritonserver_gpu.log",
                                          start_timeout=start_timeout)
    out = {"overhead": {}, "per_token": {}, "convert_s": convert_s}
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
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    big = ft_bench.random_gptj("gptj-6b", torch.float16, "cuda")
    prompt = torch.randint(0, 50000, (128,)).tolist()
    res = measure(big, Path(a.work) if a.work else ft_weights.cache_dir() / "served_gpu", prompt,
                  log=lambda *x: print(*x, flush=True))
    res["machine"] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": sys.version.split()[0]}
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["total_s"] = time.perf_counter() - t0
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
