"""A hand-written Triton W8A16 GEMM for the decode step: y = (x @ q^T) * scale (+ bias).

x [M, K] fp16/bf16/fp32 (M = rows of the decode step = batch, 1..MAX_M), q [N, K] int8 with one scale per
output channel (ft_int8.quantize), fp32 accumulation, scale and bias applied in the epilogue: the int8
weight is read once, coalesced along k, and converted to the activations' dtype in registers, which is
what FasterTransformer's fpA_intB GEMM does (src/fastertransformer/kernels/cutlass_kernels/fpA_intB_gemm).

Two ways through the main kernel, chosen per call from M (a constexpr, so each is its own compiled kernel):
- M == 1 (GEMV): a [BLOCK_N, BLOCK_K] fp32 tile of products accumulated elementwise over the k loop and
  summed once at the end (no tensor cores: one row has nothing to multiply them with);
- M >= 2: tl.dot on [BLOCK_M, BLOCK_K] x [BLOCK_K, BLOCK_N] tiles (rows padded up to BLOCK_M >= 16).
Split-K (grid axis 1) gives a small-N GEMM enough programs to fill the GPU: each split writes fp32 partial
sums and a second small kernel adds them and applies scale and bias (deterministic, unlike atomics).

It is a `torch.library.triton_op` (torch/_library/triton.py): torch.compile(fullgraph=True) sees the Triton
kernels themselves (wrap_triton -> triton_kernel_wrapper_functional), and the compiled step can be captured
as a CUDA graph. Block sizes come from `config_for` (a heuristic) unless `tune` has measured better ones
for that shape on this device; they are read when the op is traced, so tune before compiling.

Without Triton, or on a CPU without TRITON_INTERPRET=1, `linear` computes the same product with plain
PyTorch (ft_int8's "dequant" math).
"""
from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:   # the CPU venv: the fallback below serves
    triton = tl = None
    HAVE_TRITON = False

MAX_M = 64   # rows the kernel is built for (decode batches); more rows (a prompt) take the fallback
# triton.jit reads TRITON_INTERPRET when it decorates: the kernels below then run on CPU tensors (numpy)
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class Config:
    block_m: int     # 1: the GEMV path; >= 16: tl.dot
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 3


def _pow2_at_least(n: int, lo: int) -> int:
    p = lo
    while p < n:
        p *= 2
    return p


@functools.lru_cache(maxsize=None)
def num_sms(device: str) -> int:
    d = torch.device(device)
    return torch.cuda.get_device_properties(d).multi_processor_count if d.type == "cuda" else 132


def max_split(m: int, n: int, k: int, block_k: int) -> int:
    """The most k-splits worth having: each split keeps at least two k blocks, and the fp32 partials (written
    and read back: 8 bytes per output per split) stay under a tenth of the int8 weight's bytes."""
    by_k = max(1, k // (2 * block_k))
    by_bytes = max(1, (n * k) // (10 * 8 * m * n))
    return max(1, min(by_k, by_bytes, 64))


def config_for(m: int, n: int, k: int, device: str = "cuda") -> Config:
    """The tuned config for this shape if `tune` measured one, else a heuristic: enough programs (n blocks
    x k splits) for about 8 per SM, so that every SM streams weights until the end."""
    hit = TUNED.get((row_bucket(m), n, k, str(torch.device(device))))
    if hit is not None:
        return hit
    sms = num_sms(device)
    if m == 1:
        bm, bn, bk, warps, stages = 1, 8, min(512, _pow2_at_least(k, 16)), 4, 2
    else:   # narrower n blocks where the k splits the partials budget allows would leave SMs idle
        bm, bk, warps, stages = row_bucket(m), min(128, _pow2_at_least(k, 16)), 4, 4
        bn = next((b for b in (64, 32) if -(-n // b) * max_split(m, n, k, bk) >= 2 * sms), 16)
    return Config(bm, bn, bk, split_for(m, n, k, bn, bk, sms), warps, stages)


def split_for(m: int, n: int, k: int, block_n: int, block_k: int, sms: int) -> int:
    """The fewest k splits (a power of 2) that give about 8 programs per SM, within max_split."""
    split, programs = 1, -(-n // block_n)
    while programs * split * 2 <= 8 * sms and split * 2 <= max_split(m, n, k, block_k):
        split *= 2
    return split


def row_bucket(m: int) -> int:
    """BLOCK_M for m rows: 1 (GEMV) or the next of 16, 32, 64."""
    if not 1 <= m <= MAX_M:
        raise ValueError(f"the W8A16 kernel takes 1..{MAX_M} rows, got {m}")
    return 1 if m == 1 else _pow2_at_least(m, 16)


# (row bucket, n, k, device) -> Config measured by `tune`
TUNED: Dict[Tuple[int, int, int, str], Config] = {}


if HAVE_TRITON:
    @triton.jit
    def _w8a16_kernel(x_ptr, q_ptr, s_ptr, b_ptr, out_ptr, part_ptr, M, N, K, K_SPLIT,
                      stride_xm, stride_xk, stride_qn, stride_qk, stride_om, stride_on,
                      HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
        pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_k = tl.arange(0, BLOCK_K)
        k_lo = pid_k * K_SPLIT
        n_ok = offs_n < N
        if BLOCK_M == 1:
            prod = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            for k0 in range(0, K_SPLIT, BLOCK_K):
                kk = k_lo + k0 + offs_k
                k_ok = kk < K
                x = tl.load(x_ptr + pid_m * stride_xm + kk * stride_xk, mask=k_ok, other=0.0)
                # the weight streams through once: do not let it push the activations out of L2
                w = tl.load(q_ptr + offs_n[:, None] * stride_qn + kk[None, :] * stride_qk,
                            mask=n_ok[:, None] & k_ok[None, :], other=0, eviction_policy="evict_first")
                prod += w.to(tl.float32) * x.to(tl.float32)[None, :]
            acc = tl.sum(prod, axis=1)[None, :]                       # [1, BLOCK_N]
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, K_SPLIT, BLOCK_K):
                kk = k_lo + k0 + offs_k
                k_ok = kk < K
                x = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :] * stride_xk,
                            mask=(offs_m[:, None] < M) & k_ok[None, :], other=0.0)
                w = tl.load(q_ptr + offs_n[:, None] * stride_qn + kk[None, :] * stride_qk,
                            mask=n_ok[:, None] & k_ok[None, :], other=0, eviction_policy="evict_first")
                # int8 -> fp16/bf16 is exact (|q| <= 128); fp32 activations multiply in full precision (no tf32)
                if IEEE:
                    acc += tl.dot(x, tl.trans(w.to(x.dtype)), input_precision="ieee")
                else:
                    acc += tl.dot(x, tl.trans(w.to(x.dtype)))
        m_ok = offs_m < M
        if SPLIT_K == 1:
            acc = acc * tl.load(s_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            if HAS_BIAS:
                acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
                     acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
        else:
            tl.store(part_ptr + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :], acc,
                     mask=m_ok[:, None] & n_ok[None, :])

    @triton.jit
    def _splitk_epilogue(part_ptr, s_ptr, b_ptr, out_ptr, M, N, stride_om, stride_on,
                         HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < M * N
        n = offs % N
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in tl.static_range(SPLIT_K):
            acc += tl.load(part_ptr + s * M * N + offs, mask=ok, other=0.0)
        acc = acc * tl.load(s_ptr + n, mask=ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            acc += tl.load(b_ptr + n, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + (offs // N) * stride_om + n * stride_on, acc.to(out_ptr.dtype.element_ty), mask=ok)

    def _launch(x, q, scale, bias, cfg: Config, wrap: bool) -> torch.Tensor:
        """Run the kernels for one config; `wrap`: through wrap_triton (inside the op, so that torch.compile
        sees the kernels), else launched directly (`tune`)."""
        m, k = x.shape
        n = q.shape[0]
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
        k_split = -(-k // (cfg.split_k * cfg.block_k)) * cfg.block_k   # a whole number of k blocks per split
        split = -(-k // k_split)                                         # splits that have work
        part = torch.empty((split, m, n) if split > 1 else (1,), dtype=torch.float32, device=x.device)
        b = scale if bias is None else bias                              # a pointer the kernel never reads
        grid = (triton.cdiv(n, cfg.block_n), split, triton.cdiv(m, cfg.block_m))
        main = torch.library.wrap_triton(_w8a16_kernel) if wrap else _w8a16_kernel
        main[grid](x, q, scale, b, out, part, m, n, k, k_split, x.stride(0), x.stride(1), q.stride(0), q.stride(1),
                   out.stride(0), out.stride(1), HAS_BIAS=bias is not None, SPLIT_K=split, BLOCK_M=cfg.block_m,
                   BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, IEEE=x.dtype == torch.float32,
                   num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        if split > 1:
            block = 1024
            epi = torch.library.wrap_triton(_splitk_epilogue) if wrap else _splitk_epilogue
            epi[(triton.cdiv(m * n, block),)](part, scale, b, out, m, n, out.stride(0), out.stride(1),
                                              HAS_BIAS=bias is not None, SPLIT_K=split, BLOCK=block)
        return out

    @torch.library.triton_op("ft_w8::w8a16_linear", mutates_args={})
    def w8a16_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """x [M, K] @ q[N, K]^T * scale (+ bias) -> [M, N] in x's dtype (the config is chosen at trace time)."""
        cfg = config_for(x.shape[0], q.shape[0], x.shape[1], str(x.device))
        return _launch(x, q, scale, bias, cfg, wrap=True)


def backend(device) -> str:
    """What `linear` runs for tensors on `device`."""
    dev = torch.device(device)
    if HAVE_TRITON and (dev.type == "cuda" or INTERPRET):
        return "triton" + (" (interpreted)" if INTERPRET else "")
    return "fallback (dequant math, plain PyTorch)"


def reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The float reference: x @ (q * scale)^T (+ bias) in float32."""
    y = x.float() @ (q.float() * scale.float()[:, None]).t()
    return y if bias is None else y + bias.float()


def linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = x @ (q * scale)^T (+ bias), x [..., K]: the Triton kernel for 1..MAX_M rows on CUDA (or interpreted),
    else the dequantize-then-GEMM math."""
    rows = x.numel() // x.shape[-1]
    if backend(x.device).startswith("triton") and 1 <= rows <= MAX_M:
        y = torch.ops.ft_w8.w8a16_linear(x.reshape(rows, x.shape[-1]), q, scale, bias)
        return y.view(*x.shape[:-1], q.shape[0])
    y = F.linear(x, q.to(x.dtype)) * scale
    return y if bias is None else y + bias


# ---------------------------------------------------------------- correctness and tuning on the device

def max_violation(y: torch.Tensor, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> Tuple[float, float]:
    """(worst |y - ref| / tol, worst |y - ref|) against the float32 reference; a ratio above 1 is a mismatch.

    tol = 2^-10 |ref| + 1e-4 * sum_k |x_k w_k| + 1e-6: y is rounded to the activations' dtype (fp16: half an ulp
    is 2^-11 of |y|; bf16 needs 2^-8, see `rel`), and the kernel sums in fp32 in another order than the
    reference (each partial sum rounds by 2^-24; over K terms the error grows like sqrt(K) * 2^-24 * sum |x w|,
    about 1e-5 of it at K = 20480, so 1e-4 is ten times that). A wrong kernel (a k block skipped or counted
    twice, a scale on the wrong row) is off by about |ref| / sqrt(blocks), hundreds of times this at these sizes."""
    ref = reference(x, q, scale, bias)
    absdot = x.float().abs() @ (q.float().abs() * scale.float().abs()[:, None]).t()
    rel = 2.0 ** -7 if y.dtype == torch.bfloat16 else 2.0 ** -10
    tol = rel * ref.abs() + 1e-4 * absdot + 1e-6
    err = (y.float() - ref).abs()
    return (err / tol).max().item(), err.max().item()


def verify(fn: Callable, q: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor], rows: int,
           dtype=None, seed: int = 0, what: str = "") -> dict:
    """Run fn(x, q, scale, bias) on random activations of `rows` rows and compare it with the float reference;
    raise RuntimeError naming the shape on a mismatch. Returns the errors."""
    g = torch.Generator(device=q.device).manual_seed(seed)
    x = torch.randn(rows, q.shape[1], generator=g, device=q.device).to(dtype or scale.dtype)
    y = fn(x, q, scale, bias)
    ratio, err = max_violation(y, x, q, scale, bias)
    if not ratio <= 1.0:   # NaN fails too
        raise RuntimeError(f"W8A16 kernel mismatch {what}: M={rows} N={q.shape[0]} K={q.shape[1]} "
                           f"max |y - ref| = {err:.3g}, {ratio:.3g} x the tolerance")
    return {"rows": rows, "n": q.shape[0], "k": q.shape[1], "max_abs_err": err, "max_err_over_tol": ratio}


def candidates(m: int, n: int, k: int, device: str = "cuda") -> List[Config]:
    """Configs `tune` times for one shape: the heuristic's and a few block shapes and k splits around it."""
    base = config_for(m, n, k, device) if (row_bucket(m), n, k, str(torch.device(device))) not in TUNED else None
    out = [base] if base else []
    if m == 1:
        shapes = [(4, 1024, 4, 2), (8, 512, 4, 2), (8, 1024, 8, 2), (16, 256, 4, 2), (16, 512, 8, 2), (32, 256, 8, 2)]
    else:
        shapes = [(32, 128, 4, 4), (64, 128, 4, 4), (64, 64, 4, 5), (128, 128, 8, 3), (32, 256, 4, 3)]
    sms = num_sms(device)
    for bn, bk, warps, stages in shapes:
        bk = min(bk, _pow2_at_least(k, 16))
        split = split_for(m, n, k, bn, bk, sms)
        for sk in (split, 2 * split):   # the heuristic's split for this block shape, and twice as many
            if sk <= max_split(m, n, k, bk):
                out.append(Config(row_bucket(m), bn, bk, sk, warps, stages))
    return list(dict.fromkeys(out))


def graph_ms(fn: Callable, reps: int = 10) -> float:
    """Median ms of one replay of a CUDA graph of fn() (no Python launch cost between the kernels)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def tune(weights: Sequence[Tuple[torch.Tensor, torch.Tensor]], rows: int, log: Callable = print,
         configs: Optional[Iterable[Config]] = None, timer: Callable[[Callable], float] = graph_ms) -> dict:
    """Time the candidate configs of one GEMM shape at `rows` rows over `weights` (a list of (q, scale) of that
    shape, e.g. one per layer: one CUDA graph calls each once, so the weights come from HBM, not from L2, as in
    a decode step), check each against the float reference, and keep the fastest in TUNED. `timer(fn)`: ms of
    one fn() (a CUDA graph replay by default: CUDA only)."""
    q0, s0 = weights[0]
    n, k = q0.shape
    dev = str(q0.device)
    x = torch.randn(rows, k, device=q0.device).to(s0.dtype)
    results = []
    for cfg in (list(configs) if configs is not None else candidates(rows, n, k, dev)):
        run = lambda a, qq, ss, bb, c=cfg: _launch(a, qq, ss, bb, c, wrap=False)
        try:
            run(x, q0, s0, None)
        except Exception as e:  # noqa: BLE001 - e.g. a block shape that needs more shared memory than there is
            results.append({"config": asdict(cfg), "error": f"{type(e).__name__}: {str(e)[:200]}"})
            log(f"  w8a16 M={rows} N={n} K={k} {cfg}: does not run ({results[-1]['error']})")
            continue
        verify(run, q0, s0, None, rows, what=f"(config {cfg})")   # a wrong result is a bug: raise
        ms = timer(lambda: [run(x, qq, ss, None) for qq, ss in weights]) / len(weights)
        gbs = (n * k + 2 * n) / (ms * 1e-3) / 1e9
        results.append({"config": asdict(cfg), "ms": ms, "weight_gb_per_s": gbs})
        log(f"  w8a16 M={rows} N={n} K={k} {cfg}: {ms * 1e3:.1f} us, {gbs:.0f} GB/s")
    ok = [r for r in results if "ms" in r]
    if not ok:
        raise RuntimeError(f"no W8A16 config runs for M={rows} N={n} K={k}: {results}")
    best = min(ok, key=lambda r: r["ms"])
    TUNED[(row_bucket(rows), n, k, str(torch.device(dev)))] = Config(**best["config"])
    return {"rows": rows, "n": n, "k": k, "best": best, "all": results}
