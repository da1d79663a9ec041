"""The project's GPT-J runtime, reading FT-layout weights (one tensor-parallel rank per process).

What makes it fast, FT style:
- one fused QKV GEMM per layer (FT's [d, 3, d/N] weight), attention and MLP in parallel from one
  layer norm, and ONE all-reduce per layer for their summed partial outputs when N > 1;
- a KV cache preallocated once for (max_batch, max_len), written in place (`index_copy_`);
- a separate one-token decode step with fewer, larger kernels: the QKV and first FFN GEMMs merged into ONE
  GEMM (both read the same layer-norm output), the attention-output and second FFN GEMMs merged into ONE
  GEMM over [attention | gelu(ffn)] (their outputs are summed anyway), rotary from precomputed tables,
  K and V written to the cache in one copy;
- on CUDA: that step compiled with torch.compile (Inductor fuses the elementwise work: layer norm,
  rotary + cache write, bias + GELU, residual adds, and the one-query attention written as plain
  reductions) and captured as a CUDA graph (static buffers, attention over the
  whole cache with a validity mask so shapes never change), replayed each step; greedy argmax on the
  device and no host sync in the decode loop (tokens copied back once, at the end);
- GEMM implementations chosen per GEMM from a gemm_config file (see ft_gemm);
- optionally int8 weight-only GEMMs, FT's way (`int8="dequant"`, `"int8pack"` or `"triton"`, see ft_int8): the four
  GEMM weights of every layer int8 with one scale per output channel, activations in the compute dtype.
Batches of prompts with different lengths are left-padded; positions count only real tokens; each row stops
at its own end token. With CUDA graphs a batch is padded up to the next size in `batch_buckets` (rows
that are already finished), so one captured graph serves every batch size up to its bucket.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

import ft_convert
import ft_int8
from ft_runtime_common import TP, RankFactory, attention, linear, make_generator, prepare_weight, sample

GEMMS = ("qkv", "attn_out", "ffn1", "ffn2", "logits")
# batch sizes that get a CUDA graph (a batch runs in the next one up). Few: each is one more torch.compile
# (about 30 s for GPT-J-6B) and one more graph; a decode step up to a few dozen rows costs about the same as one
# row (it is bound by reading the weights), so filler rows are cheap
BUCKETS = (1, 4, 16, 32, 64, 128)


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
                 cuda_graph: bool = False, compile: Optional[bool] = None, int8: Optional[str] = None,
                 batch_buckets: Optional[Sequence[int]] = None):
        self.m, self.tp = meta, tp or TP()
        if int8 is not None and int8 not in ft_int8.IMPLS:
            raise ValueError(f"int8={int8!r}: use None (float weights) or one of {ft_int8.IMPLS}")
        self.int8 = int8
        self.batch_buckets = None if batch_buckets is None else tuple(sorted(int(x) for x in batch_buckets))
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
        # the decode step's two merged GEMMs own the weights; the context path's four GEMMs are views of them
        # (a separate copy only where the plan picked another layout for that GEMM)
        self.layout["in"], self.layout["out2"] = self.layout["qkv"], self.layout["attn_out"]
        nq = self.h_local * self.hd
        self.layers = []
        for l in range(m["num_layer"]):
            p = f"model.layers.{l}."
            qkv = tensors[p + "attention.query_key_value.weight"].reshape(self.d, -1)  # [d, 3*d/N]
            fc_in, fc_out = tensors[p + "mlp.dense_h_to_4h.weight"], tensors[p + "mlp.dense_4h_to_h.weight"]
            w1 = cast(prepare_weight(torch.cat([qkv, fc_in], dim=1), self.layout["in"]))          # [d, 7d/N] (kn)
            w2 = cast(prepare_weight(torch.cat([tensors[p + "attention.dense.weight"], fc_out], dim=0),
                                     self.layout["out2"]))                                      # [5d/N, d] (kn)
            fc_in_b = cast(tensors[p + "mlp.dense_h_to_4h.bias"])
            if int8:
                layer = self._int8_layer(w1, w2, nq)
            else:
                layer = {"w1": w1, "w2": w2,
                         "qkv": self._part(w1, 1, 0, 3 * nq, "in", "qkv"),
                         "fc_in": self._part(w1, 1, 3 * nq, None, "in", "ffn1"),
                         "out": self._part(w2, 0, 0, nq, "out2", "attn_out"),
                         "fc_out": self._part(w2, 0, nq, None, "out2", "ffn2")}
            self.layers.append(layer | self._small(tensors, p, fc_in_b, nq))
        self.sin, self.cos = rotary_tables(m["max_pos_seq_len"], self.rd, self.device)
        # GPT-J's rotation of a pair (x0, x1) is (x0 cos - x1 sin, x1 cos + x0 sin): with the pair swapped,
        # x * cos + swap(x) * sin_signed, sin_signed = (-sin, +sin, -sin, ...)
        sign = torch.tensor([-1.0, 1.0], device=self.device).repeat(self.rd // 2)
        self.sin_signed = (self.sin * sign).to(dtype)
        self.sin, self.cos = self.sin.to(dtype), self.cos.to(dtype)
        # torch.compile of the decode step: on by default on CUDA (one rank), off on CPU (tests switch it on)
        auto = self.device.type == "cuda" and self.tp.size == 1
        self.set_decode(compile=auto if compile is None else compile, cuda_graph=cuda_graph)
        self._alloc_cache(max_batch)

    def set_decode(self, fused_step: bool = True, compile: bool = False, cuda_graph: bool = False,
                   static: Optional[bool] = None, decode_attn: Optional[str] = None) -> None:
        """Choose how decode steps run (drops any compiled step and captured graphs):
        fused_step  False: the context path's forward (four GEMMs a layer: the older, unfused step);
        compile     torch.compile the fused step;  cuda_graph  capture it as a CUDA graph (CUDA only);
        static      attention over the whole cache with a mask - the fixed shapes a graph or a compiled step
                    needs (default: with either of them);
        decode_attn attention in the fused step: "sdpa" (F.scaled_dot_product_attention), "bmm" (two batched
                    GEMMs + softmax) or "reduce" (broadcast-multiply + sums: plain reductions Inductor fuses
                    into its own kernels; on an H100 it beat cuDNN's SDPA for one query over a 256-slot cache,
                    4.72 vs 4.92 ms/token for GPT-J-6B, but eager it would materialise float32 copies of K and V:
                    the default for compiled steps only)."""
        self.fused_step, self.compile = fused_step, bool(compile)
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.static_decode = (self.cuda_graph or self.compile) if static is None else static
        self.decode_attn = decode_attn or ("reduce" if self.compile else "sdpa")
        self._step_fn, self._graphs = None, {}

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
        tensors = ft_convert.rank_view(ft_convert.gptj_to_ft(model.state_dict(), c.n_layer, 1))
        return cls(meta, tensors, **kw)

    def _small(self, tensors: dict, p: str, fc_in_b: torch.Tensor, nq: int) -> dict:
        cast = lambda t: t.to(self.device, self.dtype)
        return {"ln_w": cast(tensors[p + "input_layernorm.weight"]), "ln_b": cast(tensors[p + "input_layernorm.bias"]),
                "b1": torch.cat([torch.zeros(3 * nq, dtype=self.dtype, device=self.device), fc_in_b]),
                "fc_in_b": fc_in_b, "fc_out_b": cast(tensors[p + "mlp.dense_4h_to_h.bias"])}

    def _int8_layer(self, w1: torch.Tensor, w2: torch.Tensor, nq: int) -> dict:
        """The merged GEMM weights as int8 (ft_int8.quantize: per output channel), the context path's four
        GEMMs as views. w1 = [qkv | fc_in] along the outputs, so its scales are exactly FT's per-weight ones;
        w2 = [attention.dense ; fc_out] along the inputs feeds ONE GEMM, so each output channel has one scale
        over both (FT quantizes the two separately: a step at most as fine here)."""
        kn = lambda w, g: w if self.layout[g] == "kn" else w.t()
        q1 = ft_int8.quantize(kn(w1, "in"), self.dtype, self.int8)
        q2 = ft_int8.quantize(kn(w2, "out2"), self.dtype, self.int8)
        return {"w1": q1, "w2": q2, "qkv": q1.rows(0, 3 * nq), "fc_in": q1.rows(3 * nq, q1.q.shape[0]),
                "out": q2.cols(0, nq), "fc_out": q2.cols(nq, q2.q.shape[1])}

    def weight_bytes(self) -> int:
        """Bytes of the weights a decode step reads (the embedding table excluded: one row a token)."""
        n = lambda t: t.nbytes if isinstance(t, ft_int8.Int8Weight) else t.numel() * t.element_size()
        per_layer = sum(n(w[k]) for w in self.layers for k in ("w1", "w2", "b1", "ln_w", "ln_b", "fc_out_b"))
        return per_layer + n(self.lm_w) + n(self.lm_b) + n(self.lnf_w) + n(self.lnf_b)

    def _part(self, w, axis_kn: int, start: int, stop, fused: str, gemm: str) -> torch.Tensor:
        """GEMM `gemm`'s weight as a slice (along its FT [k, n] axis `axis_kn`) of the merged weight `w`:
        a view when the plan wants the same layout, else its own copy in the wanted layout."""
        ax = axis_kn if self.layout[fused] == "kn" else 1 - axis_kn
        part = w.narrow(ax, start, (w.shape[ax] if stop is None else stop) - start)
        if self.layout[gemm] == self.layout[fused]:
            return part
        kn = part if self.layout[fused] == "kn" else part.t()
        return prepare_weight(kn, self.layout[gemm])

    def _alloc_cache(self, batch: int) -> None:
        # one [2 (K, V), batch, heads, max_len, head_dim] tensor per layer
        shape = (2, batch, self.h_local, self.max_len, self.hd)
        self.kv = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.m["num_layer"])]
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
            kv = self.kv[l]
            kv[0, :b].index_copy_(2, slots, k)
            kv[1, :b].index_copy_(2, slots, v)
            a = attention(q, kv[0, :b, :, :kv_len], kv[1, :b, :, :kv_len], bias, self.attn_impl, scale)
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

    # -------------------------------------------------------------- decode step (eager, compiled, CUDA graph)
    def _step(self, tok: torch.Tensor, pos: torch.Tensor, slot: torch.Tensor, bias: torch.Tensor,
              kv_len: int) -> torch.Tensor:
        """Logits [b, V] for one new token per row: tok, pos [b]; its K/V go to cache slot `slot` [1];
        attention over cache[:kv_len] with additive `bias` [b, 1, 1, kv_len] (in the compute dtype)."""
        b = tok.shape[0]
        nq, rd = self.h_local * self.hd, self.rd
        x = F.embedding(tok, self.wte)                                   # [b, d]
        cos = self.cos[pos][:, None, None, :]                            # [b, 1, 1, rd]
        sin = self.sin_signed[pos][:, None, None, :]
        scale = 1.0 / (self.hd ** 0.5)
        rows = torch.arange(b, device=tok.device)
        for l, w in enumerate(self.layers):
            h = F.layer_norm(x, (self.d,), w["ln_w"], w["ln_b"], self.m["layernorm_eps"])
            y = linear(h, w["w1"], w["b1"], self.layout["in"])            # [b, 7d/N] = [q | k | v | ffn]
            qkv = y[:, :3 * nq].view(b, 3, self.h_local, self.hd)
            qk = qkv[:, :2, :, :rd]
            swapped = qk.unflatten(-1, (rd // 2, 2)).flip(-1).flatten(-2)
            qkv[:, :2, :, :rd] = qk * cos + swapped * sin                 # rotary on q and k, in place
            kv = self.kv[l]
            # K and V into the cache, one write: rows named by index, not by a [:b] slice, which torch.compile
            # turned into a copy of those rows' whole cache at every step whenever b < max_batch
            kv[:, rows, :, slot] = qkv[:, 1:]                             # kv[:, rows, :, slot] is [b, 2, h, hd]
            a = self._decode_attention(qkv[:, 0].unsqueeze(2), kv[0, :b, :, :kv_len], kv[1, :b, :, :kv_len],
                                       bias, scale)                       # [b, h, 1, hd]
            f = F.gelu(y[:, 3 * nq:], approximate="tanh")
            z = torch.cat([a.reshape(b, nq), f], dim=1)                   # [b, 5d/N] = [attention | ffn]
            if self.tp.size == 1 and self.layout["out2"] == "kn" and not self.int8:
                x = torch.addmm(x + w["fc_out_b"], z, w["w2"])            # residual + bias + both GEMMs
            else:
                x = x + self.tp.all_reduce(linear(z, w["w2"], None, self.layout["out2"])) + w["fc_out_b"]
        x = F.layer_norm(x, (self.d,), self.lnf_w, self.lnf_b, self.m["layernorm_eps"])
        return linear(x, self.lm_w, self.lm_b, self.layout["logits"])

    def _decode_attention(self, q, k, v, bias, scale: float) -> torch.Tensor:
        """One query per row: q [b, h, 1, hd], k, v [b, h, T, hd], bias [b, 1, 1, T] -> [b, h, 1, hd]."""
        if self.decode_attn == "sdpa":
            return attention(q, k, v, bias, self.attn_impl, scale)
        if self.decode_attn == "bmm":
            s = torch.matmul(q, k.transpose(-1, -2)).float() * scale + bias.float()
            return torch.matmul(torch.softmax(s, dim=-1).to(v.dtype), v)
        if self.decode_attn == "reduce":
            s = (q.float() * k.float()).sum(-1, keepdim=True) * scale + bias.float().transpose(-1, -2)  # [b,h,T,1]
            p = torch.softmax(s, dim=-2)
            return (p * v.float()).sum(-2, keepdim=True).to(v.dtype)
        raise ValueError(f"unknown decode attention {self.decode_attn!r}")

    def _unfused_step(self, tok, pos, slot, bias, kv_len: int) -> torch.Tensor:
        """The same step through the context path's forward (four GEMMs a layer): the older decode."""
        return self.forward(tok[:, None], pos[:, None], slot, bias, kv_len)[:, -1]

    def _step_callable(self):
        if not self.fused_step:
            return self._unfused_step
        if self._step_fn is None:
            self._step_fn = self._step
            if self.compile:
                # int8 "dequant" on CUDA: Inductor's coordinate-descent mode decomposes one-row GEMMs into a reduction,
                # which fuses the int8 load + dequantize + dot + scale into one kernel (see ft_int8)
                # ("triton" brings its own GEMM kernel and needs no decomposition: compiled like the fp16 step)
                cd = self.int8 in ("dequant", "int8pack") and self.device.type == "cuda"
                opts = {"coordinate_descent_tuning": True} if cd else None
                self._step_fn = torch.compile(self._step, fullgraph=True, dynamic=False, options=opts)
        return self._step_fn

    def _run_step(self, *args):
        """Run the decode step; if compiling fails here, warn once and fall back to the eager step."""
        fn = self._step_callable()
        if not (self.fused_step and self.compile):
            return fn(*args)
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - e.g. no C++ compiler / Triton on this machine
            import warnings
            warnings.warn(f"torch.compile of the decode step failed ({type(e).__name__}: {e}); using eager ops")
            self.compile, self._step_fn, self.decode_attn = False, self._step, "sdpa"
            return self._step(*args)

    def _decode_eager(self, tok, pos, valid, step_slot: int):
        """tok, pos [b]; valid [b, max_len] bool. Attention over the filled part of the cache only."""
        kv = step_slot + 1
        slot = torch.tensor([step_slot], device=self.device)
        bias = self._bias(valid[:, None, None, :kv]).to(self.dtype)
        return self._run_step(tok, pos, slot, bias, kv)

    def _decode_static(self, tok, pos, valid, step_slot: int):
        """Fixed shapes (the whole cache, masked): what torch.compile without recompiling needs."""
        slot = torch.tensor([step_slot], device=self.device)
        bias = self._bias(valid[:, None, None, :]).to(self.dtype)
        return self._run_step(tok, pos, slot, bias, self.max_len)

    def _decode_graph(self, tok, pos, valid, step_slot: int):
        b = tok.shape[0]
        g = self._graphs.get(b)
        if g is None:
            g = {"tok": torch.zeros(b, dtype=torch.long, device=self.device),
                 "pos": torch.zeros(b, dtype=torch.long, device=self.device),
                 "slot": torch.zeros(1, dtype=torch.long, device=self.device),
                 "bias": torch.zeros(b, 1, 1, self.max_len, dtype=self.dtype, device=self.device)}
        g["tok"].copy_(tok)
        g["pos"].copy_(pos)
        g["slot"].fill_(step_slot)
        g["bias"].copy_(self._bias(valid[:, None, None, :]))
        if "graph" not in g:
            self._capture(b, g)
        g["graph"].replay()
        return g["out"]

    def _capture(self, b: int, g: dict) -> None:
        """Capture the decode step for batch b. The warm-up runs (where torch.compile compiles) use this
        step's real inputs, so the K/V they write are exactly what the step itself writes next."""
        run = lambda: self._run_step(g["tok"], g["pos"], g["slot"], g["bias"], self.max_len)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                run()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            g["out"] = run()
        g["graph"] = graph
        self._graphs[b] = g

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
        n_req = len(input_ids)
        b = self.run_batch(n_req)
        input_ids = list(input_ids) + [[end_id]] * (b - n_req)   # filler rows, finished from the start
        s = max(len(x) for x in input_ids)
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
        pos = mask.sum(-1) - 1
        out = torch.full((b, max_new_tokens), end_id, dtype=torch.long, device=self.device)
        done = torch.arange(b, device=self.device) >= n_req
        lengths = torch.zeros(b, dtype=torch.long, device=self.device)
        decode = (self._decode_graph if self.cuda_graph else
                  self._decode_static if self.static_decode else self._decode_eager)
        for t in range(max_new_tokens):
            tok = sample(logits, top_k, top_p, temperature, gen)  # greedy: argmax as is; else float32
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
            logits = decode(tok, pos, valid, slot)
        return out[:n_req].cpu(), lengths[:n_req].cpu()

    def run_batch(self, n: int) -> int:
        """The batch size a request of n prompts runs at: the next bucket up when batches are bucketed (by
        default with CUDA graphs: one graph per bucket), else n; beyond the largest bucket, n itself."""
        buckets = self.batch_buckets if self.batch_buckets is not None else (BUCKETS if self.cuda_graph else ())
        return next((k for k in buckets if k >= n), n)


def factory(ckpt: str, dtype_name: str = "fp32", device: str = "cpu", gemm_plan=None, max_batch: int = 8,
            max_len: Optional[int] = None, cuda_graph: bool = False):
    """A picklable builder for TPEngine: each rank reads its own slice of the FT checkpoint."""
    return RankFactory(GPTJRuntime, ckpt, dtype_name, device, gemm_plan=gemm_plan, max_batch=max_batch,
                       max_len=max_len, cuda_graph=cuda_graph)


def decode_text(tokenizer, tokens: torch.Tensor, lengths: torch.Tensor, end_id: int) -> List[str]:
    out = []
    for row, n in zip(tokens.tolist(), lengths.tolist()):
        row = [t for t in row[:n] if t != end_id]
        out.append(tokenizer.decode(row))
    return out
