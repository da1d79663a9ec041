"""GPT-J decode with tensor parallelism: TP=2 (one process per GPU, NCCL) against TP=1, in one command.

One process per rank (torch.multiprocessing, spawn). Rank 0 builds the model (random weights: timing
only) and broadcasts every weight, so all ranks hold the same model. Then, per decode mode:
  1. TP=1: rank 0 alone runs the whole model (`GPTJRuntime.from_hf`); the other ranks wait;
  2. TP=2: every rank converts the same weights to the FT layout, keeps its own slice (half of the
     attention heads and FFN columns) and runs its runtime in lockstep with the others; the two
     partial sums of a layer are added with one NCCL all-reduce (inside the captured CUDA graph in the
     "graph" mode).
Both measure "ms per generated token" the same way (ft_bench.per_token: (t(N) - t(1)) / (N - 1)) and
the greedy tokens of TP=2 are compared with TP=1's.

Modes: "graph"    the fused decode step captured as a CUDA graph (on CPU: the same fixed-shape step, no graph)
       "eager"    the fused decode step, eager ops over the filled part of the cache
       "compiled" the fused step compiled by torch.compile, then captured as a CUDA graph
The summary reports the first of PREFER measured at both sizes (compiled, else graph, else eager).
Rank 0 writes the results (atomically) after each measurement, so what was measured survives a later
failure; the parent kills the ranks when `time_limit` runs out.

On a host with two GPUs (NVLink multicast kept off):

    PYTHONPATH=shared python3 notebooks/01_triton_gptj_t5/ft_tp_bench.py --out gptj_tp2.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ft_bench  # noqa: E402
import ft_convert  # noqa: E402
import ft_runtime_gptj  # noqa: E402
from ft_runtime_common import DTYPES, TP, join_group, loopback_store  # noqa: E402
from labkit.paths import atomic_write_text  # noqa: E402

# NVLink multicast (NVLS / symmetric-memory multicast) stays off: set for this process and every rank
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def build_model(arch: str, dtype, device, seed: int = 0):
    """The HF GPT-J to time: "gptj-6b" (the real architecture) or "tiny" (for tests), random weights."""
    from transformers import GPTJConfig, GPTJForCausalLM
    torch.manual_seed(seed)
    if arch == "gptj-6b":
        return ft_bench.random_gptj("gptj-6b", dtype, device)
    if arch == "tiny":
        cfg = GPTJConfig(vocab_size=50400, n_positions=256, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                         n_inner=256, bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=False)
        return ft_bench._build(GPTJForCausalLM, cfg, dtype, device)
    raise ValueError(f"unknown arch {arch!r}")


def make_prompt(length: int, vocab: int = 50000, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, vocab, (length,), generator=g).tolist()


def rank_tensors(model, tp: int, rank: int):
    """(meta, tensors) of rank `rank` of `tp`, converted in memory from the HF model (no disk)."""
    meta = ft_convert.gptj_meta(ft_convert.gptj_config_ini(model.config, tp, "fp32"))
    return meta, ft_convert.rank_view(ft_convert.gptj_to_ft(model.state_dict(), model.config.n_layer, tp), rank)


def set_mode(rt, mode: str) -> None:
    """Switch a runtime's decode step to `mode` (fresh graphs / compile)."""
    if mode not in ("graph", "eager", "compiled"):
        raise ValueError(f"unknown mode {mode!r}")
    fixed = mode in ("graph", "compiled")   # on CPU "graph" is the same fixed-shape step, without a graph
    rt.set_decode(compile=mode == "compiled", cuda_graph=fixed, static=fixed)
    if rt.compile:
        import torch._dynamo
        torch._dynamo.reset()


def measure(rt, prompt: list, new_tokens: int, repeat: int, sync) -> dict:
    """Greedy tokens (the first call also captures / compiles) and the per-token timing."""
    t0 = time.perf_counter()
    toks = rt.generate([prompt], new_tokens, stop_at_end=False)[0][0].tolist()
    sync()
    setup = time.perf_counter() - t0
    r = ft_bench.runtime_gptj(rt, prompt, new_tokens, "cuda" if rt.device.type == "cuda" else "cpu", repeat=repeat)
    r["setup_s"] = setup
    if rt.device.type == "cuda" and rt.cuda_graph:
        r["graph_replay_ms"] = ft_bench.graph_replay_ms(rt)
    r["compiled"] = bool(rt.compile)
    r["tokens"] = toks
    return r


def _atomic_json(path: str, obj) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=1))


def _rank_main(rank: int, world: int, port: int, cfg: dict, result_path: str) -> None:
    """One rank: see the module docstring. Rank 0 keeps `res` and writes it after every step."""
    os.environ.update(SAFE_ENV)
    import torch.distributed as dist
    cuda = cfg["device"] == "cuda"
    dev = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
    dtype = DTYPES[cfg["dtype"]]
    res = {"config": cfg, "tp1": {}, "tp2": {}, "checks": {}, "errors": {}, "log": []}
    save = (lambda: _atomic_json(result_path, res)) if rank == 0 else (lambda: None)

    def log(*a):
        msg = " ".join(str(x) for x in a)
        print(f"[rank {rank}] {msg}", flush=True)
        res["log"].append(msg)

    if cuda:
        torch.cuda.set_device(dev)
    else:
        torch.set_num_threads(1)
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    kw = {"device_id": dev} if cuda else {}
    join_group("nccl" if cuda else "gloo", port, rank, world, cfg["pg_timeout_s"], **kw)
    try:
        t0 = time.perf_counter()
        big = build_model(cfg["arch"], dtype, dev, cfg["seed"])
        with torch.no_grad():
            for t in big.state_dict().values():   # every rank: rank 0's weights
                dist.broadcast(t, src=0)
        sync()
        chk = torch.stack([p.float().sum() for p in big.parameters()]).sum().reshape(1)
        allc = [torch.zeros_like(chk) for _ in range(world)]
        dist.all_gather(allc, chk)
        res["checks"]["same weights on every rank"] = bool(all(torch.equal(c, allc[0]) for c in allc))
        res["weight_gb"] = ft_bench.weight_bytes(big) / 1e9
        res["build_s"] = time.perf_counter() - t0
        log(f"model {cfg['arch']} ({res['weight_gb']:.2f} GB) on every rank in {res['build_s']:.1f} s")
        if rank == 0:
            res["machine"] = {"gpu": torch.cuda.get_device_name(dev) if cuda else "cpu",
                              "gpu_count": torch.cuda.device_count() if cuda else 0, "torch": torch.__version__,
                              "cuda": torch.version.cuda, "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
                              "python": sys.version.split()[0],
                              "env": {k: os.environ.get(k) for k in SAFE_ENV}}
        save()
        prompt = make_prompt(cfg["prompt_len"], min(50000, big.config.vocab_size), cfg["seed"])
        plan = ft_bench.H100_PLAN if cuda else None
        modes, nt, rep = cfg["modes"], cfg["new_tokens"], cfg["repeat"]

        # ---- TP=1 on rank 0 alone
        if rank == 0:
            rt1 = ft_runtime_gptj.GPTJRuntime.from_hf(big, dtype=dtype, device=dev, gemm_plan=plan,
                                                      max_len=cfg["max_len"], max_batch=1, cuda_graph=cuda,
                                                      compile=False)
            for mode in modes:
                try:
                    set_mode(rt1, mode)
                    res["tp1"][mode] = measure(rt1, prompt, nt, rep, sync)
                    log(f"TP=1 {mode}: {res['tp1'][mode]['ms_per_token']:.3f} ms/token "
                        f"(setup {res['tp1'][mode]['setup_s']:.1f} s)")
                except Exception:  # noqa: BLE001 - keep what the other modes give
                    res["errors"][f"tp1 {mode}"] = traceback.format_exc()[-3000:]
                    log(f"TP=1 {mode} FAILED:\n{res['errors'][f'tp1 {mode}']}")
                finally:
                    rt1._graphs, rt1._step_fn = {}, None
                save()
            del rt1
            if cuda:
                torch.cuda.empty_cache()
        dist.barrier()

        # ---- TP=2: every rank its slice, in lockstep
        meta, tensors = rank_tensors(big, world, rank)
        rt2 = ft_runtime_gptj.GPTJRuntime(meta, tensors, tp=TP(world, rank, dist.group.WORLD), dtype=dtype,
                                          device=dev, gemm_plan=plan, max_len=cfg["max_len"], max_batch=1,
                                          cuda_graph=cuda, compile=False)
        del tensors, big
        if cuda:
            torch.cuda.empty_cache()
        dist.barrier()
        for mode in modes:
            key = f"tp{world} {mode}"
            try:
                set_mode(rt2, mode)
                r = measure(rt2, prompt, nt, rep, sync)
                res["tp2"][mode] = r
                log(f"TP={world} {mode}: {r['ms_per_token']:.3f} ms/token (setup {r['setup_s']:.1f} s)")
                if mode in res["tp1"]:
                    a, b = res["tp1"][mode]["tokens"], r["tokens"]
                    same = a == b
                    res["checks"][f"{mode}: TP={world} greedy tokens == TP=1"] = same
                    if not same:
                        res["checks"][f"{mode}: first differing token index"] = next(
                            i for i, (x, y) in enumerate(zip(a, b)) if x != y)
                    r["speedup_vs_tp1"] = res["tp1"][mode]["ms_per_token"] / r["ms_per_token"]
                    log(f"  speed-up vs TP=1 ({mode}): {r['speedup_vs_tp1']:.3f}x, same tokens: {same}")
            except Exception:  # noqa: BLE001
                res["errors"][key] = traceback.format_exc()[-3000:]
                log(f"{key} FAILED:\n{res['errors'][key]}")
            finally:
                rt2._graphs, rt2._step_fn = {}, None
            save()
        sync()
        dist.barrier()
        res["complete"] = True
        save()
    except Exception:  # noqa: BLE001
        res["errors"][f"rank {rank}"] = traceback.format_exc()[-3000:]
        log(f"FAILED:\n{res['errors'][f'rank {rank}']}")
        save()
        raise
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass


# the pair reported: the runtime's CUDA default first (compiled step in a CUDA graph), then the plain graph
PREFER = ("compiled", "graph", "eager")


def summarize(res: dict, world: int = 2, prefer: Sequence[str] = PREFER) -> dict:
    """The metrics: TP=2 and TP=1 ms/token of the first mode in `prefer` that both measured, and their
    ratio. Also the ratio of the captured steps' replay times (CUDA events) where there are graphs, and
    whether each ms/token agrees with its replay time (ms/token below 0.9 x the replay time means the
    subtraction t(N) - t(1) was thrown off by a slow 1-token run: the ms/token is then too low)."""
    for mode in prefer:
        if mode in res.get("tp1", {}) and mode in res.get("tp2", {}):
            r1, r2 = res["tp1"][mode], res["tp2"][mode]
            t1, t2 = r1["ms_per_token"], r2["ms_per_token"]
            out = {f"gptj_tp{world}_ms_per_token": t2, "gptj_tp1_ms_per_token": t1,
                   f"gptj_tp{world}_speedup_vs_tp1": t1 / t2, "mode": mode,
                   "same_tokens": res["checks"].get(f"{mode}: TP={world} greedy tokens == TP=1"),
                   "consistent_with_replay": all(r.get("graph_replay_ms") is None
                                                 or r["ms_per_token"] >= 0.9 * r["graph_replay_ms"] for r in (r1, r2))}
            if r1.get("graph_replay_ms") and r2.get("graph_replay_ms"):
                out["speedup_by_graph_replay"] = r1["graph_replay_ms"] / r2["graph_replay_ms"]
            return out
    return {}


def run(arch: str = "gptj-6b", device: str = "cuda", dtype: str = "fp16", world: int = 2, prompt_len: int = 128,
        new_tokens: int = 64, repeat: int = 3, modes: Sequence[str] = ("graph", "eager"), max_len: int = 256,
        seed: int = 0, time_limit: float = 300.0, pg_timeout_s: Optional[float] = None,
        out: Optional[str] = None) -> dict:
    """Start `world` ranks, wait for them (at most `time_limit` s) and return rank 0's results plus
    `summary` (the metrics) and `exitcodes`. The process group's timeout (`pg_timeout_s`, default
    `time_limit`) must outlast the TP=1 phase, during which the other ranks wait in a barrier."""
    import multiprocessing as mp
    if device == "cuda" and torch.cuda.device_count() < world:
        raise RuntimeError(f"{world} GPUs needed, {torch.cuda.device_count()} visible")
    os.environ.update(SAFE_ENV)   # inherited by the spawned ranks
    cfg = dict(arch=arch, device=device, dtype=dtype, prompt_len=prompt_len, new_tokens=new_tokens, repeat=repeat,
               modes=list(modes), max_len=max_len, seed=seed, pg_timeout_s=pg_timeout_s or time_limit, world=world)
    tmpdir = tempfile.mkdtemp(prefix="tp_bench_")
    result_path = os.path.join(tmpdir, "rank0.json")
    ctx = mp.get_context("spawn")
    store, port = loopback_store(time_limit)   # this process hosts the rendezvous, on 127.0.0.1 only
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, cfg, result_path), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    killed = False
    try:
        for p in procs:
            p.join(timeout=max(0.0, time_limit - (time.perf_counter() - t0)))
            if p.is_alive():
                killed = True
                break
            if p.exitcode != 0:       # one rank died: the others would wait for it until the pg timeout
                break
        deadline = time.perf_counter() + 15
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.perf_counter()))
    finally:
        for p in procs:
            if p.is_alive():
                killed = True
                p.terminate()
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)
    res = json.loads(Path(result_path).read_text()) if os.path.exists(result_path) else {"config": cfg}
    res.setdefault("complete", False)
    res["exitcodes"] = [p.exitcode for p in procs]
    res["killed_at_time_limit"] = killed
    res["wall_s"] = time.perf_counter() - t0
    res["summary"] = summarize(res, world)
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if out:
        _atomic_json(out, res)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gptj_tp2.json")
    ap.add_argument("--arch", default="gptj-6b", choices=["gptj-6b", "tiny"])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="graph,eager", help="comma list of graph, eager, compiled (reported: see PREFER)")
    ap.add_argument("--time-limit", type=float, default=300.0)
    a = ap.parse_args(argv)
    res = run(a.arch, a.device, a.dtype, a.tp, a.prompt_len, a.new_tokens, a.repeat, a.modes.split(","),
              time_limit=a.time_limit, out=a.out)
    short = {k: v for k, v in res.items() if k not in ("tp1", "tp2", "log", "config")}
    for side in ("tp1", "tp2"):
        short[side] = {m: {k: v for k, v in r.items() if k != "tokens"} for m, r in res.get(side, {}).items()}
    print(json.dumps(short, indent=1, default=str))


if __name__ == "__main__":
    main()
