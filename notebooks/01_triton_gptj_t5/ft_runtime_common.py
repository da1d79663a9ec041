"""Pieces both runtimes share: the GEMM call a gemm plan selects, sampling, and the tensor-parallel engine.

Tensor parallelism (Megatron style, as FT does it): every rank holds 1/N of the attention heads and of
the FFN columns; the partial outputs of the attention output projection and of the second FFN GEMM are
summed over the ranks with one all-reduce. `TPEngine` starts N worker processes (one per rank, gloo on
CPU, NCCL on GPUs), sends each the same request, and returns rank 0's answer.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import socket
import sys
import traceback
from typing import Optional

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------- GEMMs (what ft_gemm tunes)

def prepare_weight(w_kn: torch.Tensor, layout: str) -> torch.Tensor:
    """Store a [k, n] (FT layout) weight as the chosen implementation wants it."""
    if layout == "kn":
        return w_kn.contiguous()
    if layout == "nk":
        return w_kn.t().contiguous()
    raise ValueError(f"unknown weight layout {layout!r}")


def linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], layout: str) -> torch.Tensor:
    """y = x @ W (+ b) for a weight stored in `layout` ('kn': [k, n], 'nk': [n, k])."""
    if layout == "nk":
        return F.linear(x, w, b)
    if b is not None and x.dim() == 2:
        return torch.addmm(b, x, w)
    y = torch.matmul(x, w)
    return y if b is None else y + b


def attention(q, k, v, bias, impl: str = "sdpa", scale: float = 1.0):
    """softmax(q k^T * scale + bias) v with an additive float bias (mask and/or position bias)."""
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=scale)
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale + bias
    return torch.matmul(torch.softmax(s, dim=-1).to(v.dtype), v)


# ---------------------------------------------------------------- sampling

def sample(logits: torch.Tensor, top_k: int = 1, top_p: float = 0.0, temperature: float = 1.0,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Next tokens [b] from logits [b, V]. FT's convention: top_k=1 (or top_k=0 and top_p=0) is greedy;
    top_k>1 keeps the k best; 0<top_p<1 keeps the smallest set whose probability reaches top_p."""
    if top_k == 1 or (top_k == 0 and top_p <= 0.0):
        return logits.argmax(-1)
    logits = logits.float() / max(float(temperature), 1e-5)
    if top_k > 1:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the first token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def make_generator(seed: Optional[int], device) -> Optional[torch.Generator]:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


# ---------------------------------------------------------------- tensor-parallel group

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class RankFactory:
    """A picklable builder for TPEngine: each rank loads its own slice of an FT checkpoint with
    `runtime_cls.from_checkpoint(...)`, on cuda:<rank> when the device is CUDA."""

    def __init__(self, runtime_cls, ckpt: str, dtype_name: str, device: str, **kwargs):
        self.runtime_cls, self.ckpt, self.dtype_name, self.device, self.kwargs = runtime_cls, ckpt, dtype_name, device, kwargs

    def __call__(self, rank: int, size: int, tp: "TP"):
        dev = f"cuda:{rank}" if self.device.startswith("cuda") else self.device
        return self.runtime_cls.from_checkpoint(self.ckpt, rank=rank, tp=tp, dtype=DTYPES[self.dtype_name],
                                                device=dev, **self.kwargs)


class TP:
    """The tensor-parallel group a runtime reduces over (size 1: no communication)."""

    def __init__(self, size: int = 1, rank: int = 0, group=None):
        self.size, self.rank, self.group = size, rank, group

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            import torch.distributed as dist
            dist.all_reduce(x, group=self.group)
        return x

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            import torch.distributed as dist
            dist.broadcast(x, src=0, group=self.group)
        return x


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, factory, conn, parent_pid: int, device: str):
    """One rank: join the group, build the runtime, then answer (method, kwargs) commands in lockstep."""
    import torch.distributed as dist
    try:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // size))
        if device.startswith("cuda"):
            torch.cuda.set_device(rank)
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
        runtime = factory(rank, size, TP(size, rank, dist.group.WORLD))
        conn.send(("ready", None))
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        if not conn.poll(1.0):
            if os.getppid() != parent_pid:  # our parent died: do not linger as an orphan
                break
            continue
        try:
            cmd, kwargs = conn.recv()
        except EOFError:
            break
        if cmd == "stop":
            break
        try:
            result = getattr(runtime, cmd)(**kwargs)
            conn.send(("ok", result if rank == 0 else None))
        except Exception:
            conn.send(("error", traceback.format_exc()))
    try:
        dist.destroy_process_group()
    except Exception:
        pass


class TPEngine:
    """N worker processes, one per rank, each holding its slice of the weights.

        with TPEngine(factory, size=2) as eng:     # factory(rank, size, tp) -> runtime (picklable, module-level)
            out = eng.call("generate", input_ids=..., ...)
    """

    def __init__(self, factory, size: int, device: str = "cpu", start_timeout: float = 300.0):
        ctx = mp.get_context("spawn")
        if not os.path.basename(sys.executable).startswith("python"):
            # inside Triton's python-backend stub sys.executable is the stub: start ranks with the python on PATH
            ctx.set_executable(shutil.which("python3") or shutil.which("python"))
        port = free_port()
        self.size = size
        self.procs, self.conns = [], []
        # A script run as __main__ (not a notebook) would be re-executed by every spawned rank; the ranks need
        # nothing from it (the factory lives in an importable module), so hide it while they start.
        main = sys.modules.get("__main__")
        saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main is not None and hasattr(main, k)}
        try:
            if "__file__" in saved:
                del main.__file__
            if "__spec__" in saved:
                main.__spec__ = None
            for rank in range(size):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_worker, args=(rank, size, port, factory, child, os.getpid(), device), daemon=True)
                p.start()
                self.procs.append(p)
                self.conns.append(parent)
        finally:
            for k, v in saved.items():
                setattr(main, k, v)
        try:
            for rank, c in enumerate(self.conns):
                if not c.poll(start_timeout):
                    raise RuntimeError(f"tensor-parallel rank {rank} did not start in {start_timeout:.0f} s")
                status, info = c.recv()
                if status != "ready":
                    raise RuntimeError(f"tensor-parallel rank {rank} failed to start:\n{info}")
        except BaseException:
            self.close()
            raise

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def call(self, method: str, **kwargs):
        for c in self.conns:
            c.send((method, kwargs))
        answers = [c.recv() for c in self.conns]
        for rank, (status, info) in enumerate(answers):
            if status != "ok":
                raise RuntimeError(f"tensor-parallel rank {rank} failed in {method}:\n{info}")
        return answers[0][1]

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(("stop", {}))
            except Exception:
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        self.procs, self.conns = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
