"""Decoding throughput on one GPU, each number beside its baseline measured in the same process:

part "gptj_b1"    GPT-J-6B fp16, batch 1, 128-token prompt: Hugging Face eager, the runtime (compiled step + CUDA
                  graph), and the runtime with int8 weight-only GEMMs (ft_int8: "dequant" = dequantize inside a
                  compiled one-row GEMM, "int8pack" = torch._weight_int8pack_mm, "triton" = ft_w8_kernel's W8A16
                  kernel, its block sizes tuned per GEMM shape and checked against the float reference before
                  timing; --int8 picks which); ms per generated token, the weight bytes a step reads, and a kernel
                  table per step (torch.profiler). int8 quality on the device: the notebook's trained tiny GPT-J
                  (fp16 against int8, 32 prompts, the fastest impl) - random weights say nothing about quality.
part "gptj_batch" GPT-J-6B fp16 at batch 16 and 64, 128 in / 128 out (one CUDA graph per batch bucket): generated
                  tokens per second, end to end (context + decode) and decode only, and a kernel table of one decode
                  step at the largest batch; the largest batch again with each other decode attention (reduce /
                  sdpa / bmm); the step's two merged GEMMs alone in cuBLAS at batch 1 and each batch,
                  both weight layouts (gemm_probe); the int8 "triton" runtime at the largest batch; HF eager at the
                  largest.
part "t5"         T5-small (and optionally T5-base) fp16, batch 1, 8, 32, 128, greedy and beam 4: runtime against
                  HF generate, both forced to the full output length (no end token).

GPT-J-6B and T5 use RANDOM weights at the real sizes: timing only (decode cost does not depend on the values).

    python ft_batch_bench.py --parts gptj_b1 --out b1.json          # on the GPU machine, about 6 min
    python ft_batch_bench.py --parts gptj_b1 --int8 dequant,triton  # about 4.5 min (int8pack: ~50 ms/token)
    python ft_batch_bench.py --parts gptj_batch,t5 --out bt.json    # about 4 min
    python ft_batch_bench.py --merge b1.json bt.json --out batch_bench.json
    python ft_batch_bench.py --tiny --out tiny.json                 # the same code at toy sizes on the CPU

With --stage, --out and the --merge inputs are read and written in labkit.stage_dir("01_triton_gptj_t5", "full")
(build/stages/01_triton_gptj_t5.full, or $LABKIT_STAGE_DIR/...), where the notebook's full profile looks for
batch_bench.json (the --out default):
    python ft_batch_bench.py --stage --parts gptj_b1 --out b1.json
    python ft_batch_bench.py --stage --parts gptj_batch,t5 --out bt.json
    python ft_batch_bench.py --stage --merge b1.json bt.json
(ci/gpu_full_01.sh runs these, the served measurement and then the whole notebook, in that order.)

The output's "metrics" holds the scalar keys results/full.json takes (gptj_ms_per_token, gptj_int8_ms_per_token,
gptj_int8_token_agreement, gptj_batch64_tokens_per_s, t5_small_batch_speedup_vs_hf, ...), "bench" the tables,
"copy_tb_per_s" the device-to-device copy bandwidth measured at the start of the run (the bandwidth floor's divisor).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import ft_bench  # noqa: E402
import ft_int8  # noqa: E402
import ft_w8_kernel  # noqa: E402
import ft_roofline  # noqa: E402
import ft_runtime_gptj  # noqa: E402
import ft_runtime_t5  # noqa: E402
import labkit  # noqa: E402
import labkit.paths  # noqa: E402

FOLDER = "01_triton_gptj_t5"
PARTS = ("gptj_b1", "gptj_batch", "t5")
# seconds a part takes at full size on one H200 (estimates from the compile times seen there: ~30 s per
# compiled GPT-J step shape, ~45 s to build GPT-J-6B): a part that does not fit the budget left is not started
EST_S = {"gptj_b1": 360, "gptj_batch": 320, "t5": 240}
DECODE_ATTN = ("reduce", "sdpa", "bmm")   # ft_runtime_gptj's decode attentions (set_decode), compared in gptj_batch
INT8_IMPLS = ("dequant", "int8pack", "triton")


def sizes(tiny: bool) -> dict:
    if tiny:
        return dict(prompt=8, new=4, b1_new=4, batches=[3], t5_batches=[1, 3], t5_src=8, t5_new=4, repeat=1,
                    quality_prompts=2, quality_tokens=4)
    return dict(prompt=128, new=128, b1_new=64, batches=[16, 64], t5_batches=[1, 8, 32, 128], t5_src=64, t5_new=64, repeat=3,
                quality_prompts=32, quality_tokens=16)


def ratio(a: float, b: float):
    """a / b, or None when b is not positive (a toy-size CPU timing can come out as 0)."""
    return a / b if b > 0 else None


def _free(device: str) -> None:
    """Drop compiled code and cached GPU memory between runtimes: Dynamo keeps every compiled variant of a
    method's code (all runtimes share `_step`'s) up to its recompile limit (8), after which it runs eagerly."""
    torch._dynamo.reset()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def w8_prepare(rt, rows: int, log: Callable) -> Dict:
    """Before timing an int8 "triton" runtime: on CUDA, tune the W8A16 kernel's blocks for each GEMM shape of the
    decode step at `rows` rows (over every layer's weight); everywhere, compare what ft_w8_kernel.linear computes
    (the kernel on CUDA, the fallback on a CPU) with the float reference on random inputs, raising on a mismatch."""
    out = {"backend": ft_w8_kernel.backend(rt.device)}
    for name, bias in (("w1", "b1"), ("w2", None)):
        ws = [(layer[name].q, layer[name].scale) for layer in rt.layers]
        if out["backend"] == "triton" and rt.device.type == "cuda":
            out[f"tune_{name}"] = ft_w8_kernel.tune(ws, rows, log)
        b = rt.layers[0][bias] if bias else None
        out[f"check_{name}"] = ft_w8_kernel.verify(ft_w8_kernel.linear, *ws[0], b, rows, what=f"(GPT-J {name})")
        log(f"  w8a16 {name} at {rows} rows matches the float reference:", out[f"check_{name}"])
    return out


def step_kernels(rt, batch: int, top: int = 12) -> list:
    """ft_gpu_bench.kernel_breakdown (written for batch 1's graph) for the captured step of `batch` rows."""
    import types

    import ft_gpu_bench
    view = types.SimpleNamespace(_graphs={1: rt._graphs[batch]}, _step_callable=rt._step_callable, max_len=rt.max_len)
    return ft_gpu_bench.kernel_breakdown(view, top=top)


def gptj_b1(big, cfg: dict, device: str, log: Callable, int8_impls=INT8_IMPLS) -> Dict:
    """HF eager, fp16 runtime and the int8 runtimes at batch 1 on the same model and prompt."""
    cuda = device.startswith("cuda")
    n = cfg["b1_new"]   # 64 at full size, as ft_gpu_bench
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(0, 50000, (1, cfg["prompt"]), generator=g).to(device)
    prompt = prompt_ids[0].tolist()
    bench, checks = {}, {}
    bench["hf eager"] = ft_bench.hf_gptj(big, prompt_ids, n, device, repeat=cfg["repeat"])
    log("hf eager", bench["hf eager"])
    with torch.no_grad():
        ref8 = big.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=8,
                            min_new_tokens=8, do_sample=False, pad_token_id=50256)[0, len(prompt):].tolist()
    fp16_toks = None
    _free(device)
    for name, int8 in [("runtime", None)] + [(f"runtime int8 {i}", i) for i in int8_impls]:
        try:
            t0 = time.perf_counter()
            rt = ft_runtime_gptj.GPTJRuntime.from_hf(big, dtype=big.dtype, device=device, gemm_plan=ft_bench.H100_PLAN,
                                                     max_len=cfg["prompt"] + n, max_batch=1, cuda_graph=cuda, int8=int8)
            build = time.perf_counter() - t0
            w8 = w8_prepare(rt, 1, log) if int8 == "triton" else None   # before compiling: the op reads TUNED then
            toks = rt.generate([prompt], n, stop_at_end=False)[0][0]   # compiles and captures here
            if cuda:
                torch.cuda.synchronize()
            if rt.compile is False and cuda:
                raise RuntimeError("torch.compile fell back to eager ops")
            r = ft_bench.runtime_gptj(rt, prompt, n, device, repeat=cfg["repeat"])
            r.update(build_s=build, setup_s=time.perf_counter() - t0 - build, weight_gb=rt.weight_bytes() / 1e9,
                     speedup_vs_hf=ratio(bench["hf eager"]["ms_per_token"], r["ms_per_token"]),
                     weight_tb_per_s=ratio(rt.weight_bytes() / 1e12, r["ms_per_token"] * 1e-3))
            if w8:
                r["w8_kernel"] = w8
            if cuda:   # where a step's time goes: GPU time per kernel of one step, largest first
                import ft_gpu_bench
                r["kernels"] = ft_gpu_bench.kernel_breakdown(rt, top=10)
            if int8 is None:
                fp16_toks = toks
                checks["runtime: same greedy tokens as HF (first 8)"] = toks[:8].tolist() == ref8[:len(toks[:8])]
            elif fp16_toks is not None:
                # random weights: near-flat logits, so a small weight error flips argmax far more than on a
                # trained model; reported, not the quality measure
                r["token_agreement_vs_fp16_random_weights"] = ft_int8.token_agreement(toks[None], fp16_toks[None])
            bench[name] = r
            log(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items() if k not in ("kernels", "w8_kernel")})
            for row in r.get("kernels", []):
                log(f"  {row[1]:8.3f} ms  x{row[2]:<5d} {row[0]}")
            del rt
        except Exception:  # noqa: BLE001 - record it, go on with the other variants
            checks[f"{name}: error"] = traceback.format_exc()[-2000:]
            log(name, "FAILED:\n", checks[f"{name}: error"])
        _free(device)
    int8_ok = [k for k in bench if k.startswith("runtime int8")]
    best = min(int8_ok, key=lambda k: bench[k]["ms_per_token"]) if int8_ok else None
    out = {"bench": bench, "checks": checks, "new_tokens": n, "prompt_tokens": cfg["prompt"], "int8_best": best}
    if best:
        try:   # needs the gpt2_bpe data; a failure here must not throw away the timings above
            q = ft_int8.tiny_gptj_quality(dtype=big.dtype, device=device, impl=best.split()[-1],
                                          n_prompts=cfg["quality_prompts"], new_tokens=cfg["quality_tokens"])
            out["int8_quality"] = q
            log("int8 quality (trained tiny GPT-J)", q)
        except Exception:  # noqa: BLE001 - recorded; the metrics then lack the quality keys
            checks["int8 quality: error"] = traceback.format_exc()[-2000:]
            log("int8 quality FAILED:\n", checks["int8 quality: error"])
    return out


def gemm_probe(config, rows, device: str = "cuda", copies: int = 4, timer: Callable = ft_w8_kernel.graph_ms) -> list:
    """cuBLAS fp16 time of the decode step's two merged GEMMs (d -> 3d + inner, d + inner -> d) alone, at each row
    count, for both weight layouts: "kn" [k, n] (torch.addmm(b, x, w): what ft_bench.H100_PLAN runs) and "nk"
    [n, k] (F.linear). Weight bytes / time against the copy bandwidth says whether a GEMM runs at the memory bound
    at that batch. `copies` weights of each shape, called in turn in one CUDA graph (`timer`), so they come from HBM."""
    d = config.n_embd
    inner = config.n_inner or 4 * d
    out = []
    for name, (k, n) in (("w1", (d, 3 * d + inner)), ("w2", (d + inner, d))):
        ws = [torch.randn(k, n, device=device, dtype=torch.float16) for _ in range(copies)]
        bias = torch.randn(n, device=device, dtype=torch.float16)
        for layout in ("kn", "nk"):
            wl = ws if layout == "kn" else [w.t().contiguous() for w in ws]
            for m in rows:
                x = torch.randn(m, k, device=device, dtype=torch.float16)
                if layout == "kn":
                    fn = lambda x=x, wl=wl: [torch.addmm(bias, x, w) for w in wl]
                else:
                    fn = lambda x=x, wl=wl: [torch.nn.functional.linear(x, w, bias) for w in wl]
                ms = timer(fn) / copies
                out.append({"gemm": name, "k": k, "n": n, "layout": layout, "rows": m, "ms": ms,
                            "weight_tb_per_s": k * n * 2 / (ms * 1e-3) / 1e12})
            del wl
        del ws
    return out


def gptj_batch(big, cfg: dict, device: str, log: Callable) -> Dict:
    """Generated tokens per second at each batch (prompt cfg['prompt'], cfg['new'] new tokens), a kernel table of
    the largest batch's decode step (CUDA); the int8 "triton" runtime and HF at the largest batch."""
    cuda = device.startswith("cuda")
    n, s = cfg["new"], cfg["prompt"]
    big_b = max(cfg["batches"])
    g = torch.Generator().manual_seed(2)
    prompts = {b: torch.randint(0, 50000, (b, s), generator=g).tolist() for b in cfg["batches"]}

    def timed(rt, b: int) -> dict:
        t0 = time.perf_counter()
        rt.generate(prompts[b], 2, stop_at_end=False)   # compile for this shape, capture this bucket's graph
        setup = time.perf_counter() - t0
        r = ft_bench.per_token(lambda k: rt.generate(prompts[b], k, stop_at_end=False), n, device, cfg["repeat"])
        return {"batch": b, "setup_s": setup, "ms_per_step": r["ms_per_token"], "first_token_ms": r["first_token_ms"],
                "total_ms": r["total_ms"], "tokens_per_s": b * n / (r["total_ms"] * 1e-3),
                "decode_tokens_per_s": ratio(b, r["ms_per_token"] * 1e-3)}

    _free(device)
    rt = ft_runtime_gptj.GPTJRuntime.from_hf(big, dtype=big.dtype, device=device, gemm_plan=ft_bench.H100_PLAN,
                                             max_len=s + n, max_batch=big_b, cuda_graph=cuda)
    rows, out = {}, {}
    for b in cfg["batches"]:
        rows[b] = timed(rt, b)
        log(f"runtime batch {b}", rows[b])
    if cuda:   # where the largest batch's step goes: GPU time per kernel, largest first
        out["kernels"] = step_kernels(rt, rt.run_batch(big_b))
        for row in out["kernels"]:
            log(f"  {row[1]:8.3f} ms  x{row[2]:<5d} {row[0]}")
    # the step's attention over the whole (padded) cache, each way the runtime can do it, at the largest batch
    out["decode_attn"] = {rt.decode_attn: rows[big_b]}
    for alt in [a for a in DECODE_ATTN if a != rt.decode_attn]:
        try:
            rt.set_decode(compile=rt.compile, cuda_graph=rt.cuda_graph, decode_attn=alt)
            out["decode_attn"][alt] = timed(rt, big_b)
            log(f"runtime batch {big_b}, decode attention {alt!r}", out["decode_attn"][alt])
        except Exception:  # noqa: BLE001 - recorded; the default's rows still count
            out["decode_attn"][alt] = {"error": traceback.format_exc()[-1500:]}
            log(f"decode attention {alt!r} FAILED:\n", out["decode_attn"][alt]["error"])
    del rt
    _free(device)
    if cuda:   # do the GEMMs alone run at the memory bound at these batches, in either weight layout?
        out["gemm_probe"] = gemm_probe(big.config, sorted({1, *cfg["batches"]}), device)
        for r in out["gemm_probe"]:
            log(f"  cuBLAS fp16 {r['gemm']} {r['layout']} rows {r['rows']:3d}: {r['ms'] * 1e3:7.1f} us, "
                f"{r['weight_tb_per_s']:.2f} TB/s of weights")
        _free(device)
    try:   # int8 weights, the Triton W8A16 kernel (fallback math on a CPU) at the largest batch
        rt = ft_runtime_gptj.GPTJRuntime.from_hf(big, dtype=big.dtype, device=device, gemm_plan=ft_bench.H100_PLAN,
                                                 max_len=s + n, max_batch=big_b, cuda_graph=cuda, int8="triton")
        w8 = w8_prepare(rt, rt.run_batch(big_b), log)
        out["int8_triton"] = dict(timed(rt, big_b), w8_kernel=w8)
        if cuda:
            out["int8_triton"]["kernels"] = step_kernels(rt, rt.run_batch(big_b))
        log(f"runtime int8 triton batch {big_b}", {k: v for k, v in out["int8_triton"].items() if k not in ("kernels", "w8_kernel")})
        del rt
    except Exception:  # noqa: BLE001 - recorded; the fp16 rows and HF still count
        out["int8_triton_error"] = traceback.format_exc()[-2000:]
        log("runtime int8 triton FAILED:\n", out["int8_triton_error"])
    _free(device)
    ids = torch.tensor(prompts[big_b], device=device)
    hf = ft_bench.per_token(lambda k: big.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k,
                                                   min_new_tokens=k, do_sample=False, pad_token_id=50256),
                            n, device, repeat=1, warmup=1)
    hf_row = {"batch": big_b, "total_ms": hf["total_ms"], "tokens_per_s": big_b * n / (hf["total_ms"] * 1e-3),
              "ms_per_step": hf["ms_per_token"]}
    log(f"hf eager batch {big_b}", hf_row)
    return {"runtime": list(rows.values()), "hf": hf_row, "new_tokens": n, "prompt_tokens": s,
            "speedup_vs_hf": hf_row["total_ms"] / rows[big_b]["total_ms"], **out}


def t5_tables(archs, cfg: dict, device: str, dtype, log: Callable) -> Dict:
    """Runtime against HF generate per batch size, greedy and beam 4, forced to cfg['t5_new'] tokens."""
    cuda = device.startswith("cuda")
    out = {}
    for arch in archs:
        _free(device)
        torch.manual_seed(0)
        model = ft_bench.random_t5(arch, dtype, device)
        n, s = cfg["t5_new"], cfg["t5_src"]
        rt = ft_runtime_t5.T5Runtime.from_hf(model, dtype=dtype, device=device, max_batch=4 * max(cfg["t5_batches"]),
                                             max_out=n, cuda_graph=cuda)
        # timing only: an end-token id outside the vocabulary, so every row and beam runs the full length
        # (what HF's min_new_tokens forces on its side)
        rt.m = dict(rt.m, eos_token_id=rt.m["vocab_size"])
        g = torch.Generator().manual_seed(3)
        rows = []
        for b in cfg["t5_batches"]:
            src = torch.randint(2, model.config.vocab_size, (b, s), generator=g)
            src_list, ids = src.tolist(), src.to(device)
            for beam in (1, 4):
                def hf_gen():
                    with torch.no_grad():
                        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                              min_new_tokens=n, num_beams=beam, do_sample=False)
                t0 = time.perf_counter()
                rt.generate(src_list, n, beam_width=beam, stop_at_end=False)   # compile / capture for these rows
                setup = time.perf_counter() - t0
                sync = torch.cuda.synchronize if cuda else None
                t_rt = labkit.time_it(lambda: rt.generate(src_list, n, beam_width=beam, stop_at_end=False),
                                      repeat=cfg["repeat"], warmup=0, sync=sync).median
                t_hf = labkit.time_it(hf_gen, repeat=cfg["repeat"], warmup=1, sync=sync).median
                row = {"arch": arch, "batch": b, "beam": beam, "setup_s": setup, "runtime_ms": t_rt * 1e3,
                       "hf_ms": t_hf * 1e3, "runtime_tokens_per_s": b * n / t_rt, "hf_tokens_per_s": b * n / t_hf,
                       "speedup_vs_hf": t_hf / t_rt}
                rows.append(row)
                log(arch, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
        out[arch] = rows
        del rt, model
        _free(device)
    return out


def _split(m: dict, prefix: str, kernels, step_ms: float) -> None:
    """<prefix>_gemm_ms / _other_kernel_ms / _gap_ms: a decode step's kernel table split (ft_roofline.kernel_split)."""
    k = ft_roofline.kernel_split(kernels, step_ms)
    m.update({f"{prefix}_gemm_ms": k["gemm_ms"], f"{prefix}_other_kernel_ms": k["other_ms"], f"{prefix}_gap_ms": k["gap_ms"]})


def metrics(res: dict) -> dict:
    """The scalar keys for results/full.json, from whichever parts are present."""
    m = {}
    if res.get("copy_tb_per_s"):
        m["copy_tb_per_s"] = res["copy_tb_per_s"]
    b1 = res.get("gptj_b1")
    if b1:
        bench = b1["bench"]
        if "runtime" in bench:
            m["gptj_ms_per_token"] = bench["runtime"]["ms_per_token"]
            m["gptj_speedup_vs_hf"] = bench["runtime"]["speedup_vs_hf"]
        if "hf eager" in bench:
            m["gptj_hf_eager_ms_per_token"] = bench["hf eager"]["ms_per_token"]
        if "runtime" in bench and res.get("copy_tb_per_s"):
            m["gptj_fraction_of_copy_bandwidth"] = ratio(bench["runtime"]["weight_tb_per_s"], res["copy_tb_per_s"])
        best = b1.get("int8_best")
        if best:
            m["gptj_int8_ms_per_token"] = bench[best]["ms_per_token"]
            m["gptj_int8_impl"] = best.split()[-1]
            if "runtime" in bench:
                m["gptj_int8_speedup_vs_fp16"] = ratio(bench["runtime"]["ms_per_token"], bench[best]["ms_per_token"])
        w8 = bench.get("runtime int8 triton", {}).get("w8_kernel", {})
        if w8.get("tune_w1") and w8.get("tune_w2"):   # the W8A16 kernel alone, one row, both GEMMs of a layer
            tuned = [w8[f"tune_{g}"]["best"] for g in ("w1", "w2")]   # bytes / time over both
            tb = sum(r["weight_gb_per_s"] * r["ms"] for r in tuned) / sum(r["ms"] for r in tuned) / 1e3
            m["gptj_int8_triton_gemv_tb_per_s"] = tb
            if res.get("copy_tb_per_s"):
                m["gptj_int8_triton_gemv_fraction_of_copy"] = tb / res["copy_tb_per_s"]
        for name, prefix in (("runtime", "gptj_step"), (best, "gptj_int8_step")):   # where a step's time goes
            if name and bench.get(name, {}).get("kernels"):
                _split(m, prefix, bench[name]["kernels"], bench[name]["ms_per_token"])
        q = b1.get("int8_quality")
        if q:
            m["gptj_int8_token_agreement"] = q["token_agreement"]
            m["gptj_int8_logit_cosine_min"] = q["logit_cosine_min"]
            m["gptj_int8_perplexity_rel_change"] = q["perplexity_rel_change"]
    bt = res.get("gptj_batch")
    if bt:
        last = bt["runtime"][-1]
        m[f"gptj_batch{last['batch']}_tokens_per_s"] = last["tokens_per_s"]
        m[f"gptj_batch{last['batch']}_decode_tokens_per_s"] = last["decode_tokens_per_s"]
        m[f"gptj_batch{last['batch']}_speedup_vs_hf"] = bt["speedup_vs_hf"]
        if bt.get("int8_triton"):
            m[f"gptj_batch{last['batch']}_int8_tokens_per_s"] = bt["int8_triton"]["tokens_per_s"]
        if bt.get("kernels"):
            _split(m, f"gptj_batch{last['batch']}_step", bt["kernels"], last["ms_per_step"])
        for a, r in bt.get("decode_attn", {}).items():   # the same batch with each decode attention (headline: default)
            if "tokens_per_s" in r:
                m[f"gptj_batch{last['batch']}_tokens_per_s_attn_{a}"] = r["tokens_per_s"]
    t5 = res.get("t5")
    if t5:
        for arch, rows in t5.items():
            big_b = max(r["batch"] for r in rows)
            key = arch.replace("-", "_")
            for r in rows:
                if r["batch"] == big_b:
                    mode = "" if r["beam"] == 1 else "_beam4"
                    m[f"{key}_batch_speedup_vs_hf{mode}"] = r["speedup_vs_hf"]   # at the largest batch
    return m


def machine() -> dict:
    info = {"torch": torch.__version__, "python": sys.version.split()[0], "cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run(parts, tiny: bool, budget_s: float, t5_archs, log: Callable = print, int8_impls=INT8_IMPLS) -> dict:
    cfg = sizes(tiny)
    device, dtype = ("cpu", torch.float32) if tiny else ("cuda", torch.float16)
    res, left, t_start = {}, [], time.perf_counter()
    # the bandwidth a step's reads are measured against, on this device in this run (a toy copy on the CPU)
    res["copy_tb_per_s"] = ft_roofline.copy_tb_per_s(device, nbytes=(1 << 24) if tiny else (1 << 30))
    log(f"device-to-device copy: {res['copy_tb_per_s']:.3f} TB/s (read + write)")
    big = None
    for part in parts:
        spent = time.perf_counter() - t_start
        if not tiny and spent + EST_S[part] > budget_s:
            left.append(part)
            log(f"not starting {part}: about {EST_S[part]} s, {budget_s - spent:.0f} s of the budget left")
            continue
        t0 = time.perf_counter()
        if part in ("gptj_b1", "gptj_batch") and big is None:
            torch.manual_seed(0)
            big = ft_bench.random_gptj("tiny" if tiny else "gptj-6b", dtype, device)
            log(f"GPT-J random weights ({ft_bench.weight_bytes(big) / 1e9:.2f} GB) built in {time.perf_counter() - t0:.0f} s")
        if part == "gptj_b1":
            res[part] = gptj_b1(big, cfg, device, log, int8_impls)
        elif part == "gptj_batch":
            res[part] = gptj_batch(big, cfg, device, log)
        elif part == "t5":
            res[part] = t5_tables(["t5-tiny"] if tiny else t5_archs, cfg, device, dtype, log)
        else:
            raise ValueError(f"unknown part {part!r}; parts are {PARTS}")
        log(f"part {part} took {time.perf_counter() - t0:.0f} s")
    res["parts_left"] = left
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="batch_bench.json")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {PARTS}")
    ap.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (fp32): the code path, not a measurement")
    ap.add_argument("--budget-s", type=float, default=510.0, help="do not start a part expected to end after this")
    ap.add_argument("--t5-archs", default="t5-small", help="comma-separated: t5-small, t5-base")
    ap.add_argument("--int8", default=",".join(INT8_IMPLS),
                    help=f"int8 impls gptj_b1 times, comma-separated, of {INT8_IMPLS} (int8pack: ~50 ms/token on an H200)")
    ap.add_argument("--merge", nargs="+", help="merge these output files into --out instead of running")
    ap.add_argument("--note", help="a note stored in the output (with --merge: what the merged runs are)")
    ap.add_argument("--stage", action="store_true",
                    help=f"relative --out / --merge paths are in labkit.stage_dir({FOLDER!r}, 'full'), where the notebook looks")
    a = ap.parse_args(argv)
    if a.stage and a.tiny:
        ap.error("--stage is for the full-size GPU runs the notebook loads; a --tiny run is not one")
    base = labkit.stage_dir(FOLDER, "full") if a.stage else Path(".")
    out_path = base / a.out
    if a.merge:
        res = {"runs": []}
        for f in a.merge:
            r = json.loads((base / f).read_text())
            res.update({k: v for k, v in r.items() if k in PARTS})
            res["runs"].append({k: r.get(k) for k in ("machine", "date", "total_s", "parts_left", "copy_tb_per_s")})
            if r.get("copy_tb_per_s") and "copy_tb_per_s" not in res:
                res["copy_tb_per_s"] = r["copy_tb_per_s"]
            for k in ("machine", "date", "tiny"):
                res.setdefault(k, r.get(k))
        res["parts_left"] = sorted({p for r in res["runs"] for p in (r.get("parts_left") or [])} - set(res))
    else:
        parts = [p.strip() for p in a.parts.split(",") if p.strip()]
        bad = [p for p in parts if p not in PARTS]
        if bad:
            ap.error(f"unknown part(s) {bad}; parts are {list(PARTS)}")
        if not a.tiny and not torch.cuda.is_available():
            ap.error("no CUDA device: the measurement needs a GPU (use --tiny for the CPU code path)")
        t0 = time.perf_counter()
        impls = tuple(x.strip() for x in a.int8.split(",") if x.strip())
        if not impls or set(impls) - set(INT8_IMPLS):
            ap.error(f"--int8 {a.int8!r}: name one or more of {list(INT8_IMPLS)}")
        res = run(parts, a.tiny, a.budget_s, [x.strip() for x in a.t5_archs.split(",")],
                  log=lambda *x: print(*x, flush=True), int8_impls=impls)
        res.update(machine=machine(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   total_s=time.perf_counter() - t0, tiny=a.tiny)
    res["metrics"] = metrics(res)
    if a.note:
        res["note"] = a.note
    labkit.paths.atomic_write_text(out_path, json.dumps(res, indent=1, default=str))
    print(f"wrote {out_path}")
    print(json.dumps(res["metrics"], indent=1))
    if res.get("parts_left"):
        print("PARTS LEFT:", ",".join(res["parts_left"]))
    return res


if __name__ == "__main__":
    main()
