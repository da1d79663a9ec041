"""ft_w8_kernel: the W8A16 Triton kernel (interpreted on the CPU when Triton is installed), its CPU fallback,
the correctness check the benchmark runs before timing, and the block-size heuristic."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ft_int8
import ft_w8_kernel as w8

HERE = Path(__file__).resolve().parent


def _case(m, n, k, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = ft_int8.quantize(torch.randn(k, n, generator=g))
    return torch.randn(m, k, generator=g).to(dtype), q.q, q.scale.to(dtype), torch.randn(n, generator=g).to(dtype)


@pytest.mark.parametrize("m", [1, 3, 64, 65])
def test_linear_is_the_dequantized_gemm(m):
    """Whatever runs here (the fallback without Triton; 65 rows always take it), y = x (q * scale)^T + b."""
    x, q, s, b = _case(m, 37, 200)
    y = w8.linear(x[None], q, s, b)                      # leading dims are kept
    assert y.shape == (1, m, 37)
    ratio, _ = w8.max_violation(y[0], x, q, s, b)
    assert ratio <= 1.0


def test_verify_catches_wrong_kernels():
    """The check the benchmark runs before timing fails for a kernel that skips a k block, puts the scale on
    the wrong rows, or drops the bias, and passes the reference itself."""
    x, q, s, b = _case(1, 33, 300)
    assert w8.verify(w8.reference, q, s, b, rows=3)["max_err_over_tol"] <= 1.0
    wrong = {
        "skips the last 32 inputs": lambda x, q, s, b: w8.reference(x[:, :-32], q[:, :-32], s, b),
        "scales the wrong rows": lambda x, q, s, b: w8.reference(x, q, s.flip(0), b),
        "drops the bias": lambda x, q, s, b: w8.reference(x, q, s, None),
    }
    for what, fn in wrong.items():
        with pytest.raises(RuntimeError, match=r"W8A16 kernel mismatch \(.*\): M=3 N=33 K=300"):
            w8.verify(fn, q, s, b, rows=3, what=f"({what})")
    nan = lambda x, q, s, b: torch.full((x.shape[0], q.shape[0]), float("nan"))
    with pytest.raises(RuntimeError, match="mismatch"):
        w8.verify(nan, q, s, b, rows=1)


def test_rows_outside_the_kernel():
    for m in (0, 65):
        with pytest.raises(ValueError, match=r"takes 1\.\.64 rows, got"):
            w8.row_bucket(m)


@pytest.mark.parametrize("m", [1, 16, 64])
def test_heuristic_fills_the_gpu_within_the_partials_budget(m):
    """GPT-J-6B's two decode GEMMs on a 132-SM GPU: at least 2 programs per SM (one row: at least 4), and the
    split-K partials cost at most a tenth of the weight bytes."""
    for n, k in ((28672, 4096), (4096, 20480)):
        cfg = w8.config_for(m, n, k, "cpu")   # the CPU stands in for a 132-SM device
        programs = -(-n // cfg.block_n) * cfg.split_k
        assert programs >= (4 if m == 1 else 2) * 132, (n, k, cfg)
        assert cfg.split_k == 1 or 8 * m * n * cfg.split_k <= n * k / 10
        assert (cfg.block_m == 1) == (m == 1) and cfg.block_m >= (m if m > 1 else 1)


def test_candidates_are_distinct_and_valid():
    for m, n, k in ((1, 4096, 20480), (64, 28672, 4096)):
        cands = w8.candidates(m, n, k, "cpu")
        assert len(cands) == len(set(cands)) >= 2
        assert all(c.block_m == w8.row_bucket(m) and c.split_k <= w8.max_split(m, n, k, c.block_k) for c in cands)


INTERPRETED = r"""
import sys
sys.path.insert(0, sys.argv[1])
import torch, ft_int8, ft_w8_kernel as w8
assert w8.backend("cpu") == "triton (interpreted)", w8.backend("cpu")
worst = 0.0
def case(m, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    q = ft_int8.quantize(torch.randn(k, n, generator=g))
    return torch.randn(m, k, generator=g), q, torch.randn(n, generator=g)
# both paths (block_m 1: GEMV; 16/64: tl.dot), k not a multiple of the block, n odd, split-K with a ragged last split
for m, n, k, cfg in [(1, 37, 200, w8.Config(1, 8, 64, 1)), (1, 33, 300, w8.Config(1, 16, 32, 3)),
                     (3, 37, 200, w8.Config(16, 16, 64, 1)), (3, 21, 1000, w8.Config(16, 16, 64, 4)),
                     (64, 37, 200, w8.Config(64, 32, 32, 2))]:
    x, q, b = case(m, n, k, m + n)
    for bias in (b, None):
        y = w8._launch(x, q.q, q.scale, bias, cfg, wrap=False)
        worst = max(worst, w8.max_violation(y, x, q.q, q.scale, bias)[0])
# through the registered op (heuristic config) and ft_int8's "triton" impl, a strided weight view included
x, q, b = case(3, 41, 260, 7)
qt = ft_int8.Int8Weight(q.q, q.scale, "triton")
worst = max(worst, w8.max_violation(ft_int8.linear(x, qt, b), x, q.q, q.scale, b)[0])
view = qt.cols(0, 130)
worst = max(worst, w8.max_violation(ft_int8.linear(x[:, :130], view), x[:, :130], view.q, view.scale)[0])
# tune: a config that does not compile (BLOCK_N = 3: not a power of 2) is recorded and skipped, the fastest
# (by the given timer) is kept and then used by the op
x, q, b = case(1, 37, 200, 11)
times = iter([3.0, 1.0, 2.0])
cfgs = [w8.Config(1, 8, 64, 1), w8.Config(1, 16, 32, 3), w8.Config(1, 3, 64, 1), w8.Config(1, 8, 32, 2)]
res = w8.tune([(q.q, q.scale)] * 2, 1, log=lambda *a: None, configs=cfgs, timer=lambda fn: (fn(), next(times))[1])
assert "error" in res["all"][2] and res["best"]["ms"] == 0.5, res
assert w8.config_for(1, 37, 200, "cpu") == cfgs[1]
worst = max(worst, w8.max_violation(w8.linear(x, q.q, q.scale, b), x, q.q, q.scale, b)[0])
print("WORST", worst)
"""


def test_interpreted_triton_kernel_matches_the_reference():
    """The Triton kernels themselves, run by Triton's interpreter (TRITON_INTERPRET=1) on CPU tensors, in a child
    process: triton.jit reads the variable when the module is imported."""
    pytest.importorskip("triton", reason="Triton is not installed here (the CPU venv has none): the kernel "
                                          "runs interpreted only where `import triton` works")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", INTERPRETED, str(HERE.parent)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    worst = float(out.stdout.split("WORST")[-1])
    assert worst <= 1.0, out.stdout


TRACED = r"""
import sys
sys.path.insert(0, sys.argv[1])
import torch, triton, ft_w8_kernel as w8
from triton.backends.compiler import GPUTarget
from torch._functorch.aot_autograd import aot_module_simplified
from torch._subclasses.fake_tensor import FakeTensorMode

class Hopper:   # no GPU here: Triton's mutation analysis only needs a target to lower the kernel to TTIR
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)
    def get_active_torch_device(self):
        return torch.device("cuda")
triton.runtime.driver.set_active(Hopper())
w8.num_sms = lambda device: 132
graphs = []

def backend(gm, inputs):
    def keep(g, _):
        graphs.append(g)
        return lambda *a: None
    return aot_module_simplified(gm, inputs, fw_compiler=keep)

def step(x, q1, s1, b1, q2, s2):   # the decode step's shape: GEMM + bias -> gelu -> GEMM
    return w8.linear(torch.nn.functional.gelu(w8.linear(x, q1, s1, b1)), q2, s2)

for m in (1, 64):
    with FakeTensorMode():
        e = lambda *shape, dt=torch.float16: torch.empty(*shape, dtype=dt, device="cuda")
        args = (e(m, 4096), e(16384, 4096, dt=torch.int8), e(16384), e(16384), e(4096, 16384, dt=torch.int8), e(4096))
    torch._dynamo.reset()
    torch.compile(step, fullgraph=True, backend=backend)(*args)
    for g in graphs[-1:]:
        calls = [n for n in g.graph.nodes if n.op == "call_function" and "triton_kernel_wrapper" in str(n.target)]
        print("M", m, "KERNELS", len(calls), "CLONED", sorted({c for n in calls for c in n.kwargs["tensors_to_clone"]}))
"""


def test_fullgraph_compile_sees_the_kernels_and_writes_only_outputs():
    """torch.compile(fullgraph=True) traces through the triton_op down to the Triton kernels (no graph break),
    and Triton's mutation analysis (lowered for a Hopper target, no GPU needed) finds that the kernels write
    only their outputs: the int8 weight, scale and bias are not copied for functionalization. One row: one
    kernel per GEMM (the second split over k: + its epilogue); 64 rows: split-K on the second GEMM too."""
    pytest.importorskip("triton", reason="Triton is not installed here (the CPU venv has none)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", TRACED, str(HERE.parent)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [l for l in out.stdout.splitlines() if l.startswith("M ")]
    assert len(lines) == 2, out.stdout + out.stderr[-2000:]
    for line in lines:
        assert line.endswith("CLONED ['out_ptr', 'part_ptr']") or line.endswith("CLONED ['out_ptr']"), line
        assert int(line.split("KERNELS")[1].split()[0]) >= 2, line
