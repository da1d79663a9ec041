"""GEMM autotuning, the role FT's `gpt_gemm` / `t5_gemm` play: time candidate implementations for every
GEMM shape of a context step and a decode step, write the winners to a `gemm_config` file, and let the
runtime read it.

Candidates (what this runtime can choose per GEMM):
- layout "nk": weight stored [n, k] (transposed from FT's file), called as F.linear (cuBLAS "TN");
- layout "kn": weight stored [k, n] as in FT's file, called as matmul/addmm (cuBLAS "NN");
and per attention: "sdpa" (torch's fused scaled_dot_product_attention) or "math" (two GEMMs + softmax).

gemm_config format (text, one row per timed shape, '#' lines are comments; FT's file has the same idea
with cuBLASLt algorithm ids instead of implementation names):

    # ft_gemm gemm_config v1
    phase,gemm,batch,seq,m,n,k,dtype,impl,time_us,candidates
    decode,qkv,1,1,1,12288,4096,fp16,nk,35.2,nk=35.2;kn=38.9
    ...

m x k times k x n; `impl` is the fastest candidate; `candidates` lists every time measured. The runtime's
plan takes each GEMM's layout from its decode row (decode dominates generation time and a weight can
only be stored one way); the attention implementation too.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ft_runtime_common import attention, linear, prepare_weight

HEADER = "phase,gemm,batch,seq,m,n,k,dtype,impl,time_us,candidates"
DT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def gptj_gemm_shapes(meta: dict, batch: int, seq: int, tp: int = 1) -> List[dict]:
    """The GEMMs of one GPT-J layer (+ logits) for a context step (m = batch*seq) and a decode step (m = batch)."""
    d, f, V = meta["hidden"], meta["inter_size"], meta["vocab_size"]
    out = []
    for phase, m in (("context", batch * seq), ("decode", batch)):
        out += [dict(phase=phase, gemm="qkv", m=m, n=3 * d // tp, k=d),
                dict(phase=phase, gemm="attn_out", m=m, n=d, k=d // tp),
                dict(phase=phase, gemm="ffn1", m=m, n=f // tp, k=d),
                dict(phase=phase, gemm="ffn2", m=m, n=d, k=f // tp),
                dict(phase=phase, gemm="logits", m=batch, n=V, k=d)]
    return out


def t5_gemm_shapes(meta: dict, batch: int, seq: int, tp: int = 1) -> List[dict]:
    """The decoder GEMMs of T5 (the part that runs once per generated token) for both phases."""
    d, inner, ff, V = meta["d_model"], meta["inner"], meta["d_ff"], meta["vocab_size"]
    nff = ff // tp * (2 if meta["gated"] else 1)
    out = []
    for phase, m in (("context", batch * seq), ("decode", batch)):
        out += [dict(phase=phase, gemm="qkv", m=m, n=3 * inner // tp, k=d),
                dict(phase=phase, gemm="attn_out", m=m, n=d, k=inner // tp),
                dict(phase=phase, gemm="ffn1", m=m, n=nff, k=d),
                dict(phase=phase, gemm="ffn2", m=m, n=d, k=ff // tp),
                dict(phase=phase, gemm="logits", m=batch, n=V, k=d)]
    return out


def _timer(fn, device, iters: int) -> float:
    """Median microseconds per call (CUDA events on GPU)."""
    import labkit
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else None
    t = labkit.time_it(fn, repeat=iters, warmup=max(2, iters // 10), sync=sync)
    return t.median * 1e6


def tune(shapes: List[dict], dtype=torch.float32, device="cpu", iters: int = 20, heads: int = 16,
         head_dim: int = 64, kv_len: int = 128, batch: int = 1, seq: int = 8, progress=None) -> List[dict]:
    """Time every candidate for every shape; return rows (dicts) with the winner and all timings."""
    rows = []
    it = shapes if progress is None else progress(shapes, desc="gemm autotune")
    for s in it:
        x = torch.randn(s["m"], s["k"], dtype=dtype, device=device)
        w = torch.randn(s["k"], s["n"], dtype=dtype, device=device) * 0.02
        times = {}
        for layout in ("nk", "kn"):
            wl = prepare_weight(w, layout)
            times[layout] = _timer(lambda: linear(x, wl, None, layout), device, iters)
        best = min(times, key=times.get)
        rows.append(dict(s, batch=batch, seq=seq if s["phase"] == "context" else 1, dtype=DT[dtype], impl=best,
                         time_us=times[best], candidates=times))
    for phase, q in (("context", seq), ("decode", 1)):
        qt = torch.randn(batch, heads, q, head_dim, dtype=dtype, device=device)
        k = torch.randn(batch, heads, kv_len, head_dim, dtype=dtype, device=device)
        bias = torch.zeros(batch, 1, q, kv_len, device=device)
        times = {impl: _timer(lambda impl=impl: attention(qt, k, k, bias, impl, 1 / math.sqrt(head_dim)), device, iters)
                 for impl in ("sdpa", "math")}
        best = min(times, key=times.get)
        rows.append(dict(phase=phase, gemm="attention", batch=batch, seq=q, m=batch * heads * q, n=kv_len, k=head_dim,
                         dtype=DT[dtype], impl=best, time_us=times[best], candidates=times))
    return rows


def write_config(rows: List[dict], path: Path) -> Path:
    """Write the gemm_config file (format in the module docstring)."""
    from labkit.paths import atomic_write_text
    lines = ["# ft_gemm gemm_config v1: fastest implementation per GEMM shape (times in microseconds)", HEADER]
    for r in rows:
        cands = ";".join(f"{k}={v:.1f}" for k, v in r["candidates"].items())
        lines.append(",".join(str(x) for x in (r["phase"], r["gemm"], r["batch"], r["seq"], r["m"], r["n"], r["k"],
                                              r["dtype"], r["impl"], f"{r['time_us']:.1f}", cands)))
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return Path(path)


def read_config(path: Path) -> List[dict]:
    rows = []
    lines = [l for l in Path(path).read_text().splitlines() if l.strip() and not l.startswith("#")]
    if not lines or lines[0] != HEADER:
        raise ValueError(f"{path} is not a gemm_config v1 file (expected the header {HEADER!r})")
    for line in lines[1:]:
        vals = line.split(",")
        r = dict(zip(HEADER.split(","), vals))
        for key in ("batch", "seq", "m", "n", "k"):
            r[key] = int(r[key])
        r["time_us"] = float(r["time_us"])
        r["candidates"] = {kv.split("=")[0]: float(kv.split("=")[1]) for kv in r["candidates"].split(";")}
        rows.append(r)
    return rows


def plan_from_config(path_or_rows) -> Dict[str, dict]:
    """The runtime's plan: {gemm: {'layout': ...}, 'attention': {'impl': ...}} from the decode rows."""
    rows = read_config(path_or_rows) if isinstance(path_or_rows, (str, Path)) else path_or_rows
    plan = {}
    for r in rows:
        if r["phase"] != "decode":
            continue
        if r["gemm"] == "attention":
            plan["attention"] = {"impl": r["impl"]}
        else:
            plan[r["gemm"]] = {"layout": r["impl"]}
    return plan


def predicted_gain(rows: List[dict], default: str = "nk", default_attn: str = "sdpa", layers: int = 1) -> dict:
    """Sum of decode-step GEMM times (per layer x layers, + logits) with the default choice vs the tuned one."""
    base = tuned = 0.0
    for r in rows:
        if r["phase"] != "decode":
            continue
        mult = 1 if r["gemm"] == "logits" else layers
        d = default_attn if r["gemm"] == "attention" else default
        base += mult * r["candidates"][d]
        tuned += mult * r["time_us"]
    return {"default_us": base, "tuned_us": tuned, "gain": base / tuned if tuned else float("nan")}
