"""Benchmarks measured in one run: Hugging Face generate vs the project runtime (and through Triton).

"ms per generated token" is the decode cost: (time to generate N tokens - time to generate 1 token) /
(N - 1), both forced to run their full length (no early stop at the end token). The first-token
(context) time is reported separately.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch

import labkit
import ft_runtime_gptj

# the GEMM layouts the tuning (ft_gemm, section 4) chose on an H100 for batch 1: every GEMM as [k, n]
H100_PLAN = {g: {"layout": "kn"} for g in ft_runtime_gptj.GEMMS} | {"attention": {"impl": "sdpa"}}


def _sync(device) -> Optional[Callable]:
    return torch.cuda.synchronize if str(device).startswith("cuda") else None


def per_token(gen: Callable[[int], object], new_tokens: int, device="cpu", repeat: int = 3, warmup: int = 1) -> dict:
    """Time gen(n) for n = 1 and n = new_tokens; return decode ms/token and first-token ms."""
    sync = _sync(device)
    t1 = labkit.time_it(lambda: gen(1), repeat=repeat, warmup=warmup, sync=sync)
    tn = labkit.time_it(lambda: gen(new_tokens), repeat=repeat, warmup=warmup, sync=sync)
    return {"ms_per_token": max(tn.median - t1.median, 0.0) / (new_tokens - 1) * 1e3,
            "first_token_ms": t1.median * 1e3, "total_ms": tn.median * 1e3}


def hf_gptj(model, prompt_ids: torch.Tensor, new_tokens: int, device="cpu", repeat: int = 3) -> dict:
    def gen(n):
        with torch.no_grad():
            return model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, pad_token_id=model.config.eos_token_id)
    return per_token(gen, new_tokens, device, repeat)


def runtime_gptj(rt, prompt: list, new_tokens: int, device="cpu", repeat: int = 3, batch: int = 1) -> dict:
    prompts = [list(prompt)] * batch
    return per_token(lambda n: rt.generate(prompts, n, stop_at_end=False), new_tokens, device, repeat)


def hf_t5(model, src_ids: torch.Tensor, new_tokens: int, device="cpu", repeat: int = 3) -> dict:
    def gen(n):
        with torch.no_grad():
            return model.generate(src_ids, attention_mask=torch.ones_like(src_ids), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, num_beams=1)
    return per_token(gen, new_tokens, device, repeat)


def runtime_t5(rt, src: list, new_tokens: int, device="cpu", repeat: int = 3, batch: int = 1) -> dict:
    srcs = [list(src)] * batch
    return per_token(lambda n: rt.generate(srcs, n, stop_at_end=False), new_tokens, device, repeat)


def engine_gptj(engine, prompt: list, new_tokens: int, repeat: int = 3) -> dict:
    """The same measurement through a TPEngine (N worker processes)."""
    return per_token(lambda n: engine.call("generate", input_ids=[list(prompt)], max_new_tokens=n, stop_at_end=False),
                     new_tokens, "cpu", repeat)


def triton_gptj(c, protocol: str, prompt: list, new_tokens: int, repeat: int = 3) -> dict:
    """Time the served gptj model (ids in, ids out) for one request at batch 1.
    The served model stops at the end token, so prompts used here must not produce it early."""
    import ft_client
    return per_token(lambda n: ft_client.gptj_ids(c, protocol, [prompt], n), new_tokens, "cpu", repeat)


def random_gptj(arch: str = "gptj-6b", dtype=torch.float16, device="cuda"):
    """GPT-J with random weights (timing only), built directly on the device in `dtype`."""
    from transformers import GPTJConfig, GPTJForCausalLM
    cfg = GPTJConfig() if arch == "gptj-6b" else GPTJConfig(n_embd=256, n_layer=2, n_head=4, rotary_dim=16)
    return _build(GPTJForCausalLM, cfg, dtype, device)


T5_ARCHS = {
    "t5-tiny": dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2),
    "t5-small": dict(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6, num_decoder_layers=6),
    "t5-base": dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12),
    "t5-3b": dict(d_model=1024, d_ff=16384, d_kv=128, num_heads=32, num_layers=24, num_decoder_layers=24),
}


def random_t5(arch: str = "t5-3b", dtype=torch.float16, device="cuda"):
    from transformers import T5Config, T5ForConditionalGeneration
    cfg = T5Config(vocab_size=32128, feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1, dropout_rate=0.0, **T5_ARCHS[arch])
    return _build(T5ForConditionalGeneration, cfg, dtype, device)


def _build(cls, cfg, dtype, device):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def graph_replay_ms(rt, iters: int = 50) -> Optional[float]:
    """GPU time of one replay of a runtime's captured batch-1 decode step (CUDA events); None if none was captured."""
    g = rt._graphs.get(1, {}).get("graph")
    if g is None:
        return None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    g.replay()
    start.record()
    for _ in range(iters):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters
