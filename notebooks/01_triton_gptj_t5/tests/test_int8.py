"""int8 weight-only GEMMs (ft_int8) and the GPT-J runtime's int8 option, on the CPU."""
import pytest
import torch

import ft_int8
import ft_runtime_gptj as rg
from test_runtime_gptj import PROMPTS, padded


def test_quantize_is_fts_formula():
    # one column: max |w| = 2.56 -> scale 0.02 (= max / 128, not / 127); 0.05 / 0.02 = 2.5 rounds away from 0 to 3
    # (torch.round would give 2); 2.56 / 0.02 = 128 clips to 127, -2.56 to -128
    w = torch.tensor([[2.56, 0.0], [-2.56, 0.0], [0.05, 0.0], [-0.05, 0.0]])
    q = ft_int8.quantize(w)
    assert q.q.shape == (2, 4) and q.q.dtype == torch.int8          # stored [n, k]
    assert torch.allclose(q.scale, torch.tensor([0.02, 0.0]))          # the all-zero column: scale 0, no NaN
    assert q.q[0].tolist() == [127, -128, 3, -3] and q.q[1].tolist() == [0, 0, 0, 0]
    assert ft_int8.quantize(w.half()).scale.dtype == torch.float16     # the scale in the compute dtype, as FT


def test_quantize_errors():
    with pytest.raises(ValueError, match=r"non-empty \[k, n\] weight"):
        ft_int8.quantize(torch.ones(3))
    with pytest.raises(ValueError, match="unknown int8 GEMM impl 'int4'"):
        ft_int8.quantize(torch.ones(3, 3), impl="int4")
    with pytest.raises(ValueError, match="int8='fp8'"):
        rg.GPTJRuntime({"tensor_para_size": 1}, {}, int8="fp8")
    with pytest.raises(ValueError, match="differ in shape"):
        ft_int8.token_agreement(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("impl", ft_int8.IMPLS)
def test_int8_linear_is_the_dequantized_gemm(impl):
    g = torch.Generator().manual_seed(0)
    w, x, b = torch.randn(48, 40, generator=g), torch.randn(2, 5, 48, generator=g), torch.randn(40, generator=g)
    q = ft_int8.quantize(w, impl=impl)
    y = ft_int8.linear(x, q, b)
    assert torch.allclose(y, x @ ft_int8.dequantize(q) + b, atol=1e-4)
    # error <= half a step, except each column's largest |w|: 128 steps clip to 127, one step off (FT's / 128)
    err, peak = (ft_int8.dequantize(q) - w).abs(), w.abs() == w.abs().amax(0)
    assert ((err <= q.scale / 2 + 1e-6) | peak).all() and (err[peak] <= q.scale.expand_as(w)[peak] + 1e-6).all()
    # views used by the context path: output rows and input columns keep their scales
    assert torch.allclose(ft_int8.linear(x, q.rows(8, 20)), (x @ ft_int8.dequantize(q))[..., 8:20], atol=1e-4)
    assert torch.allclose(ft_int8.linear(x[..., :16], q.cols(0, 16)), x[..., :16] @ ft_int8.dequantize(q)[:16], atol=1e-4)


@pytest.fixture(scope="module")
def rts(gptj_model):
    kw = dict(max_len=64)
    return rg.GPTJRuntime.from_hf(gptj_model, **kw), rg.GPTJRuntime.from_hf(gptj_model, int8="dequant", **kw)


def test_int8_runtime_logits_and_views(rts):
    ref, q = rts
    w = q.layers[0]
    assert isinstance(w["w1"], ft_int8.Int8Weight) and w["qkv"].q.untyped_storage().data_ptr() == w["w1"].q.untyped_storage().data_ptr()
    ids, mask = padded(PROMPTS)
    a, b = ref.logits(ids, mask)[mask.bool()], q.logits(ids, mask)[mask.bool()]
    assert 0 < (a - b).abs().max() < 0.05 * a.abs().max()            # quantized (not equal), and close
    assert ft_int8.logit_cosines(a, b).min() > 0.999
    assert q.weight_bytes() < ref.weight_bytes()


def test_int8_decode_paths_agree(gptj_model, rts):
    """Eager, static (masked whole cache) and the unfused step give the same int8 tokens; compiled too."""
    import torch._dynamo
    _, q = rts
    ref = q.generate(PROMPTS, 6, stop_at_end=False)[0]
    other = rg.GPTJRuntime.from_hf(gptj_model, max_len=64, int8="int8pack")
    assert torch.equal(other.generate(PROMPTS, 6, stop_at_end=False)[0], ref)
    # "triton": on this CPU the fallback (the kernel itself: test_w8_kernel, and the benchmark's check on a GPU)
    tri = rg.GPTJRuntime.from_hf(gptj_model, max_len=64, int8="triton")
    assert torch.equal(tri.generate(PROMPTS, 6, stop_at_end=False)[0], ref)
    other.set_decode(fused_step=False)
    assert torch.equal(other.generate(PROMPTS, 6, stop_at_end=False)[0], ref)
    torch._dynamo.reset()
    q.set_decode(compile=True)
    try:
        assert torch.equal(q.generate(PROMPTS, 6, stop_at_end=False)[0], ref) and q.compile
    finally:
        q.set_decode()


def test_quality_metrics_can_fail(rts):
    """The quality checks see a bad quantization: 3-bit weights (scale max/4) on the tiny random model."""
    ref, q = rts
    ids, mask = padded(PROMPTS)
    saved = [(w["w1"].q.clone(), w["w2"].q.clone()) for w in q.layers]
    try:
        for w in q.layers:
            for k in ("w1", "w2"):
                w[k].q.copy_((w[k].q.float() / 32).round().clamp(-4, 3).mul(32).clamp(-128, 127).to(torch.int8))
        cos = ft_int8.logit_cosines(ref.logits(ids, mask)[mask.bool()], q.logits(ids, mask)[mask.bool()])
        assert cos.min() < 0.999
    finally:
        for w, (a, b) in zip(q.layers, saved):
            w["w1"].q.copy_(a)
            w["w2"].q.copy_(b)


def test_trained_tiny_gptj_int8_quality():
    """The notebook's trained tiny GPT-J: int8 against fp32 on the CPU (8 prompts here; the script prints 32)."""
    res = ft_int8.tiny_gptj_quality(n_prompts=8, new_tokens=8)
    assert res["token_agreement"] >= 0.95 and res["logit_cosine_min"] >= 0.999
    assert abs(res["perplexity_rel_change"]) <= 0.01


def _traced_ops(rows: int, coordinate_descent: bool) -> list:
    """The aten/prims ops Inductor's decompositions turn ft_int8.linear into for CUDA tensors (fake: no GPU
    needed), GPT-J-6B's merged first GEMM (4096 -> 28672) at `rows` rows."""
    import torch._inductor.config as inductor_config
    from torch._inductor.decomposition import select_decomp_table
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    def f(x, q, s, b):
        return ft_int8.linear(x, ft_int8.Int8Weight(q, s), b)

    with inductor_config.patch(coordinate_descent_tuning=coordinate_descent):
        with FakeTensorMode():
            args = (torch.empty(rows, 4096, dtype=torch.float16, device="cuda"),
                    torch.empty(28672, 4096, dtype=torch.int8, device="cuda"),
                    torch.empty(28672, dtype=torch.float16, device="cuda"), torch.empty(28672, dtype=torch.float16, device="cuda"))
        g = make_fx(f, decomposition_table=select_decomp_table(), tracing_mode="fake")(*args)
    return [str(n.target) for n in g.graph.nodes if n.op == "call_function"]


def test_one_row_int8_gemm_becomes_a_reduction_on_cuda():
    """Why the compiled int8 step asks for coordinate_descent_tuning on CUDA: with it, a one-row GEMM is
    decomposed into multiply + sum, so the int8 -> fp16 conversion feeds a reduction Inductor fuses with it
    (the weight is read once, as int8); without it (or at 64 rows) it stays an mm whose input, the
    dequantized weight, would be written out in fp16 first."""
    fused = _traced_ops(1, True)
    assert "aten.mm.default" not in fused and "aten.sum.dim_IntList" in fused
    assert "aten.mm.default" in _traced_ops(1, False) and "aten.mm.default" in _traced_ops(64, True)


def test_runtime_compiles_int8_with_that_option(rts, monkeypatch):
    _, q = rts
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.update(kw) or fn)
    q.set_decode(compile=True)
    monkeypatch.setattr(q, "device", torch.device("cuda"))   # only the device type is read when compiling
    try:
        q._step_callable()
    finally:
        monkeypatch.undo()
        q.set_decode()
    assert seen["options"] == {"coordinate_descent_tuning": True} and seen["fullgraph"] is True
    # the Triton W8A16 kernel needs no decomposition of the one-row GEMM: compiled like the fp16 step
    seen.clear()
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.update(kw) or fn)
    monkeypatch.setattr(q, "int8", "triton")
    q.set_decode(compile=True)
    monkeypatch.setattr(q, "device", torch.device("cuda"))
    try:
        q._step_callable()
    finally:
        monkeypatch.undo()
        q.set_decode()
    assert seen["options"] is None and seen["fullgraph"] is True
