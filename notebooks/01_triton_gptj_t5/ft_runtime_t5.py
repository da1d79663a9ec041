"""The project's T5 runtime on FT-layout weights: encoder once, decoder token by token with caches.

- fused QKV GEMMs (encoder q/k/v concatenated, decoder self-attention from FT's fused [d, 3, inner]
  weight, cross-attention K/V fused and computed once per request);
- self-attention KV cache preallocated for (batch x beams, max_out) and written in place;
- relative position buckets exactly as T5 defines them (bidirectional in the encoder, causal in the
  decoder), each rank holding the bias of its own heads;
- greedy / top-k / top-p sampling with a seed, and beam search with a length penalty;
- tensor parallelism: three all-reduces per decoder layer (self-attn out, cross-attn out, FFN out);
- on CUDA the one-token decoder step is compiled by torch.compile (Inductor fuses the RMS norms, the
  relative-position bias and the residual adds: hundreds of tiny kernels a step become a few dozen),
  captured once as a CUDA graph and replayed.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

import ft_convert
from ft_runtime_common import TP, RankFactory, attention, linear, make_generator, prepare_weight, sample

GEMMS = ("qkv", "attn_out", "ffn1", "ffn2", "logits")
NEG = torch.finfo(torch.float32).min


def relative_bucket(rel: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucketing of (key position - query position)."""
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rel > 0).long() * num_buckets
        rel = rel.abs()
    else:
        rel = -torch.clamp(rel, max=0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    large = max_exact + (torch.log(rel.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, rel, large)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    var = x.float().pow(2).mean(-1, keepdim=True)
    return w * (x.float() * torch.rsqrt(var + eps)).to(w.dtype)


class T5Runtime:
    """T5 inference for one tensor-parallel rank.

    rt = T5Runtime.from_checkpoint("ckpt/1-gpu")
    tokens, lengths, scores = rt.generate([[...ids...]], max_new_tokens=16, beam_width=4)
    """

    def __init__(self, meta: dict, tensors: dict, tp: Optional[TP] = None, dtype=torch.float32, device="cpu",
                 gemm_plan: Optional[dict] = None, max_batch: int = 8, max_out: int = 64, cuda_graph: bool = False,
                 compile: Optional[bool] = None):
        self.m, self.tp = meta, tp or TP()
        if self.m["tensor_para_size"] != self.tp.size:
            raise ValueError(f"checkpoint was split for tensor_para_size={self.m['tensor_para_size']} but the "
                             f"runtime runs {self.tp.size} ranks; convert again with the matching N")
        self.dtype, self.device = dtype, torch.device(device)
        self.plan = dict(gemm_plan or {})
        lay = {g: self.plan.get(g, {}).get("layout", "nk") for g in GEMMS}
        self.layout = lay
        self.attn_impl = self.plan.get("attention", {}).get("impl", "sdpa")
        m = self.m
        self.hl, self.hd, self.d = m["num_heads"] // self.tp.size, m["d_kv"], m["d_model"]
        self.max_out = max_out
        cast = lambda t: t.to(self.device, self.dtype)
        W = lambda stem, g: cast(prepare_weight(tensors[stem], lay[g]))
        # FT's files: shared.weight_T.bin is the [V, d] embedding table; lm_head.weight.bin [V, d] when present
        # (T5DecodingWeight::loadModel), else the logits GEMM reuses shared.weight_T
        self.shared = cast(tensors["shared.weight_T"])
        lm = tensors.get("lm_head.weight", tensors["shared.weight_T"])
        self.lm = cast(prepare_weight(lm.t(), lay["logits"]))
        self.enc_bias = cast(tensors["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"])
        self.dec_bias = cast(tensors["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"])
        self.enc_ln = cast(tensors["encoder.final_layer_norm.weight"])
        self.dec_ln = cast(tensors["decoder.final_layer_norm.weight"])
        wi = ["wi", "wi2"] if m["gated"] else ["wi"]
        self.enc, self.dec = [], []
        for l in range(m["encoder_layers"]):
            p = f"encoder.block.{l}.layer."
            qkv = torch.cat([tensors[f"{p}0.SelfAttention.{x}.weight"] for x in "qkv"], dim=-1)
            self.enc.append({"ln0": cast(tensors[p + "0.layer_norm.weight"]), "ln1": cast(tensors[p + "1.layer_norm.weight"]),
                             "qkv": cast(prepare_weight(qkv, lay["qkv"])), "o": W(p + "0.SelfAttention.o.weight", "attn_out"),
                             "wi": [W(f"{p}1.DenseReluDense.{x}.weight", "ffn1") for x in wi],
                             "wo": W(p + "1.DenseReluDense.wo.weight", "ffn2")})
        for l in range(m["decoder_layers"]):
            p = f"decoder.block.{l}.layer."
            qkv = tensors[p + "0.SelfAttention.qkv.weight"].reshape(self.d, -1)
            kv = torch.cat([tensors[f"{p}1.EncDecAttention.{x}.weight"] for x in "kv"], dim=-1)
            self.dec.append({"ln0": cast(tensors[p + "0.layer_norm.weight"]), "ln1": cast(tensors[p + "1.layer_norm.weight"]),
                             "ln2": cast(tensors[p + "2.layer_norm.weight"]),
                             "qkv": cast(prepare_weight(qkv, lay["qkv"])), "o": W(p + "0.SelfAttention.o.weight", "attn_out"),
                             "cq": W(p + "1.EncDecAttention.q.weight", "qkv"), "ckv": cast(prepare_weight(kv, lay["qkv"])),
                             "co": W(p + "1.EncDecAttention.o.weight", "attn_out"),
                             "wi": [W(f"{p}2.DenseReluDense.{x}.weight", "ffn1") for x in wi],
                             "wo": W(p + "2.DenseReluDense.wo.weight", "ffn2")})
        self.act = {"relu": F.relu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
                    "silu": F.silu}[m["activation"]]
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        # torch.compile of the one-token decoder step: on by default with a CUDA graph (one rank); a compiled
        # step attends over the whole cache (fixed shapes, later slots masked by the causal bias)
        self.compile = (self.cuda_graph and self.tp.size == 1) if compile is None else bool(compile)
        self._decoder_fn = None
        self._graphs = {}
        self._alloc(max_batch, 1)

    @classmethod
    def from_checkpoint(cls, ckpt, rank: int = 0, tp: Optional[TP] = None, **kw) -> "T5Runtime":
        meta, tensors = ft_convert.load_t5_rank(Path(ckpt), rank)
        return cls(meta, tensors, tp=tp, **kw)

    @classmethod
    def from_hf(cls, model, **kw) -> "T5Runtime":
        c = model.config
        meta = ft_convert.t5_meta(ft_convert.t5_reader(c), 1)
        tensors = ft_convert.rank_view(ft_convert.t5_to_ft(model.state_dict(), c.num_decoder_layers, 1))
        return cls(meta, tensors, **kw)

    def _alloc(self, rows: int, src_len: int) -> None:
        L = self.m["decoder_layers"]
        # one self-attention K and V tensor per layer, not one [L, ...] tensor: the compiled step writes a slot of
        # each, and a write into a view of one big input made Inductor copy the whole cache back at every layer
        # (measured: the step's time grew with the cache's rows, not the batch; see tests/test_runtime_t5.py)
        self.k_cache = [torch.zeros(rows, self.hl, self.max_out, self.hd, dtype=self.dtype, device=self.device)
                        for _ in range(L)]
        self.v_cache = [torch.zeros_like(k) for k in self.k_cache]
        self.ck = torch.zeros(L, rows, self.hl, src_len, self.hd, dtype=self.dtype, device=self.device)
        self.cv = torch.zeros_like(self.ck)
        self.cross_bias_buf = torch.zeros(rows, 1, 1, src_len, dtype=torch.float32, device=self.device)
        self.rows, self.src_len = rows, src_len
        self._graphs = {}

    # -------------------------------------------------------------- blocks
    def _ffn(self, h, w):
        x = self.act(linear(h, w["wi"][0], None, self.layout["ffn1"]))
        if len(w["wi"]) == 2:
            x = x * linear(h, w["wi"][1], None, self.layout["ffn1"])
        return linear(x, w["wo"], None, self.layout["ffn2"])

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder output [b, s, d] for right-padded ids [b, s] with mask (1 = real token)."""
        b, s = ids.shape
        x = F.embedding(ids, self.shared)
        pos = torch.arange(s, device=self.device)
        buckets = relative_bucket(pos[None, :] - pos[:, None], True, self.m["num_buckets"], self.m["max_distance"])
        bias = F.embedding(buckets, self.enc_bias.t()).permute(2, 0, 1)[None].float()  # [1, hl, s, s]
        bias = bias + torch.zeros(b, 1, 1, s, device=self.device).masked_fill(~mask.bool()[:, None, None, :], NEG)
        for w in self.enc:
            h = rms_norm(x, w["ln0"], self.m["eps"])
            q, k, v = linear(h, w["qkv"], None, self.layout["qkv"]).view(b, s, 3, self.hl, self.hd).unbind(2)
            a = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), bias, self.attn_impl, 1.0)
            a = linear(a.transpose(1, 2).reshape(b, s, -1), w["o"], None, self.layout["attn_out"])
            x = x + self.tp.all_reduce(a)
            x = x + self.tp.all_reduce(self._ffn(rms_norm(x, w["ln1"], self.m["eps"]), w))
        return rms_norm(x, self.enc_ln, self.m["eps"])

    def set_encoder(self, enc: torch.Tensor, mask: torch.Tensor) -> None:
        """Compute every decoder layer's cross-attention K/V once; remember the encoder mask."""
        b, s, _ = enc.shape
        if b > self.rows or s != self.src_len:
            self._alloc(max(b, self.rows), s)
        for l, w in enumerate(self.dec):
            kv = linear(enc, w["ckv"], None, self.layout["qkv"]).view(b, s, 2, self.hl, self.hd)
            self.ck[l, :b] = kv[:, :, 0].transpose(1, 2)
            self.cv[l, :b] = kv[:, :, 1].transpose(1, 2)
        # written in place: a captured CUDA graph keeps reading the same memory
        self.cross_bias_buf[:b].copy_(torch.zeros(b, 1, 1, s, device=self.device).masked_fill(~mask.bool()[:, None, None, :], NEG))
        self.cross_bias = self.cross_bias_buf[:b]
        self.batch = b

    def decoder(self, ids: torch.Tensor, slots: torch.Tensor, kv_len: int, cross_bias: torch.Tensor) -> torch.Tensor:
        """Logits [b, s, V] for decoder tokens ids [b, s] at positions `slots` [s] (written into the cache);
        self-attention over cache[:kv_len] (causal + relative position bias), cross-attention over the encoder."""
        b, s = ids.shape
        x = F.embedding(ids, self.shared)
        keys = torch.arange(kv_len, device=self.device)
        rel = keys[None, :] - slots[:, None]
        buckets = relative_bucket(rel, False, self.m["num_buckets"], self.m["max_distance"])
        bias = F.embedding(buckets, self.dec_bias.t()).permute(2, 0, 1)[None].float()  # [1, hl, s, kv]
        bias = bias.masked_fill((rel > 0)[None, None], NEG)
        # cache rows named by index, not by a [:b] slice: torch.compile turned a write into the slice into a copy
        # of those rows' whole cache at every step whenever b < max_batch; cache[rows, :, slots] is [b, s, hl, hd]
        rows, cols = torch.arange(b, device=self.device)[:, None], slots[None, :]
        for l, w in enumerate(self.dec):
            h = rms_norm(x, w["ln0"], self.m["eps"])
            q, k, v = linear(h, w["qkv"], None, self.layout["qkv"]).view(b, s, 3, self.hl, self.hd).unbind(2)
            self.k_cache[l][rows, :, cols] = k
            self.v_cache[l][rows, :, cols] = v
            a = attention(q.transpose(1, 2), self.k_cache[l][:b, :, :kv_len], self.v_cache[l][:b, :, :kv_len],
                          bias, self.attn_impl, 1.0)
            x = x + self.tp.all_reduce(linear(a.transpose(1, 2).reshape(b, s, -1), w["o"], None, self.layout["attn_out"]))
            h = rms_norm(x, w["ln1"], self.m["eps"])
            q = linear(h, w["cq"], None, self.layout["qkv"]).view(b, s, self.hl, self.hd).transpose(1, 2)
            a = attention(q, self.ck[l, :b], self.cv[l, :b], cross_bias, self.attn_impl, 1.0)
            x = x + self.tp.all_reduce(linear(a.transpose(1, 2).reshape(b, s, -1), w["co"], None, self.layout["attn_out"]))
            x = x + self.tp.all_reduce(self._ffn(rms_norm(x, w["ln2"], self.m["eps"]), w))
        x = rms_norm(x, self.dec_ln, self.m["eps"])
        if self.m["scale_decoder_outputs"]:  # FT's [decoder] tie_word_embeddings: T5 v1.0 scales by d_model^-0.5
            x = x * (self.d ** -0.5)
        return linear(x, self.lm, None, self.layout["logits"])

    @torch.no_grad()
    def logits(self, input_ids, attention_mask, decoder_input_ids) -> torch.Tensor:
        """Teacher-forced decoder logits (float32), for comparison with Hugging Face."""
        ids = torch.as_tensor(input_ids, device=self.device)
        mask = torch.as_tensor(attention_mask, device=self.device)
        dec = torch.as_tensor(decoder_input_ids, device=self.device)
        self.set_encoder(self.encode(ids, mask), mask)
        if dec.shape[1] > self.max_out:
            raise ValueError("decoder_input_ids longer than max_out")
        slots = torch.arange(dec.shape[1], device=self.device)
        return self.decoder(dec, slots, dec.shape[1], self.cross_bias).float()

    # -------------------------------------------------------------- one decode step
    def _run_decoder(self, *args) -> torch.Tensor:
        """The decoder step, compiled when `self.compile`; if compiling fails, warn once and run it eagerly."""
        if not self.compile:
            return self.decoder(*args)
        if self._decoder_fn is None:
            self._decoder_fn = torch.compile(self.decoder, fullgraph=True, dynamic=False)
        try:
            return self._decoder_fn(*args)
        except Exception as e:  # noqa: BLE001 - e.g. no C++ compiler / Triton on this machine
            import warnings
            warnings.warn(f"torch.compile of the T5 decoder step failed ({type(e).__name__}: {e}); using eager ops")
            self.compile = False
            return self.decoder(*args)

    def _step(self, tok: torch.Tensor, t: int) -> torch.Tensor:
        if not self.cuda_graph:
            slots = torch.tensor([t], device=self.device)
            kv_len = self.max_out if self.compile else t + 1
            return self._run_decoder(tok[:, None], slots, kv_len, self.cross_bias)[:, -1]
        b = tok.shape[0]
        g = self._graphs.get(b)
        if g is None:
            g = self._capture(b)
        g["tok"].copy_(tok[:, None])
        g["slot"].fill_(t)
        g["graph"].replay()
        return g["out"]

    def _capture(self, b: int) -> dict:
        g = {"tok": torch.zeros(b, 1, dtype=torch.long, device=self.device),
             "slot": torch.zeros(1, dtype=torch.long, device=self.device)}
        run = lambda: self._run_decoder(g["tok"], g["slot"], self.max_out, self.cross_bias)[:, -1]
        k0, v0 = [k.clone() for k in self.k_cache], [v.clone() for v in self.v_cache]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            g["out"] = run()
        for cache, saved in zip(self.k_cache + self.v_cache, k0 + v0):
            cache.copy_(saved)
        g["graph"] = graph
        self._graphs[b] = g
        return g

    # -------------------------------------------------------------- generation
    def _prepare(self, input_ids, beam_width: int):
        if not input_ids or any(len(s) == 0 for s in input_ids):
            raise ValueError("every input needs at least one token")
        b, s = len(input_ids), max(len(x) for x in input_ids)
        ids = torch.full((b, s), self.m["pad_token_id"], dtype=torch.long, device=self.device)
        mask = torch.zeros((b, s), dtype=torch.long, device=self.device)
        for i, x in enumerate(input_ids):
            ids[i, :len(x)] = torch.as_tensor(list(x), device=self.device)
            mask[i, :len(x)] = 1
        enc = self.encode(ids, mask)
        if beam_width > 1:
            enc, mask = enc.repeat_interleave(beam_width, 0), mask.repeat_interleave(beam_width, 0)
        self.set_encoder(enc, mask)
        return b

    @torch.no_grad()
    def generate(self, input_ids: Sequence[Sequence[int]], max_new_tokens: int, beam_width: int = 1,
                 top_k: int = 1, top_p: float = 0.0, temperature: float = 1.0, seed: Optional[int] = None,
                 len_penalty: float = 1.0, stop_at_end: bool = True):
        """Returns (tokens [b, beam, T], lengths [b, beam], cum_log_probs [b, beam]); tokens exclude the
        decoder start token; lengths count the real generated ids (the end token included)."""
        if max_new_tokens > self.max_out:
            raise ValueError(f"max_new_tokens={max_new_tokens} exceeds this runtime's max_out={self.max_out}")
        if beam_width > 1:
            return self._beam(input_ids, max_new_tokens, beam_width, len_penalty)
        b = self._prepare(input_ids, 1)
        eos = self.m["eos_token_id"]
        gen = make_generator(seed, self.device)
        tok = torch.full((b,), self.m["decoder_start_token_id"], dtype=torch.long, device=self.device)
        out = torch.full((b, max_new_tokens), eos, dtype=torch.long, device=self.device)
        lengths = torch.zeros(b, dtype=torch.long, device=self.device)
        cum = torch.zeros(b, dtype=torch.float32, device=self.device)
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        for t in range(max_new_tokens):
            logits = self._step(tok, t).float()
            nxt = self.tp.broadcast(sample(logits, top_k, top_p, temperature, gen))
            lp = torch.log_softmax(logits, -1).gather(1, nxt[:, None]).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            cum += torch.where(done, torch.zeros_like(lp), lp)
            out[:, t] = nxt
            lengths += (~done).long()
            done |= nxt == eos
            tok = nxt
            if stop_at_end and bool(done.all()):
                break
        return out[:, None].cpu(), lengths[:, None].cpu(), cum[:, None].cpu()

    def _beam(self, input_ids, max_new_tokens: int, w: int, len_penalty: float):
        """Beam search for a batch. Per step the device does the scoring and a top-2w over (beams x vocab) for
        every input at once; the host gets those 2w candidates per input in ONE copy, keeps the finished
        hypotheses and the sequences in Python lists, and sends back the chosen beams' scores, tokens and
        sources in three small copies (no per-element device writes or syncs, whatever the batch)."""
        b = self._prepare(input_ids, w)
        eos, V = self.m["eos_token_id"], self.m["vocab_size"]
        dev = self.device
        scores = torch.full((b, w), -1e9, device=dev)
        scores[:, 0] = 0.0
        seqs = [[] for _ in range(b * w)]
        tok = torch.full((b * w,), self.m["decoder_start_token_id"], dtype=torch.long, device=dev)
        finished = [[] for _ in range(b)]  # (normalised score, raw score, tokens)
        done = [False] * b
        nxt_s = scores.view(-1).tolist()
        for t in range(max_new_tokens):
            logp = torch.log_softmax(self._step(tok, t).float(), -1)  # [b*w, V]
            cand = (scores.view(-1, 1) + logp).view(b, w * V)
            top_s, top_i = torch.topk(cand, 2 * w, dim=-1)
            top_s, top_i = self.tp.broadcast(top_s), self.tp.broadcast(top_i)
            ts, ti = top_s.tolist(), top_i.tolist()
            nxt_s, nxt_t, nxt_src = [], [], []
            for i in range(b):
                row = []   # (score, token, source row) of the w best candidates that do not end
                if not done[i]:
                    for rank, (sc, idx) in enumerate(zip(ts[i], ti[i])):
                        src, token = divmod(idx, V)
                        if token == eos:
                            if rank < w:
                                seq = seqs[i * w + src] + [eos]
                                finished[i].append((sc / (len(seq) ** len_penalty), sc, seq))
                            continue
                        row.append((sc, token, i * w + src))
                        if len(row) == w:
                            break
                    finished[i] = sorted(finished[i], key=lambda h: -h[0])[:w]
                    best_running = row[0][0] / ((t + 2) ** len_penalty)
                    if len(finished[i]) == w and finished[i][-1][0] >= best_running:
                        done[i] = True
                row += [(-1e9, eos, i * w)] * (w - len(row))
                nxt_s += [r[0] for r in row]
                nxt_t += [r[1] for r in row]
                nxt_src += [r[2] for r in row]
            src = torch.tensor(nxt_src, dtype=torch.long, device=dev)
            for cache in self.k_cache + self.v_cache:
                cache[:b * w] = cache[src]
            seqs = [seqs[r] + [k] for r, k in zip(nxt_src, nxt_t)]
            scores = torch.tensor(nxt_s, device=dev).view(b, w)
            tok = torch.tensor(nxt_t, dtype=torch.long, device=dev)
            if all(done):
                break
        for i in range(b):
            if not done[i]:
                for j in range(w):
                    seq, sc = seqs[i * w + j], nxt_s[i * w + j]
                    finished[i].append((sc / (len(seq) ** len_penalty), sc, seq))
                finished[i] = sorted(finished[i], key=lambda h: -h[0])[:w]
        T = max_new_tokens
        tokens = torch.full((b, w, T), eos, dtype=torch.long)
        lengths = torch.zeros(b, w, dtype=torch.long)
        cum = torch.zeros(b, w)
        for i in range(b):
            for j, (_, raw, seq) in enumerate(finished[i]):
                seq = seq[:T]
                tokens[i, j, :len(seq)] = torch.tensor(seq)
                lengths[i, j] = len(seq)
                cum[i, j] = raw
        return tokens, lengths, cum


def factory(ckpt: str, dtype_name: str = "fp32", device: str = "cpu", gemm_plan=None, max_batch: int = 8,
            max_out: int = 64, cuda_graph: bool = False):
    return RankFactory(T5Runtime, ckpt, dtype_name, device, gemm_plan=gemm_plan, max_batch=max_batch,
                       max_out=max_out, cuda_graph=cuda_graph)


def decode_texts(tokenizer, tokens: torch.Tensor, lengths: torch.Tensor, beam: int = 0):
    """Text of beam `beam` for every input."""
    return [tokenizer.decode(tokens[i, beam, :lengths[i, beam]].tolist()) for i in range(tokens.shape[0])]
