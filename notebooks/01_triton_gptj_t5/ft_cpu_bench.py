"""The source post's CPU claim ("up to 33x over PyTorch CPU inference for GPT-J and T5-3B"), measured in one run
on one machine: Hugging Face PyTorch fp32 on all of the machine's CPU cores against this project's runtime on its
GPU (fp16, compiled decode step in a CUDA graph, as in the notebook's full profile). Batch 1, a short prompt, a
few greedy tokens; random weights (timing only; nothing is downloaded). The CPU model is the GPU model's weights
cast to fp32, so both sides run the same network.

    PYTHONPATH=shared python3 notebooks/01_triton_gptj_t5/ft_cpu_bench.py --out cpu_vs_gpu.json

`--device cpu --arch tiny` runs the same code on tiny models with the runtime on the CPU too (a check that the
machinery works, not a measurement of the claim). "ms per token" is the decode cost, (time for N tokens - time
for 1 token) / (N - 1) (ft_bench.per_token); the speed-up is HF CPU ms/token over runtime ms/token.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ft_bench  # noqa: E402
import ft_gpu_bench  # noqa: E402
import ft_runtime_gptj  # noqa: E402
import ft_runtime_t5  # noqa: E402

ARCHS = {"full": ("gptj-6b", "t5-3b"), "tiny": ("tiny", "tiny")}
T5_TINY = dict(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_heads=4, num_layers=2, num_decoder_layers=2)


def machine() -> dict:
    """The CPU (model name, cores this process may use, torch threads) and the GPU, as this run saw them."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                 if l.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_cores_usable": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": gpu, "torch": torch.__version__,
            "python": sys.version.split()[0]}


def random_t5(arch: str, dtype, device):
    if arch != "tiny":
        return ft_bench.random_t5(arch, dtype, device)
    from transformers import T5Config, T5ForConditionalGeneration
    cfg = T5Config(feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1, dropout_rate=0.0, **T5_TINY)
    return ft_bench._build(T5ForConditionalGeneration, cfg, dtype, device)


def _to_cpu_fp32(model, cuda: bool):
    """The same weights in fp32 on the CPU (moved in place: the runtime that read them is gone)."""
    model.to(device="cpu", dtype=torch.float32)
    if cuda:
        torch.cuda.empty_cache()
    return model.eval()


# per model: how the runtime and HF are timed (ft_bench), where the runtime's greedy tokens sit in what generate
# returns, and HF generate's extra arguments and first generated position
KINDS = {
    "gptj": dict(runtime=ft_bench.runtime_gptj, hf=ft_bench.hf_gptj, rt_tokens=lambda out: out[0][0],
                 hf_kw=dict(pad_token_id=50256), hf_first=lambda prompt_len: prompt_len),
    "t5": dict(runtime=ft_bench.runtime_t5, hf=ft_bench.hf_t5, rt_tokens=lambda out: out[0][0, 0],
               hf_kw=dict(num_beams=1), hf_first=lambda prompt_len: 1),
}


def compare(kind: str, big, make_runtime: Callable, prompt: list, device: str, new_tokens: int, repeat: int,
            log: Callable) -> Dict:
    """Time the runtime built by make_runtime(big) on `device`, then HF on the CPU in fp32 with the same weights."""
    k, cuda = KINDS[kind], device.startswith("cuda")
    rt = make_runtime(big)
    t0 = time.perf_counter()
    rt_tokens = k["rt_tokens"](rt.generate([prompt], new_tokens, stop_at_end=False)).tolist()  # compiles / captures
    setup_s = time.perf_counter() - t0
    out = {"runtime": dict(k["runtime"](rt, prompt, new_tokens, device, repeat=repeat), setup_s=setup_s)}
    log(kind, "runtime", out["runtime"])
    del rt
    cpu = _to_cpu_fp32(big, cuda)
    ids = torch.tensor([prompt])
    out["hf_cpu_fp32"] = k["hf"](cpu, ids, new_tokens, "cpu", repeat=repeat)
    log(kind, "HF CPU fp32", out["hf_cpu_fp32"])
    with torch.no_grad():
        hf = cpu.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False, **k["hf_kw"])[0, k["hf_first"](len(prompt)):].tolist()
    out["same_greedy_tokens"] = hf == rt_tokens  # fp16 GPU vs fp32 CPU: may part on random weights
    return out


def gptj(arch: str, device: str, dtype, prompt_len: int, new_tokens: int, repeat: int, log: Callable) -> Dict:
    cuda = device.startswith("cuda")

    def make(big):
        rt = ft_runtime_gptj.GPTJRuntime.from_hf(big, dtype=dtype, device=device, gemm_plan=ft_bench.H100_PLAN,
                                                 max_len=256, max_batch=1, cuda_graph=cuda)
        if cuda:  # the notebook's headline GPU variant: fused step, torch.compile, CUDA graph
            ft_gpu_bench.configure(rt, **ft_gpu_bench.VARIANTS[ft_gpu_bench.BEST_KEY])
        return rt

    prompt = torch.randint(0, 50000 if arch == "gptj-6b" else 1000, (1, prompt_len))[0].tolist()
    return compare("gptj", ft_bench.random_gptj(arch, dtype, device), make, prompt, device, new_tokens, repeat, log)


def t5(arch: str, device: str, dtype, prompt_len: int, new_tokens: int, repeat: int, log: Callable) -> Dict:
    big = random_t5(arch, dtype, device)
    src = torch.randint(2, min(32000, big.config.vocab_size), (1, prompt_len))[0].tolist()
    make = lambda m: ft_runtime_t5.T5Runtime.from_hf(m, dtype=dtype, device=device, max_batch=1, max_out=new_tokens,
                                                     cuda_graph=device.startswith("cuda"))  # compiled step + graph
    return compare("t5", big, make, src, device, new_tokens, repeat, log)


def measure(device: str = "cuda", arch: str = "full", prompt_len: int = 32, new_tokens: int = 8, repeat: int = 3,
            seed: int = 0, log: Callable = print) -> Dict:
    """Both models, one after the other; returns the JSON this module writes (speed-ups at the top level)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no GPU is visible; use --device cpu --arch tiny for a CPU check")
    if new_tokens < 2:
        raise ValueError(f"new_tokens={new_tokens}: the per-token cost needs at least 2 generated tokens")
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # HF on every core this process may use
    torch.manual_seed(seed)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    g_arch, t_arch = ARCHS[arch]
    t0 = time.perf_counter()
    res = {"config": {"device": device, "arch": arch, "gptj": g_arch, "t5": t_arch, "runtime_dtype": str(dtype),
                      "hf": "transformers eager generate, fp32, CPU", "batch": 1, "prompt_len": prompt_len,
                      "new_tokens": new_tokens, "repeat": repeat, "seed": seed, "weights": "random (timing only)"},
           "machine": machine()}
    log("machine", res["machine"])
    res["gptj"] = gptj(g_arch, device, dtype, prompt_len, new_tokens, repeat, log)
    res["t5"] = t5(t_arch, device, dtype, prompt_len, new_tokens, repeat, log)
    for k in ("gptj", "t5"):
        rt_ms = res[k]["runtime"]["ms_per_token"]  # 0 when N tokens timed no slower than 1 (noise): no ratio
        res[f"{k}_speedup_vs_hf_cpu"] = res[k]["hf_cpu_fp32"]["ms_per_token"] / rt_ms if rt_ms > 0 else None
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["total_s"] = time.perf_counter() - t0
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="cpu_vs_gpu.json")
    ap.add_argument("--device", default="cuda", help="where the runtime runs: cuda (the claim) or cpu (a check)")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="full", help="full: GPT-J-6B and T5-3B; tiny: a check")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    res = measure(a.device, a.arch, a.prompt_len, a.new_tokens, a.repeat, a.seed, log=lambda *x: print(*x, flush=True))
    Path(a.out).write_text(json.dumps(res, indent=1))
    m = res["machine"]
    ratio = lambda x: "no ratio (runtime timing too noisy: raise --new-tokens or --repeat)" if x is None else f"{x:.1f}x"
    parts = [f"{name} {res[k]['hf_cpu_fp32']['ms_per_token']:.1f} vs {res[k]['runtime']['ms_per_token']:.2f} ms/token "
             f"= {ratio(res[k + '_speedup_vs_hf_cpu'])}" for k, name in (("gptj", "GPT-J"), ("t5", "T5"))]
    print(f"on {m['cpu']} ({m['cpu_cores_usable']} cores, {m['torch_threads']} torch threads) and {m['gpu']}: "
          + "; ".join(parts) + f" ({res['total_s']:.0f} s; written to {a.out})", flush=True)
    return res


if __name__ == "__main__":
    main()
