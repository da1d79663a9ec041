"""GPT-J-6B decode on one GPU, measured in one process: Hugging Face eager fp16 against the runtime's
decode-step variants (the older unfused step, the fused step, the fused step compiled by torch.compile,
each captured as a CUDA graph; and the fused step without a graph).

The notebook's full profile calls `gptj_gpu`; it also runs on its own, without Jupyter or the notebook's
data (random weights: timing only):

    PYTHONPATH=shared python3 notebooks/01_triton_gptj_t5/ft_gpu_bench.py --out gptj_gpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
import torch._dynamo
import torch._inductor.config

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ft_bench  # noqa: E402
import ft_runtime_gptj  # noqa: E402

HF_KEY = "GPT-J HF eager fp16"
# name -> runtime settings (fused_step, compile, cuda_graph; optional decode_attn and Inductor options)
VARIANTS = {
    "GPT-J runtime fp16, unfused step + CUDA graph (previous)": dict(fused_step=False, compile=False, cuda_graph=True),
    "GPT-J runtime fp16, fused step + CUDA graph": dict(fused_step=True, compile=False, cuda_graph=True),
    "GPT-J runtime fp16, compiled step + CUDA graph": dict(fused_step=True, compile=True, cuda_graph=True,
                                                           decode_attn="reduce"),  # a compiled runtime's default
    "GPT-J runtime fp16, eager steps": dict(fused_step=True, compile=False, cuda_graph=False),
}
# tried once (`--explore`, H100 80GB, 2026-11-26) to choose the defaults above; ms/token there: sdpa 4.92,
# bmm 4.75, reduce 4.72 (the default since), sdpa + Inductor coordinate-descent tuning 4.82
EXPLORE = {
    "compiled + graph, sdpa attention": dict(fused_step=True, compile=True, cuda_graph=True, decode_attn="sdpa"),
    "compiled + graph, bmm attention": dict(fused_step=True, compile=True, cuda_graph=True, decode_attn="bmm"),
    "compiled + graph, coordinate-descent tuning": dict(fused_step=True, compile=True, cuda_graph=True,
                                                        decode_attn="reduce",
                                                        inductor={"coordinate_descent_tuning": True}),
}
BEST_KEY = "GPT-J runtime fp16, compiled step + CUDA graph"


def configure(rt, fused_step: bool, compile: bool, cuda_graph: bool, decode_attn: Optional[str] = None, **_) -> None:
    rt.set_decode(fused_step, compile, cuda_graph, decode_attn=decode_attn)
    if compile:
        torch._dynamo.reset()  # a fresh compile for each variant (settings and Inductor options differ)


def kernel_breakdown(rt, top: int = 12) -> list:
    """GPU time per kernel of one decode step run outside the graph (torch.profiler), largest first."""
    from torch.profiler import ProfilerActivity, profile
    g = rt._graphs[1]
    args = (g["tok"], g["pos"], g["slot"], g["bias"], rt.max_len)
    fn = rt._step_callable()
    fn(*args)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn(*args)
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / 3 / 1e3, e.count // 3) for e in prof.key_averages()]
    rows.sort(key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    return [("TOTAL kernel ms per step", total, sum(r[2] for r in rows))] + [(k[:90], t, c) for k, t, c in rows[:top]]


def gptj_gpu(big, prompt_ids: torch.Tensor, new_tokens: int = 64, plan: Optional[dict] = None, repeat: int = 3,
             variants=None, log: Callable = print, device: str = "cuda", profile_key: Optional[str] = None) -> Dict:
    """Time HF eager and the runtime variants on the same model and prompt; check each variant's first
    8 greedy tokens against HF's. Returns {"bench": {name: timings}, "checks": {...}, "weight_gb": ...}."""
    variants = list(VARIANTS) if variants is None else variants
    bench, checks = {}, {}
    wbytes = ft_bench.weight_bytes(big)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    bench[HF_KEY] = ft_bench.hf_gptj(big, prompt_ids, new_tokens, device, repeat=repeat)
    log(HF_KEY, bench[HF_KEY])
    with torch.no_grad():
        ref8 = big.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=8,
                            min_new_tokens=8, do_sample=False, pad_token_id=50256)[0, prompt_ids.shape[1]:].tolist()
    rt = ft_runtime_gptj.GPTJRuntime.from_hf(big, dtype=big.dtype, device=device, gemm_plan=plan or ft_bench.H100_PLAN,
                                             max_len=256, max_batch=1, cuda_graph=True)
    with torch.no_grad():
        short = prompt_ids[:, :32]
        ref = big(input_ids=short).logits.float()
        got = rt.logits(short).float()
    checks["gptj_fp16_rel_logit_diff"] = ((got - ref).abs().max() / ref.abs().max()).item()
    del ref, got
    prompt = prompt_ids[0].tolist()
    for name in variants:
        cfg = {**VARIANTS, **EXPLORE}[name]
        configure(rt, **cfg)
        comp, graph = cfg["compile"], cfg["cuda_graph"]
        try:
            t0 = time.perf_counter()
            with torch._inductor.config.patch(**cfg.get("inductor", {})):
                toks = rt.generate([prompt], 8, stop_at_end=False)[0][0].tolist()  # compiles / captures here
            sync()
            first = time.perf_counter() - t0
            if comp and not rt.compile:
                raise RuntimeError("torch.compile fell back to eager ops")
            checks[f"{name}: same 8 greedy tokens as HF"] = toks == ref8
            bench[name] = ft_bench.runtime_gptj(rt, prompt, new_tokens, device, repeat=repeat if graph else 2)
            bench[name]["setup_s"] = first
            if graph:
                bench[name]["graph_replay_ms"] = ft_bench.graph_replay_ms(rt)
            if name == profile_key:
                checks[f"{name}: kernels"] = kernel_breakdown(rt)
                for row in checks[f"{name}: kernels"]:
                    log(f"  {row[1]:8.3f} ms  x{row[2]:<5d} {row[0]}")
            bench[name]["weight_tb_per_s"] = wbytes / (bench[name]["ms_per_token"] * 1e-3) / 1e12
            bench[name]["speedup_vs_hf"] = bench[HF_KEY]["ms_per_token"] / bench[name]["ms_per_token"]
            log(name, {k: round(v, 3) for k, v in bench[name].items()}, "| same tokens as HF:", toks == ref8)
        except Exception:  # noqa: BLE001 - report it and go on with the other variants
            checks[f"{name}: error"] = traceback.format_exc()[-2000:]
            log(name, "FAILED:\n", checks[f"{name}: error"])
        finally:
            configure(rt, True, False, False)
            sync()
    del rt
    if cuda:
        torch.cuda.empty_cache()
    return {"bench": bench, "checks": checks, "weight_gb": wbytes / 1e9, "new_tokens": new_tokens,
            "prompt_tokens": int(prompt_ids.shape[1]), "best_key": BEST_KEY}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gptj_gpu.json")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--explore", action="store_true", help="also time the EXPLORE variants and profile kernels")
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    big = ft_bench.random_gptj("gptj-6b", torch.float16, "cuda")
    print(f"GPT-J-6B random weights ({ft_bench.weight_bytes(big) / 1e9:.1f} GB fp16) built in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    prompt_ids = torch.randint(0, 50000, (1, 128), device="cuda")
    names = list(VARIANTS) + (list(EXPLORE) if a.explore else [])
    res = gptj_gpu(big, prompt_ids, a.new_tokens, repeat=a.repeat, variants=names,
                   profile_key=BEST_KEY if a.explore else None, log=lambda *x: print(*x, flush=True))
    res["machine"] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["total_s"] = time.perf_counter() - t0
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "checks"}, indent=1))
    print({k: v for k, v in res["checks"].items() if "error" not in k and "kernels" not in k})


if __name__ == "__main__":
    main()
