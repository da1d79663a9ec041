"""The project's GPT-J runtime, reading FT-layout weights (one tensor-parallel rank per process).

What makes it fast, FT style:
- one fused QKV GEMM per layer (FT's [d, 3, d/N] weight), attention and MLP in parallel from one
  layer norm, and ONE all-reduce per layer for their summed partial outputs when N > 1;
- a KV cache preallocated once for (max_batch, max_len), written in place (`index_copy_`);
- on CUDA: the one-token decode step captured as a CUDA graph (static buffers, attention over the whole
  cache with a validity mask so shapes never change), replayed each step;
- GEMM implementations chosen per GEMM from a gemm_config file (see ft_gemm).
Batches of prompts with different lengths are left-padded; positions count only real tokens.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

import ft_convert
from ft_runtime_common import TP, attention, linear, make_generator, prepare_weight, sample

GEMMS = ("qkv", "attn_out", "ffn1", "ffn2", "logits")


def rotary_tables(max_pos: int, rotary_dim: int, device):
    inv = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    ang = torch.arange(max_pos, dtype=torch.float32)[:, None] * inv  # [P, rd/2]
    sin = torch.repeat_interleave(torch.sin(ang), 2, dim=-1)
    cos = torch.repeat_interleave(torch.cos(ang), 2, dim=-1)
    return sin.to(device), cos.to(device)


def apply_rotary(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, rd: int) -> torch.Tensor:
    """GPT-J's interleaved rotary embedding on the first `rd` dims of each head. x [b, s, h, hd]."""
    xr, xp = x[..., :rd], x[..., rd:]
    rot = torch.stack((-xr[..., 1::2], xr[..., ::2]), dim=-1).flatten(-2)
    xr = xr * cos + rot * sin
    return torch.cat([xr, xp], dim=-1)


class GPTJRuntime:
    """GPT-J inference for one tensor-parallel rank.

    rt = GPTJRuntime.from_checkpoint("ckpt/1-gpu", dtype=torch.float32, device="cpu")
    ids, lengths = rt.generate([[464, 3139], [15496]], max_new_tokens=8)
    """

    def __init__(self, meta: dict, tensors: dict, tp: Optional[TP] = None, dtype=torch.float32, device="cpu",
                 gemm_plan: Optional[dict] = None, max_batch: int = 8, max_len: Optional[int] = None,
                 cuda_graph: bool = False):
        self.m, self.tp = meta, tp or TP()
        if self.m["tensor_para_size"] != self.tp.size:
            raise ValueError(f"checkpoint was split for tensor_para_size={self.m['tensor_para_size']} but the "
                             f"runtime runs {self.tp.size} ranks; convert again with the matching N")
        self.dtype, self.device = dtype, torch.device(device)
        self.plan = dict(gemm_plan or {})
        self.layout = {g: self.plan.get(g, {}).get("layout", "nk") for g in GEMMS}
        self.attn_impl = self.plan.get("attention", {}).get("impl", "sdpa")
        m = self.m
        self.h_local = m["head_num"] // self.tp.size
        self.hd, self.rd, self.d = m["size_per_head"], m["rotary_embedding"], m["hidden"]
        self.max_len = max_len or m["max_pos_seq_len"]
        cast = lambda t: t.to(self.device, self.dtype)
        self.wte = cast(tensors["model.wte"])
        self.lnf_w, self.lnf_b = cast(tensors["model.final_layernorm.weight"]), cast(tensors["model.final_layernorm.bias"])
        self.lm_w = cast(prepare_weight(tensors["model.lm_head.weight"].t(), self.layout["logits"]))
        self.lm_b = cast(tensors["model.lm_head.bias"])
        self.layers = []
        for l in range(m["num_layer"]):
            p = f"model.layers.{l}."
            qkv = tensors[p + "attention.query_key_value.weight"].reshape(self.d, -1)  # [d, 3*d/N]
            self.layers.append({
                "ln_w": cast(tensors[p + "input_layernorm.weight"]), "ln_b": cast(tensors[p + "input_layernorm.bias"]),
                "qkv": cast(prepare_weight(qkv, self.layout["qkv"])),
                "out": cast(prepare_weight(tensors[p + "attention.dense.weight"], self.layout["attn_out"])),
                "fc_in": cast(prepare_weight(tensors[p + "mlp.dense_h_to_4h.weight"], self.layout["ffn1"])),
                "fc_in_b": cast(tensors[p + "mlp.dense_h_to_4h.bias"]),
                "fc_out": cast(prepare_weight(tensors[p + "mlp.dense_4h_to_h.weight"], self.layout["ffn2"])),
                "fc_out_b": cast(tensors[p + "mlp.dense_4h_to_h.bias"]),
            })
        self.sin, self.cos = rotary_tables(m["max_pos_seq_len"], self.rd, self.device)
        self.sin, self.cos = self.sin.to(dtype), self.cos.to(dtype)
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self._alloc_cache(max_batch)
        self._graphs = {}

    # -------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, ckpt, rank: int = 0, tp: Optional[TP] = None, **kw) -> "GPTJRuntime":
        meta, tensors = ft_convert.load_gptj_rank(Path(ckpt), rank)
        return cls(meta, tensors, tp=tp, **kw)

    @classmethod
    def from_hf(cls, model, **kw) -> "GPTJRuntime":
        """Convert an in-memory HF model (FT layout, tensor_para_size 1) without touching disk."""
        c = model.config
        cfg = ft_convert.gptj_config_ini(c, 1, "fp32")
        meta = ft_convert.gptj_meta(cfg)
        tensors = ft_convert.gptj_to_ft(model.state_dict(), c.n_layer, 1)
        tensors = {k[:-2] if k.endswith(".0") else k: v for k, v in tensors.items()}
        return cls(meta, tensors, **kw)

    def _alloc_cache(self, batch: int) -> None:
        shape = (self.m["num_layer"], batch, self.h_local, self.max_len, self.hd)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.max_batch = batch
        self._graphs = {}

    # -------------------------------------------------------------- the model
    def forward(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, bias: torch.Tensor,
                kv_len: int, last_only: bool = False) -> torch.Tensor:
        """Logits [b, s, V] for tokens `ids` [b, s] at positions `pos`, written to cache slots `slots` [s];
        attention over cache[:kv_len] with additive `bias` [b, 1, s, kv_len]."""
        b, s = ids.shape
        x = F.embedding(ids, self.wte)
        sin, cos = self.sin[pos][:, :, None, :], self.cos[pos][:, :, None, :]
        scale = 1.0 / (self.hd ** 0.5)
        for l, w in enumerate(self.layers):
            h = F.layer_norm(x, (self.d,), w["ln_w"], w["ln_b"], self.m["layernorm_eps"])
            qkv = linear(h, w["qkv"], None, self.layout["qkv"]).view(b, s, 3, self.h_local, self.hd)
            q = apply_rotary(qkv[:, :, 0], sin, cos, self.rd).transpose(1, 2)
            k = apply_rotary(qkv[:, :, 1], sin, cos, self.rd).transpose(1, 2)
            v = qkv[:, :, 2].transpose(1, 2)
            self.k_cache[l, :b].index_copy_(2, slots, k)
            self.v_cache[l, :b].index_copy_(2, slots, v)
            a = attention(q, self.k_cache[l, :b, :, :kv_len], self.v_cache[l, :b, :, :kv_len], bias,
                          self.attn_impl, scale)
            a = linear(a.transpose(1, 2).reshape(b, s, -1), w["out"], None, self.layout["attn_out"])
            f = F.gelu(linear(h, w["fc_in"], w["fc_in_b"], self.layout["ffn1"]), approximate="tanh")
            f = linear(f, w["fc_out"], None, self.layout["ffn2"])
            x = x + self.tp.all_reduce(a + f) + w["fc_out_b"]
        if last_only:
            x = x[:, -1:]
        x = F.layer_norm(x, (self.d,), self.lnf_w, self.lnf_b, self.m["layernorm_eps"])
        return linear(x, self.lm_w, self.lm_b, self.layout["logits"])

    def _bias(self, allowed: torch.Tensor) -> torch.Tensor:
        # fp32: the same fill value as Hugging Face; fp16/bf16: a finite -1e4 so a fully masked (padding)
        # row gives a uniform softmax instead of NaN (NaN in the cache would leak through 0 * NaN)
        neg = torch.finfo(torch.float32).min if self.dtype == torch.float32 else -1e4
        return torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill(~allowed, neg)

    def context(self, ids: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Run left-padded prompts [b, s] (mask 1 = real token) into the cache; return logits [b, s, V]."""
        b, s = ids.shape
        if b > self.max_batch:
            self._alloc_cache(b)
        if s > self.max_len:
            raise ValueError(f"prompt of {s} tokens is longer than the cache ({self.max_len})")
        mask = mask.bool()
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(s, s, dtype=torch.bool, device=ids.device).tril()
        allowed = causal[None, None] & mask[:, None, None, :]
        slots = torch.arange(s, device=ids.device)
        return self.forward(ids, pos, slots, self._bias(allowed), s, last_only)

    @torch.no_grad()
    def logits(self, input_ids, attention_mask=None) -> torch.Tensor:
        """Full-sequence logits (float32) for comparison with Hugging Face."""
        ids = torch.as_tensor(input_ids, device=self.device)
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask, device=self.device)
        return self.context(ids, mask).float()

    # -------------------------------------------------------------- decode step (eager or CUDA graph)
    def _decode_eager(self, tok, pos, valid, step_slot: int):
        b = tok.shape[0]
        kv = step_slot + 1
        slots = torch.tensor([step_slot], device=self.device)
        bias = self._bias(valid[:, None, None, :kv])
        return self.forward(tok, pos, slots, bias, kv)[:, -1]

    def _decode_graph(self, tok, pos, valid, step_slot: int):
        b = tok.shape[0]
        g = self._graphs.get(b)
        if g is None:
            g = self._capture(b)
        g["tok"].copy_(tok)
        g["pos"].copy_(pos)
        g["slot"].fill_(step_slot)
        g["bias"].copy_(self._bias(valid[:, None, None, :]))
        g["graph"].replay()
        return g["out"]

    def _capture(self, b: int) -> dict:
        dev = self.device
        g = {"tok": torch.zeros(b, 1, dtype=torch.long, device=dev), "pos": torch.zeros(b, 1, dtype=torch.long, device=dev),
             "slot": torch.zeros(1, dtype=torch.long, device=dev),
             "bias": torch.zeros(b, 1, 1, self.max_len, dtype=torch.float32, device=dev)}
        run = lambda: self.forward(g["tok"], g["pos"], g["slot"], g["bias"], self.max_len)[:, -1]
        k0, v0 = self.k_cache.clone(), self.v_cache.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            g["out"] = run()
        self.k_cache.copy_(k0)
        self.v_cache.copy_(v0)
        g["graph"] = graph
        self._graphs[b] = g
        return g

    # -------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, input_ids: Sequence[Sequence[int]], max_new_tokens: int, top_k: int = 1,
                 top_p: float = 0.0, temperature: float = 1.0, seed: Optional[int] = None,
                 end_id: Optional[int] = None, stop_at_end: bool = True):
        """Generate for a batch of prompts (lists of ids, any lengths).

        Returns (tokens, lengths): tokens [b, max_new_tokens] (generated ids only, end_id after the end)
        and lengths [b] (how many generated ids are real, the end token included).
        """
        if not input_ids or any(len(s) == 0 for s in input_ids):
            raise ValueError("every prompt needs at least one token")
        end_id = self.m["end_id"] if end_id is None else end_id
        b, s = len(input_ids), max(len(x) for x in input_ids)
        if s + max_new_tokens > self.max_len:
            raise ValueError(f"prompt ({s}) + max_new_tokens ({max_new_tokens}) exceeds the cache length {self.max_len}")
        ids = torch.full((b, s), end_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((b, s), dtype=torch.long, device=self.device)
        for i, x in enumerate(input_ids):
            ids[i, s - len(x):] = torch.as_tensor(list(x), device=self.device)
            mask[i, s - len(x):] = 1
        gen = make_generator(seed, self.device)
        logits = self.context(ids, mask, last_only=True)[:, -1]
        valid = torch.zeros((b, self.max_len), dtype=torch.bool, device=self.device)
        valid[:, :s] = mask.bool()
        pos = mask.sum(-1, keepdim=True) - 1
        out = torch.full((b, max_new_tokens), end_id, dtype=torch.long, device=self.device)
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        lengths = torch.zeros(b, dtype=torch.long, device=self.device)
        decode = self._decode_graph if self.cuda_graph else self._decode_eager
        for t in range(max_new_tokens):
            tok = sample(logits.float(), top_k, top_p, temperature, gen)
            tok = self.tp.broadcast(tok)
            tok = torch.where(done, torch.full_like(tok, end_id), tok)
            out[:, t] = tok
            lengths += (~done).long()
            done |= tok == end_id
            if t == max_new_tokens - 1 or (stop_at_end and bool(done.all())):
                break
            slot = s + t
            valid[:, slot] = True
            pos = pos + 1
            logits = decode(tok[:, None], pos, valid, slot)
        return out.cpu(), lengths.cpu()


def factory(ckpt: str, dtype_name: str = "fp32", device: str = "cpu", gemm_plan=None, max_batch: int = 8,
            max_len: Optional[int] = None, cuda_graph: bool = False):
    """A picklable builder for TPEngine: each rank reads its own slice of the FT checkpoint."""
    return _Factory(ckpt, dtype_name, device, gemm_plan, max_batch, max_len, cuda_graph)


class _Factory:
    def __init__(self, *args):
        self.args = args

    def __call__(self, rank: int, size: int, tp: TP) -> GPTJRuntime:
        ckpt, dtype_name, device, plan, max_batch, max_len, graph = self.args
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
        dev = f"cuda:{rank}" if device.startswith("cuda") else device
        return GPTJRuntime.from_checkpoint(ckpt, rank=rank, tp=tp, dtype=dtype, device=dev, gemm_plan=plan,
                                           max_batch=max_batch, max_len=max_len, cuda_graph=graph)


def decode_text(tokenizer, tokens: torch.Tensor, lengths: torch.Tensor, end_id: int) -> List[str]:
    out = []
    for row, n in zip(tokens.tolist(), lengths.tolist()):
        row = [t for t in row[:n] if t != end_id]
        out.append(tokenizer.decode(row))
    return out
