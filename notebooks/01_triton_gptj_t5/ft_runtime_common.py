"""Pieces both runtimes share: the GEMM call a gemm plan selects, sampling, and the tensor-parallel engine.

Tensor parallelism (Megatron style, as FT does it): every rank holds 1/N of the attention heads and of
the FFN columns; the partial outputs of the attention output projection and of the second FFN GEMM are
summed over the ranks with one all-reduce. `TPEngine` starts N worker processes (one per rank, gloo on
CPU, NCCL on GPUs), sends each the same request, and returns rank 0's answer.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import shutil
import socket
import sys
import time
import traceback
from typing import Optional

import torch
import torch.nn.functional as F

import ft_int8


# ---------------------------------------------------------------- GEMMs (what ft_gemm tunes)

def prepare_weight(w_kn: torch.Tensor, layout: str) -> torch.Tensor:
    """Store a [k, n] (FT layout) weight as the chosen implementation wants it."""
    if layout == "kn":
        return w_kn.contiguous()
    if layout == "nk":
        return w_kn.t().contiguous()
    raise ValueError(f"unknown weight layout {layout!r}")


def linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], layout: str) -> torch.Tensor:
    """y = x @ W (+ b) for a weight stored in `layout` ('kn': [k, n], 'nk': [n, k]), or an int8 weight-only
    ft_int8.Int8Weight (its own [n, k] layout, whatever `layout` says)."""
    if isinstance(w, ft_int8.Int8Weight):
        return ft_int8.linear(x, w, b)
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


def loopback_store(timeout_s: float = 300.0):
    """Host a rendezvous store that listens on 127.0.0.1 only; returns (store, port).

    PyTorch's TCPStore server binds every interface whatever host it is given (torch 2.13:
    torch/csrc/distributed/c10d/TCPStoreLibUvBackend.cpp, UvTcpServer::makeWithPort binds "::" or "0.0.0.0"),
    so `init_method="tcp://127.0.0.1:port"` would expose rank 0's store to the network. Handed a socket
    that is already bound and listening (master_listen_fd; makeWithSocket takes it over with uv_tcp_open),
    it serves on that socket. Keep the store object alive for as long as ranks may use it."""
    import datetime
    import torch.distributed as dist
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    # detach: the store owns the file descriptor from now on (and closes it when it is destroyed)
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, master_listen_fd=sock.detach(),
                          timeout=datetime.timedelta(seconds=timeout_s))
    return store, port


def join_group(backend: str, port: int, rank: int, size: int, timeout_s: float = 60.0,
               connect_timeout_s: float = 300.0, **kwargs) -> None:
    """Join the default process group as a client of the loopback store at `port` (see loopback_store);
    all `size` ranks must join within `connect_timeout_s`.

    `timeout_s` bounds every collective: a rank whose peer died or hangs gets an error after that long
    instead of waiting gloo's default 30 minutes (on NCCL its watchdog acts on it, TORCH_NCCL_ASYNC_ERROR_HANDLING). The data
    sockets of gloo (and NCCL's bootstrap) go over loopback too, unless GLOO_SOCKET_IFNAME /
    NCCL_SOCKET_IFNAME say otherwise (the ranks of one engine always share a host)."""
    import datetime
    import torch.distributed as dist
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=connect_timeout_s))
    # gloo's connect waits at most timeout_s for the peers (it uses the group's timeout): meet here first, so
    # that ranks starting seconds apart (a loaded machine) do not fail a short timeout_s
    store.set(f"joined/{rank}", "1")
    store.wait([f"joined/{r}" for r in range(size)])
    dist.init_process_group(backend, store=store, rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)


def _from_collective(exc: Exception) -> bool:
    """Did `exc` come out of a torch.distributed call? (A peer died or timed out: gloo then closes the pair
    and the group is unusable, "Application timeout caused pair closure" on the next collective.)"""
    import torch.distributed as dist
    tb = traceback.extract_tb(exc.__traceback__)
    return isinstance(exc, dist.DistError) or bool(tb) and tb[-1].filename.startswith(os.path.dirname(dist.__file__))


class RankFailure(RuntimeError):
    """A rank died or stopped answering: the group is out of step and the engine unusable (start a new one)."""


def _worker(rank: int, size: int, port: int, factory, conn, parent_pid: int, device: str, timeout_s: float):
    """One rank: join the group, build the runtime, then answer (method, kwargs) commands in lockstep."""
    import torch.distributed as dist
    try:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // size))
        if device.startswith("cuda"):
            torch.cuda.set_device(rank)
        join_group("nccl" if device.startswith("cuda") else "gloo", port, rank, size, timeout_s)
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
        except Exception as exc:
            conn.send(("group error" if _from_collective(exc) else "error", traceback.format_exc()))
    try:
        dist.destroy_process_group()
    except Exception:
        pass


class TPEngine:
    """N worker processes, one per rank, each holding its slice of the weights.

        with TPEngine(factory, size=2) as eng:     # factory(rank, size, tp) -> runtime (picklable, module-level)
            out = eng.call("generate", input_ids=..., ...)

    This process hosts the rendezvous store on 127.0.0.1 (loopback_store) and the ranks join it as clients.
    `timeout_s` bounds each collective of the ranks; a rank that dies or stops answering makes `call` raise
    RankFailure (naming the rank) instead of hanging, and the engine refuses further calls.
    """

    def __init__(self, factory, size: int, device: str = "cpu", start_timeout: float = 300.0, timeout_s: float = 60.0):
        ctx = mp.get_context("spawn")
        if not os.path.basename(sys.executable).startswith("python"):
            # inside Triton's python-backend stub sys.executable is the stub: start ranks with the python on PATH
            ctx.set_executable(shutil.which("python3") or shutil.which("python"))
        self._store, self.rendezvous_port = loopback_store(start_timeout)
        port = self.rendezvous_port
        self.size, self.timeout_s, self.broken = size, float(timeout_s), None
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
                p = ctx.Process(target=_worker, args=(rank, size, port, factory, child, os.getpid(), device, timeout_s),
                                daemon=True)
                p.start()
                child.close()   # only the rank holds its end: when it dies, our end reads EOF instead of blocking
                self.procs.append(p)
                self.conns.append(parent)
        finally:
            for k, v in saved.items():
                setattr(main, k, v)
        try:
            self._gather("start", time.monotonic() + start_timeout)
        except BaseException:
            self.close()
            raise

    def _gather(self, what: str, deadline: float = float("inf")) -> list:
        """One answer from every rank, in rank order (`what` is "start" or the method called).

        A rank that exits before answering, or a `deadline` that passes, raises RankFailure. Once a rank has
        reported an error, the others get timeout_s + 30 s to answer (a rank waiting in a collective for a
        failed peer errors after timeout_s); at start the first error is raised at once with its traceback."""
        pending, answers = set(range(self.size)), [None] * self.size
        while pending:
            waitables = [self.conns[r] for r in pending] + [self.procs[r].sentinel for r in pending]
            ready = set(mp_connection.wait(waitables, timeout=max(0.0, min(1.0, deadline - time.monotonic()))))
            for r in sorted(pending):
                c, p = self.conns[r], self.procs[r]
                if c not in ready and p.sentinel not in ready:
                    continue
                try:
                    answers[r] = c.recv()   # a rank that exited after answering still has its answer queued
                except (EOFError, OSError):
                    p.join(5)
                    self._broke(f"tensor-parallel rank {r} exited (exit code {p.exitcode}) during {what}")
                pending.discard(r)
                if answers[r][0] == "group error":   # with every error so far: another rank's may be the cause
                    # a rank that died is the cause when there is one: its peers' collectives fail with "connection
                    # reset" as soon as it is gone, often before its own pipe is read here (`pending`: the ranks
                    # that have not answered, r no longer among them)
                    sentinels = [self.procs[q].sentinel for q in pending]
                    dead = set(mp_connection.wait(sentinels, timeout=0.5)) if sentinels else set()
                    for q in sorted(q for q in pending if self.procs[q].sentinel in dead):
                        self.procs[q].join(5)
                        self._broke(f"tensor-parallel rank {q} exited (exit code {self.procs[q].exitcode}) during {what}")
                    errors = [f"rank {q}: {a[1].strip().splitlines()[-1]}" for q, a in enumerate(answers) if a and a[0] != "ok"]
                    self._broke(f"a collective of the tensor-parallel ranks failed during {what} ({'; '.join(errors)})")
                if answers[r][0] == "error":
                    if what == "start":
                        raise RuntimeError(f"tensor-parallel rank {r} failed to start:\n{answers[r][1]}")
                    deadline = min(deadline, time.monotonic() + self.timeout_s + 30)
            if pending and time.monotonic() > deadline:
                self._broke(f"tensor-parallel rank(s) {sorted(pending)} did not answer {what} in time")
        return answers

    def _broke(self, why: str):
        self.broken = why
        raise RankFailure(why)

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def call(self, method: str, **kwargs):
        """Run `runtime.<method>(**kwargs)` on every rank; rank 0's result. An exception on the ranks is raised
        here as RuntimeError (the engine stays usable); a dead or silent rank as RankFailure."""
        if self.broken:
            raise RankFailure(f"this engine is unusable: {self.broken}")
        try:
            for c in self.conns:
                c.send((method, kwargs))
        except OSError:
            pass   # a dead rank's pipe; _gather names the rank
        answers = self._gather(method)
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
            p.join(timeout=0.5 if self.broken else 10)
            if p.is_alive():
                p.kill()   # works on a stopped rank too
                p.join(timeout=5)
        self.procs, self.conns, self._store = [], [], None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
