"""What bounds a GPT-J decoding step: the bytes it must read against the arithmetic it must do (a roofline).

A decode step computes one new token for each of `batch` sequences. It must read every weight the step uses
once (the same bytes at batch 1 or 64: weight reads are shared by the batch) and each sequence's KV cache
(grows with batch and context), and it does about 2 FLOPs per weight per sequence plus the attention. So

    step time >= max(bytes / bandwidth, FLOPs / peak)

At batch 1 the bytes win by two orders of magnitude (GPT-J-6B fp16: 11.7 GB against 12 GFLOP); the GEMMs
reach the compute roof only near batch = peak * bytes_per_weight / (2 * bandwidth) (the "ridge", ~230 on an
H200 for fp16), and the KV cache reads keep a large batch memory-bound well before that.

The weight bytes follow the runtime's own count (`GPTJRuntime.weight_bytes`: the merged GEMM weights, biases,
layer norms and the logits GEMM; not the embedding table, of which a step reads one row per token), which the
tests check at toy size for fp32 and int8. Also: the stage file the long benchmark writes
(`ft_batch_bench.py --stage`), the served throughput at 32 clients (`ft_served_gpu.py --clients 1,8,32`), and
issue 19's goals against what was measured.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

GPTJ_6B = {"hidden": 4096, "inter_size": 16384, "vocab_size": 50400, "num_layer": 28}   # HF GPTJConfig() defaults
# NVIDIA H200: the device-to-device copy bandwidth measured with torch on one H200 on 2026-11-30 (issue 19;
# `copy_tb_per_s` measures it again wherever it runs), and the dense fp16 tensor-core peak of Hopper's datasheet
# (989.4 TFLOPS; 1,979 is the 2:4-sparse figure; the H200 has the H100's GH100 compute)
H200 = {"gpu": "NVIDIA H200", "copy_tb_per_s": 4.3, "fp16_tflops": 989.4}
# published anchors (other machines, other software): label them as such wherever they are shown
PUBLISHED = {
    "trtllm_gptj_h100_fp8_batch1_tokens_per_s": (185.0, "TensorRT-LLM v0.5 blog: GPT-J-6B, H100, FP8, batch 1, 128 in / 128 out"),
    "trtllm_gptj_h100_fp8_batch64_tokens_per_s": (10907.0, "TensorRT-LLM v0.5 blog: GPT-J-6B, H100, FP8, batch 64, 128 in / 128 out"),
    "ft_t5base_a100_batch1_speedup": (671 / 44, "FT t5_guide: T5-base, A100, fp16, beam 4, batch 1: 44 -> 671 tokens/s"),
    "ft_t5base_a100_batch128_speedup": (11312 / 656, "FT t5_guide: T5-base, A100, fp16, beam 4, batch 128: 656 -> 11,312 tokens/s"),
    "post_t5small_batch_speedup": (22.0, "source post: T5-small '~22x throughput over GPU PyTorch' at larger batch"),
}


def config_of(hf_config) -> dict:
    """The four sizes the bound needs, from a Hugging Face GPTJConfig."""
    h = hf_config.n_embd
    return {"hidden": h, "inter_size": hf_config.n_inner or 4 * h, "vocab_size": hf_config.vocab_size,
            "num_layer": hf_config.n_layer}


def _check(m: dict) -> None:
    bad = [k for k in ("hidden", "inter_size", "vocab_size", "num_layer") if not (isinstance(m.get(k), int) and m[k] > 0)]
    if bad:
        raise ValueError(f"model sizes {bad} missing or not positive integers in {m}")


def gemm_weights(m: dict) -> int:
    """Weights of the GEMMs a decode step runs: per layer QKV (3h^2), attention out (h^2), FFN in and out (2hi);
    then the logits GEMM (hV)."""
    _check(m)
    h, i = m["hidden"], m["inter_size"]
    return m["num_layer"] * (4 * h * h + 2 * h * i) + h * m["vocab_size"]


def step_weight_bytes(m: dict, dtype_bytes: int = 2, int8: bool = False) -> int:
    """Bytes of weights one decode step reads. int8 (FT's weight-only scheme): the four layer GEMMs' weights
    in 1 byte with one scale per output channel in the compute dtype; biases, layer norms and the logits
    GEMM stay in the compute dtype."""
    _check(m)
    h, i, v, n = m["hidden"], m["inter_size"], m["vocab_size"], m["num_layer"]
    layer_gemm = 4 * h * h + 2 * h * i
    # the merged first GEMM's bias (zeros for QKV, GPT-J has none there; then FFN-in's), FFN-out's, the layer norm
    per_layer_small = (3 * h + i + h + 2 * h) * dtype_bytes
    if int8:
        per_layer = layer_gemm + (3 * h + i + h) * dtype_bytes + per_layer_small   # scales: one per output channel
    else:
        per_layer = layer_gemm * dtype_bytes + per_layer_small
    return n * per_layer + (h * v + v + 2 * h) * dtype_bytes      # logits GEMM + bias, final layer norm


def kv_bytes(m: dict, batch: int, ctx: int, dtype_bytes: int = 2) -> int:
    """K and V of `ctx` positions, every layer, every sequence: what one step's attention must read."""
    _check(m)
    return 2 * m["num_layer"] * batch * ctx * m["hidden"] * dtype_bytes


def step_flops(m: dict, batch: int, ctx: int) -> float:
    """2 FLOPs per GEMM weight per sequence, plus attention's QK^T and PV over `ctx` positions (4 ctx h a layer)."""
    return batch * (2.0 * gemm_weights(m) + 4.0 * m["num_layer"] * ctx * m["hidden"])


def step_bound(m: dict, batch: int, ctx: int, tb_per_s: float, tflops: float, dtype_bytes: int = 2,
               int8: bool = False) -> dict:
    """Lower bound of one decode step's time (ms) and what sets it."""
    if batch < 1 or ctx < 1 or tb_per_s <= 0 or tflops <= 0:
        raise ValueError(f"batch={batch}, ctx={ctx}, tb_per_s={tb_per_s}, tflops={tflops}: all must be positive")
    w = step_weight_bytes(m, dtype_bytes, int8) / (tb_per_s * 1e12) * 1e3
    kv = kv_bytes(m, batch, ctx, dtype_bytes) / (tb_per_s * 1e12) * 1e3
    c = step_flops(m, batch, ctx) / (tflops * 1e12) * 1e3
    return {"weights_ms": w, "kv_ms": kv, "memory_ms": w + kv, "compute_ms": c, "bound_ms": max(w + kv, c),
            "limit": "memory" if w + kv >= c else "compute"}


def decode_bound(m: dict, batch: int, prompt: int, new: int, tb_per_s: float, tflops: float, dtype_bytes: int = 2,
                 int8: bool = False) -> dict:
    """The bound averaged over the decode steps of `new` tokens after a `prompt`-token context (what
    ft_bench.per_token measures: (T(new) - T(1)) / (new - 1)), and the decode tokens/s it allows."""
    if new < 2:
        raise ValueError(f"new={new}: the decode steps need at least 2 new tokens")
    steps = [step_bound(m, batch, prompt + t, tb_per_s, tflops, dtype_bytes, int8) for t in range(1, new)]
    mean = {k: sum(s[k] for s in steps) / len(steps) for k in ("weights_ms", "kv_ms", "memory_ms", "compute_ms", "bound_ms")}
    mean["limit"] = "memory" if mean["memory_ms"] >= mean["compute_ms"] else "compute"
    mean["tokens_per_s"] = batch / (mean["bound_ms"] * 1e-3)
    return mean


def generate_bound(m: dict, batch: int, prompt: int, new: int, tb_per_s: float, tflops: float, dtype_bytes: int = 2,
                   int8: bool = False) -> dict:
    """End to end (what ft_batch_bench's tokens_per_s times): the context step, which yields the first token,
    then `new` - 1 decode steps. The context step reads the weights once and does the GEMMs for all
    batch x prompt positions (logits for the last one only) plus causal attention (~2 prompt^2 h a layer)."""
    h, n = m["hidden"], m["num_layer"]
    layer_gemm = gemm_weights(m) - h * m["vocab_size"]
    flops = batch * (2.0 * prompt * layer_gemm + 2.0 * h * m["vocab_size"] + 2.0 * n * prompt * prompt * h)
    ctx_ms = max(step_weight_bytes(m, dtype_bytes, int8) / (tb_per_s * 1e12), flops / (tflops * 1e12)) * 1e3
    dec = decode_bound(m, batch, prompt, new, tb_per_s, tflops, dtype_bytes, int8)
    total = ctx_ms + (new - 1) * dec["bound_ms"]
    return {"context_ms": ctx_ms, "decode_ms": (new - 1) * dec["bound_ms"], "total_ms": total,
            "tokens_per_s": batch * new / (total * 1e-3)}


def bound_table(m: dict, batches: Sequence[int], prompt: int, new: int, tb_per_s: float, tflops: float,
                int8: bool = False) -> list:
    """Per batch: the decode step's bound split into weights / KV cache / compute (mean over the decode
    steps), what limits it, and the tokens/s it allows in the decode steps and end to end."""
    out = []
    for b in batches:
        d = decode_bound(m, b, prompt, new, tb_per_s, tflops, int8=int8)
        e = generate_bound(m, b, prompt, new, tb_per_s, tflops, int8=int8)
        out.append({"batch": b, "weights_ms": d["weights_ms"], "kv_cache_ms": d["kv_ms"], "compute_ms": d["compute_ms"],
                    "step_bound_ms": d["bound_ms"], "limit": d["limit"], "decode_tokens_per_s": d["tokens_per_s"],
                    "end_to_end_tokens_per_s": e["tokens_per_s"]})
    return out


def ridge_batch(m: dict, tb_per_s: float, tflops: float, dtype_bytes: int = 2) -> float:
    """The batch at which the GEMMs' arithmetic takes as long as reading their weights (KV cache ignored)."""
    return (tflops * 1e12) * step_weight_bytes(m, dtype_bytes) / (tb_per_s * 1e12 * 2.0 * gemm_weights(m))


def copy_tb_per_s(device: str = "cuda", nbytes: int = 1 << 30, repeat: int = 5) -> float:
    """Device-to-device copy bandwidth in TB/s, counting bytes read plus bytes written (2 x nbytes a copy),
    as a copy benchmark reports it; the median of `repeat` timed copies after one warm-up."""
    if nbytes < 1 or repeat < 1:
        raise ValueError(f"nbytes={nbytes}, repeat={repeat}: both must be positive")
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    cuda = str(device).startswith("cuda")
    times = []
    for k in range(repeat + 1):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if cuda:
            torch.cuda.synchronize()
        if k:
            times.append(time.perf_counter() - t0)
    times.sort()
    return 2 * nbytes / times[len(times) // 2] / 1e12


# ---------------------------------------------------------------- files the long GPU runs leave

def load_stage(path: Path) -> Optional[dict]:
    """ft_batch_bench's merged output, or None when the file is not there. A file that is there but is not
    such an output is an error that names what is wrong (not silently ignored: it would stand for a run)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(res, dict) or not isinstance(res.get("metrics"), dict):
        raise ValueError(f"{path}: no 'metrics' object: not an ft_batch_bench output")
    if not any(k in res for k in ("gptj_b1", "gptj_batch", "t5")):
        raise ValueError(f"{path}: none of the parts gptj_b1, gptj_batch, t5: not an ft_batch_bench output")
    if res.get("tiny"):
        raise ValueError(f"{path}: a --tiny (toy-size CPU) run, not a measurement")
    return res


def served_tokens_per_s(path: Path, clients: int = 32) -> Optional[dict]:
    """The load row for `clients` concurrent gRPC clients in ft_served_gpu's output, or None when the file is
    not there or has no such row (run without --clients)."""
    path = Path(path)
    if not path.exists():
        return None
    res = json.loads(path.read_text())
    rows = [r for r in res.get("load", []) if r.get("clients") == clients]
    return dict(rows[0], machine=res.get("machine"), date=res.get("date")) if rows else None


# kernels that are a GEMM: cuBLAS (nvjet on Hopper, *gemm* elsewhere, its split-K reduction), CUTLASS, and the
# runtime's own W8A16 Triton kernel with its split-K epilogue; torch.compile's fused kernels (attention, norms,
# rotary, GELU) are named triton_*fused* and count as "other"
GEMM_KERNEL = re.compile(r"nvjet|gemm|cutlass|splitkreduce|xmma|_w8a16|_splitk_epilogue", re.IGNORECASE)


def kernel_split(kernels: Sequence, step_ms: Optional[float] = None) -> dict:
    """Where a decode step's time goes, from ft_gpu_bench.kernel_breakdown's table (a "TOTAL ..." row, then the
    largest kernels as (name, ms per step, count)): `gemm_ms` (the GEMM kernels among the listed ones),
    `other_ms` (every other kernel: total less GEMMs) and, given the step's measured time, `gap_ms` (the step's
    time not covered by a kernel: launches and waits; 0 when the profile's total exceeds the step)."""
    rows = [tuple(r) for r in kernels]
    total = next((r[1] for r in rows if str(r[0]).startswith("TOTAL")), None)
    listed = [r for r in rows if not str(r[0]).startswith("TOTAL")]
    if total is None:
        total = sum(r[1] for r in listed)
    gemm = sum(r[1] for r in listed if GEMM_KERNEL.search(str(r[0])))
    out = {"kernel_ms": total, "gemm_ms": gemm, "other_ms": max(0.0, total - gemm)}
    if step_ms is not None:
        out["gap_ms"] = max(0.0, step_ms - total)
    return out


# ---------------------------------------------------------------- issue 19's goals against the measurement

def goals(metrics: dict, copy_bw: Optional[float] = None, kernels: Sequence = ()) -> list:
    """One row per goal: target, measured value, met (None: not measured in this run, or a number to report
    without a set target) and why, in numbers."""
    m = metrics
    rows = []

    def row(goal, key, target, ok, why):
        v = m.get(key)
        rows.append({"goal": goal, "metric": key, "target": target, "measured": v,
                     "met": None if v is None or ok is None else bool(ok(v)),
                     "why": why(v) if v is not None else "not measured in this run"})

    def b1_why(v):
        s = f"{GPTJ_6B_FP16_GB / v:.2f} TB/s of weights"
        if copy_bw:
            s += f" = {GPTJ_6B_FP16_GB / v / copy_bw:.0%} of the {copy_bw:.2f} TB/s copy bandwidth measured in the same run"
        split = _split_text(m, "gptj_step", GPTJ_6B_FP16_GB, copy_bw)
        if split:
            return s + split
        listed = [r for r in kernels if not str(r[0]).startswith("TOTAL")]
        if listed:
            s += "; largest kernels a step: " + ", ".join(f"{r[0][:40]} {r[1]:.3f} ms" for r in listed[:3])
        return s

    row("GPT-J-6B fp16 batch 1", "gptj_ms_per_token", "<= 3.1 ms/token", lambda v: v <= 3.1, b1_why)
    row("GPT-J-6B int8 weight-only batch 1", "gptj_int8_ms_per_token", "<= 2.0 ms/token", lambda v: v <= 2.0,
        lambda v: f"{GPTJ_6B_INT8_GB / v:.2f} TB/s of int8 weights"
                  + (f" ({m['gptj_int8_impl']} GEMM)" if m.get("gptj_int8_impl") else "")
                  + _split_text(m, "gptj_int8_step", GPTJ_6B_INT8_GB, copy_bw))
    row("int8 greedy tokens = fp16 (trained tiny GPT-J, 32 prompts)", "gptj_int8_token_agreement", ">= 0.95",
        lambda v: v >= 0.95, lambda v: f"{v:.3f} of positions")
    row("int8 logit cosine (every position)", "gptj_int8_logit_cosine_min", ">= 0.999", lambda v: v >= 0.999,
        lambda v: f"min {v:.5f}")
    row("int8 held-out perplexity vs fp16", "gptj_int8_perplexity_rel_change", "within 1%", lambda v: abs(v) <= 0.01,
        lambda v: f"{v:+.3%}")
    row("GPT-J-6B fp16 batch 64, 128 in / 128 out", "gptj_batch64_tokens_per_s", ">= 10,000 tokens/s",
        lambda v: v >= 10000, lambda v: f"{v:,.0f} tokens/s end to end"
        + (f", {m['gptj_batch64_decode_tokens_per_s']:,.0f} in the decode steps" if m.get("gptj_batch64_decode_tokens_per_s") else "")
        + _split_text(m, "gptj_batch64_step")
        + _fastest_attention(m, 64))
    row("T5-small at the largest batch vs HF (post: ~22x)", "t5_small_batch_speedup_vs_hf", "measured (no set goal)",
        None, lambda v: f"{v:.1f}x greedy" + (f", {m['t5_small_batch_speedup_vs_hf_beam4']:.1f}x beam 4"
                                                        if m.get("t5_small_batch_speedup_vs_hf_beam4") else ""))
    row("served GPT-J-6B, 32 gRPC clients", "triton_gptj_tokens_per_s_32_clients", "reported (no set goal)",
        None, lambda v: f"{v:,.0f} tokens/s"
        + (f" = {v / m['triton_gptj_direct_tokens_per_s_batch32']:.2f}x the direct runtime at batch 32 in the same "
           f"run ({m['triton_gptj_direct_tokens_per_s_batch32']:,.0f})" if m.get("triton_gptj_direct_tokens_per_s_batch32") else "")
        + (f"; {m['triton_gptj_requests_per_execution_32_clients']:.1f} requests per execution"
           if m.get("triton_gptj_requests_per_execution_32_clients") else ""))
    return rows


def _split_text(m: dict, prefix: str, weight_gb: Optional[float] = None, copy_bw: Optional[float] = None) -> str:
    """'; a step: GEMM kernels X ms (Y TB/s of weights = Z% of copy), other kernels .., between kernels ..' from
    the <prefix>_gemm_ms / _other_kernel_ms / _gap_ms keys (ft_batch_bench.metrics), '' without them."""
    g, o, gap = (m.get(f"{prefix}_{k}") for k in ("gemm_ms", "other_kernel_ms", "gap_ms"))
    if not g:
        return ""
    s = f"; a step: GEMM kernels {g:.2f} ms"
    if weight_gb:
        s += f" ({weight_gb / g:.2f} TB/s of weights" + (f" = {weight_gb / g / copy_bw:.0%} of copy)" if copy_bw else ")")
    s += f", other kernels {o:.2f} ms" if o is not None else ""
    s += f", between kernels {gap:.2f} ms" if gap is not None else ""
    return s


def _fastest_attention(m: dict, batch: int) -> str:
    """'; decode attention X: N tokens/s' when another of the runtime's decode attentions beat its default at
    this batch in the same run (the headline stays the default's; ft_batch_bench's ..._tokens_per_s_attn_<X>
    keys), else ''."""
    prefix = f"gptj_batch{batch}_tokens_per_s_attn_"
    timed = {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix)}
    best = max(timed, key=timed.get, default=None)
    if best is None or timed[best] <= m.get(f"gptj_batch{batch}_tokens_per_s", float("inf")):
        return ""
    return f"; decode attention {best!r}: {timed[best]:,.0f} tokens/s"


# GB a GPT-J-6B decode step reads; GB / (ms per token) = TB/s
GPTJ_6B_FP16_GB = step_weight_bytes(GPTJ_6B) / 1e9
GPTJ_6B_INT8_GB = step_weight_bytes(GPTJ_6B, int8=True) / 1e9
