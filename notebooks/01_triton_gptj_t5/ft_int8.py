"""int8 weight-only GEMMs, FasterTransformer's way, and how their quality is measured.

Quantization (FT: `symmetric_quantize` in src/fastertransformer/kernels/cutlass_kernels/cutlass_preprocessors.cc,
reached from the torch op `fastertransformer::symmetric_quantize_last_axis_of_batched_matrix`,
src/fastertransformer/th_op/common/WeightOnlyQuantOps.cc): for an FT weight [k, n] (in, out) it quantizes the
LAST axis, one scale per output channel:
    scale[n] = max_k |W[k, n]| / 128          (quant_range_scale = 1 / 2^(bits-1))
    q[k, n]  = clip(round(W[k, n] / scale[n]), -128, 127)   (C's round: halves away from zero)
and stores the scale in the compute dtype (fp16 for an fp16 model). Activations stay fp16/fp32; FT's
fpA_intB GEMM (cutlass_kernels/fpA_intB_gemm) multiplies by the int8 weights dequantized inside the
GEMM and applies the per-column scale there. FT's GPT layers quantize four weights a layer (fused QKV,
attention output, FFN in, FFN out: `int8_weights_ptr[0..3]` in models/multi_gpu_gpt/
ParallelGptDecoderLayerWeight.cc); embeddings and the logits GEMM stay in the compute dtype.

Here the int8 weights are kept as [n, k] (what F.linear and torch._weight_int8pack_mm take) and
    y = (x @ q^T) * scale (+ bias)
is computed by one of:
- "dequant": F.linear(x, q.to(x.dtype)) * scale. Eager (the CPU), this materialises the dequantized weight;
  under torch.compile on CUDA with Inductor's `coordinate_descent_tuning`, a GEMM with one row (batch-1
  decode) is decomposed into a multiply + reduction (torch/_inductor/decomposition.py, mm/addmm/bmm), so
  the int8 load, the conversion, the dot product and the scale become ONE Triton kernel that reads the
  int8 weight once: half the bytes of fp16, which is what a bandwidth-bound decode step pays for.
- "int8pack": torch._weight_int8pack_mm(x, q, scale) (ATen; on CUDA aten/src/ATen/native/cuda/int8mm.cu,
  a simple kernel that reads the weight once per batch row), timed beside "dequant" by ft_batch_bench.
- "triton": a hand-written Triton W8A16 kernel (ft_w8_kernel) for 1..64 rows, the int8 weight dequantized in
  registers, fp32 accumulation, scale and bias in the epilogue; a torch.library.triton_op, so it compiles
  into the decode step and its CUDA graph. On a CPU (no Triton) and for more rows (a prompt) it computes
  the "dequant" math.
On an H200 (2026-12-01, GPT-J-6B batch 1) "dequant" ran at 4.93 ms/token, slower than fp16 (3.53): Inductor
fused the gelu/cat producing the second GEMM's input into the reduction, and its reductions read the
weight at about 0.7-1.8 TB/s. "int8pack" took 52.6 ms/token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

import ft_w8_kernel

IMPLS = ("dequant", "int8pack", "triton")


@dataclass
class Int8Weight:
    """An int8 weight q [n, k] with one scale per output channel [n] (in the activations' dtype)."""
    q: torch.Tensor
    scale: torch.Tensor
    impl: str = "dequant"

    def rows(self, start: int, stop: int) -> "Int8Weight":
        """Output channels start:stop (a view)."""
        return Int8Weight(self.q[start:stop], self.scale[start:stop], self.impl)

    def cols(self, start: int, stop: int) -> "Int8Weight":
        """Input channels start:stop with the same per-output scales (a view; a copy for "int8pack", whose
        kernel wants a contiguous weight)."""
        q = self.q[:, start:stop]
        return Int8Weight(q.contiguous() if self.impl == "int8pack" else q, self.scale, self.impl)

    @property
    def nbytes(self) -> int:
        return self.q.numel() * self.q.element_size() + self.scale.numel() * self.scale.element_size()


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's round() (what FT uses); torch.round rounds halves to even."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def quantize(w_kn: torch.Tensor, dtype: Optional[torch.dtype] = None, impl: str = "dequant") -> Int8Weight:
    """FT's symmetric per-output-channel int8 quantization of an FT-layout weight [k, n] (see the module
    docstring). The arithmetic is float32 whatever w's dtype; the scale is then stored in `dtype`
    (default: w's dtype). An all-zero column (FT would divide by zero) gets scale 0 and zeros."""
    if w_kn.dim() != 2 or w_kn.numel() == 0:
        raise ValueError(f"quantize wants a non-empty [k, n] weight, got shape {tuple(w_kn.shape)}")
    if impl not in IMPLS:
        raise ValueError(f"unknown int8 GEMM impl {impl!r}; choose one of {IMPLS}")
    w = w_kn.float()
    scale = w.abs().amax(dim=0) / 128.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = round_half_away(w / safe).clamp(-128, 127).to(torch.int8)
    return Int8Weight(q.t().contiguous(), scale.to(dtype or w_kn.dtype), impl)


def dequantize(w: Int8Weight) -> torch.Tensor:
    """The [k, n] float32 weight the int8 GEMM multiplies by."""
    return (w.q.float() * w.scale.float()[:, None]).t()


def linear(x: torch.Tensor, w: Int8Weight, b: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = x @ dequantize(w) (+ b), x [..., k] in fp16/bf16/fp32."""
    if w.impl == "triton":   # bias in the kernel's epilogue
        return ft_w8_kernel.linear(x, w.q, w.scale, b)
    if w.impl == "int8pack":
        y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), w.q, w.scale.to(x.dtype))
        y = y.view(*x.shape[:-1], -1)
    else:
        y = F.linear(x, w.q.to(x.dtype)) * w.scale
    return y if b is None else y + b


# ---------------------------------------------------------------- quality against the float model

def logit_cosines(a: torch.Tensor, b: torch.Tensor, centre: bool = True) -> torch.Tensor:
    """Cosine per position between two [..., V] logit tensors. `centre`: of the logits minus their mean
    over the vocabulary (a shared offset, which the softmax ignores, would otherwise inflate the cosine)."""
    a, b = a.float().reshape(-1, a.shape[-1]), b.float().reshape(-1, b.shape[-1])
    if centre:
        a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return F.cosine_similarity(a, b, dim=-1)


def token_agreement(a: torch.Tensor, b: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> float:
    """Fraction of generated positions where two greedy runs chose the same token (over each row's
    first `lengths` positions when given, else all)."""
    if a.shape != b.shape:
        raise ValueError(f"token tensors differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    same = a == b
    if lengths is None:
        return same.float().mean().item()
    keep = torch.arange(a.shape[1])[None, :] < lengths[:, None]
    return (same & keep).sum().item() / keep.sum().item()


def perplexity(rt, texts_ids: Sequence[Sequence[int]]) -> float:
    """exp(mean next-token negative log-likelihood) of a runtime over token sequences (each >= 2 tokens)."""
    nll, n = 0.0, 0
    for ids in texts_ids:
        if len(ids) < 2:
            raise ValueError("perplexity needs sequences of at least 2 tokens")
        logits = rt.logits(torch.tensor([list(ids)])).float()[0, :-1]
        tgt = torch.tensor(list(ids[1:]), device=logits.device)
        nll += F.cross_entropy(logits, tgt, reduction="sum").item()
        n += len(ids) - 1
    return float(torch.exp(torch.tensor(nll / n)))


def compare(ref_rt, q_rt, prompts: Sequence[Sequence[int]], heldout: Sequence[Sequence[int]],
            new_tokens: int = 16) -> dict:
    """Greedy tokens, logits and held-out perplexity of the int8 runtime `q_rt` against `ref_rt` (the same
    model with float weights). Greedy runs are forced to full length (no stop at the end token)."""
    ta, _ = ref_rt.generate(prompts, new_tokens, stop_at_end=False)
    tb, _ = q_rt.generate(prompts, new_tokens, stop_at_end=False)
    # teacher-forced on the reference's own continuation: every position of prompt + generated tokens
    cos = torch.cat([logit_cosines(ref_rt.logits(torch.tensor([list(p) + t])), q_rt.logits(torch.tensor([list(p) + t])))
                     for p, t in zip(prompts, ta.tolist())])
    ppl_ref, ppl_q = perplexity(ref_rt, heldout), perplexity(q_rt, heldout)
    return {"token_agreement": token_agreement(ta, tb), "logit_cosine_mean": cos.mean().item(),
            "logit_cosine_min": cos.min().item(), "perplexity_ref": ppl_ref, "perplexity_int8": ppl_q,
            "perplexity_rel_change": ppl_q / ppl_ref - 1.0, "prompts": len(prompts), "new_tokens": new_tokens,
            "heldout_sequences": len(heldout)}


def tiny_gptj_quality(ckpt=None, dtype=torch.float32, device: str = "cpu", impl: str = "dequant",
                      n_prompts: int = 32, new_tokens: int = 16, seed: int = 1234) -> dict:
    """int8 against float weights on the notebook's trained tiny GPT-J (ft_weights.tiny_checkpoint).

    Prompts: the first 3-6 tokens of 32 sentences drawn from the training text's generator with another
    seed; held-out text: 64 more such sentences. The corpus is templated, so "held out" means other draws,
    not unseen phrasing."""
    import random

    import ft_runtime_gptj
    import ft_weights
    path = ckpt or ft_weights.tiny_checkpoint("gptj")
    model = ft_weights.load_hf("gptj", path, torch.float32, "cpu")
    tok = ft_weights.gpt2_tokenizer()
    rng = random.Random(seed)
    sentences = [tok.encode(t).ids for t in ft_weights.gptj_corpus(n_prompts + 64, seed)]
    prompts = [ids[:rng.randint(3, 6)] for ids in sentences[:n_prompts]]
    heldout = [ids + [ft_weights.ENDOFTEXT] for ids in sentences[n_prompts:]]
    kw = dict(dtype=dtype, device=device, max_len=64)
    ref = ft_runtime_gptj.GPTJRuntime.from_hf(model, **kw)
    q = ft_runtime_gptj.GPTJRuntime.from_hf(model, int8=impl, **kw)
    out = compare(ref, q, prompts, heldout, new_tokens)
    out.update(model=f"trained tiny GPT-J ({path.name})", dtype=str(dtype).replace("torch.", ""), device=device,
               impl=impl, weight_bytes_float=ref.weight_bytes(), weight_bytes_int8=q.weight_bytes())
    return out


if __name__ == "__main__":
    import argparse
    import json
    import platform
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
    ap = argparse.ArgumentParser(description="int8 weight-only quality on the trained tiny GPT-J")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--impl", default="dequant", choices=IMPLS)
    a = ap.parse_args()
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    res = tiny_gptj_quality(dtype=dt, device=a.device, impl=a.impl)
    res["machine"] = torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or "cpu"
    print(json.dumps(res, indent=1))
