"""FasterTransformer's checkpoint layout for GPT-J and T5, for any tensor-parallel size N.

Layout (as FT's `huggingface_gptj_ckpt_convert.py` and `huggingface_t5_ckpt_convert.py` write it):
    <out>/<N>-gpu/config.ini
    <out>/<N>-gpu/<name>.bin           tensors every rank needs whole (embeddings, layer norms, ...)
    <out>/<N>-gpu/<name>.<rank>.bin    rank `rank`'s slice of a tensor split for tensor parallelism
Every .bin is the raw little-endian array (float32 or float16, `weight_data_type` in config.ini), no
header; its shape follows from config.ini (see `gptj_shapes` / `t5_shapes`).

GPT-J (HF name -> FT name, FT shape, split axis):
    transformer.wte.weight            -> model.wte                          [V, d]          whole
    transformer.ln_f.{weight,bias}    -> model.final_layernorm.{weight,bias} [d]             whole
    lm_head.{weight,bias}             -> model.lm_head.{weight,bias}        [V, d], [V]      whole
    h.L.ln_1.{weight,bias}            -> model.layers.L.input_layernorm.*   [d]             whole
    h.L.attn.{q,k,v}_proj.weight      -> ...attention.query_key_value.weight [d, 3, d]      last axis
    h.L.attn.out_proj.weight          -> ...attention.dense.weight (W^T)    [d, d]          axis 0
    h.L.mlp.fc_in.{weight,bias}       -> ...mlp.dense_h_to_4h.* (W^T)       [d, 4d], [4d]   last axis
    h.L.mlp.fc_out.weight             -> ...mlp.dense_4h_to_h.weight (W^T)  [4d, d]         axis 0
    h.L.mlp.fc_out.bias               -> ...mlp.dense_4h_to_h.bias          [d]             whole
T5: files named by the HF key, 2-D weights transposed ([in, out]); split on the last axis: encoder
SelfAttention.q/k/v, EncDecAttention.q/k/v, DenseReluDense.wi (gated: wi_0 -> wi, wi_1 -> wi2); on
axis 0: SelfAttention.o, EncDecAttention.o, DenseReluDense.wo, relative_attention_bias ([heads, buckets]);
decoder self-attention q/k/v fused into `decoder.block.L.layer.0.SelfAttention.qkv.weight` [d, 3, inner];
`shared.weight` [V, d] (+ `shared.weight_T`), `lm_head.weight` [V, d] and layer norms whole.
"""
from __future__ import annotations

import configparser
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

DTYPES = {"fp32": (np.float32, torch.float32), "fp16": (np.float16, torch.float16)}


# ---------------------------------------------------------------- writing and reading raw binaries

def _np_dtype(weight_data_type: str):
    if weight_data_type not in DTYPES:
        raise ValueError(f"weight_data_type={weight_data_type!r}; use 'fp32' or 'fp16'")
    return DTYPES[weight_data_type][0]


def write_ft(out: Path, tp: int, files: Dict[str, torch.Tensor], config: configparser.ConfigParser,
             weight_data_type: str = "fp32") -> Path:
    """Write `files` ({file stem: tensor}) and config.ini into <out>/<tp>-gpu/ atomically; return that folder."""
    dt = _np_dtype(weight_data_type)
    final = Path(out) / f"{tp}-gpu"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{tp}-gpu.", dir=final.parent))
    try:
        for stem, t in files.items():
            arr = t.detach().to("cpu", torch.float32).numpy().astype(dt)
            arr.astype(arr.dtype.newbyteorder("<"), copy=False).tofile(tmp / f"{stem}.bin")
        with open(tmp / "config.ini", "w") as f:
            config.write(f)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_bin(path: Path, shape, weight_data_type: str = "fp32") -> torch.Tensor:
    """One raw little-endian .bin as a float32 tensor of `shape` (checks the byte count)."""
    dt = np.dtype(_np_dtype(weight_data_type)).newbyteorder("<")
    arr = np.fromfile(path, dtype=dt)
    n = int(np.prod(shape))
    if arr.size != n:
        raise ValueError(f"{path} holds {arr.size} values, expected {n} for shape {tuple(shape)}: "
                         "wrong config.ini, wrong weight_data_type or a truncated file")
    return torch.from_numpy(arr.astype(np.float32)).reshape(shape)


def read_config(ckpt: Path) -> configparser.ConfigParser:
    path = Path(ckpt) / "config.ini"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: point at the <N>-gpu folder the converter wrote")
    cfg = configparser.ConfigParser()
    cfg.read(path)
    return cfg


def _split(t: torch.Tensor, tp: int, axis: int, what: str):
    if t.shape[axis] % tp:
        raise ValueError(f"{what}: size {t.shape[axis]} on axis {axis} is not divisible by tensor_para_size={tp}")
    return torch.chunk(t, tp, dim=axis)


def _put(out: Dict[str, torch.Tensor], stem: str, t: torch.Tensor, tp: int, axis: Optional[int]) -> None:
    """out[stem] = t when every rank holds it whole (axis None), else out[stem.<rank>] = rank's slice."""
    if axis is None:
        out[stem] = t.contiguous()
    else:
        for r, part in enumerate(_split(t, tp, axis, stem)):
            out[f"{stem}.{r}"] = part.contiguous()


def rank_view(files: Dict[str, torch.Tensor], rank: int = 0) -> Dict[str, torch.Tensor]:
    """{FT stem: tensor} of one rank of an in-memory conversion, keyed like load_*_rank's result: the tensors
    every rank holds whole, and this rank's slices with their ".<rank>" dropped."""
    out = {}
    for k, v in files.items():
        stem, _, r = k.rpartition(".")
        if not r.isdigit():
            out[k] = v
        elif int(r) == rank:
            out[stem] = v
    return out


def _load_rank(ckpt: Path, rank: int, meta_of, shapes_of, split_axis_of):
    """(meta, {FT stem: float32 tensor}) of one rank: files of split tensors end in .<rank>.bin."""
    ckpt = Path(ckpt)
    m = meta_of(read_config(ckpt))
    tp = m["tensor_para_size"]
    if not 0 <= rank < tp:
        raise ValueError(f"rank {rank} does not exist in a checkpoint written for tensor_para_size={tp}")
    tensors = {}
    for stem, shp in shapes_of(m, tp).items():
        fname = f"{stem}.{rank}.bin" if split_axis_of(stem) is not None else f"{stem}.bin"
        tensors[stem] = read_bin(ckpt / fname, shp, m["weight_data_type"])
    return m, tensors


# ---------------------------------------------------------------- GPT-J

GPTJ_SPLIT = {  # FT name suffix -> split axis (None: whole)
    "input_layernorm.weight": None, "input_layernorm.bias": None,
    "attention.query_key_value.weight": -1, "attention.dense.weight": 0,
    "mlp.dense_h_to_4h.weight": -1, "mlp.dense_h_to_4h.bias": -1,
    "mlp.dense_4h_to_h.weight": 0, "mlp.dense_4h_to_h.bias": None,
}


def gptj_config_ini(hf_config, tp: int, weight_data_type: str = "fp32") -> configparser.ConfigParser:
    c = hf_config
    cfg = configparser.ConfigParser()
    cfg["gptj"] = {
        "model_name": getattr(c, "_name_or_path", "") or "gptj", "head_num": str(c.n_head),
        "size_per_head": str(c.n_embd // c.n_head), "inter_size": str(c.n_inner or 4 * c.n_embd),
        "num_layer": str(c.n_layer), "rotary_embedding": str(c.rotary_dim), "vocab_size": str(c.vocab_size),
        "start_id": str(c.bos_token_id), "end_id": str(c.eos_token_id), "layernorm_eps": str(c.layer_norm_epsilon),
        "max_pos_seq_len": str(c.n_positions), "tensor_para_size": str(tp), "weight_data_type": weight_data_type,
    }
    return cfg


def gptj_to_ft(sd: Dict[str, torch.Tensor], num_layer: int, tp: int) -> Dict[str, torch.Tensor]:
    """HF GPT-J state_dict -> {FT file stem: tensor} for tensor-parallel size `tp` (works on any device)."""
    out = {"model.wte": sd["transformer.wte.weight"],
           "model.final_layernorm.weight": sd["transformer.ln_f.weight"],
           "model.final_layernorm.bias": sd["transformer.ln_f.bias"],
           "model.lm_head.weight": sd["lm_head.weight"], "model.lm_head.bias": sd["lm_head.bias"]}
    for l in range(num_layer):
        h, p = f"transformer.h.{l}.", f"model.layers.{l}."
        qkv = torch.stack([sd[h + f"attn.{x}_proj.weight"] for x in "qkv"])  # [3, out, in]
        whole = {
            "input_layernorm.weight": sd[h + "ln_1.weight"], "input_layernorm.bias": sd[h + "ln_1.bias"],
            "attention.query_key_value.weight": qkv.permute(2, 0, 1),          # [in, 3, out]
            "attention.dense.weight": sd[h + "attn.out_proj.weight"].t(),
            "mlp.dense_h_to_4h.weight": sd[h + "mlp.fc_in.weight"].t(),
            "mlp.dense_h_to_4h.bias": sd[h + "mlp.fc_in.bias"],
            "mlp.dense_4h_to_h.weight": sd[h + "mlp.fc_out.weight"].t(),
            "mlp.dense_4h_to_h.bias": sd[h + "mlp.fc_out.bias"],
        }
        for name, t in whole.items():
            _put(out, p + name, t, tp, GPTJ_SPLIT[name])
    return out


def convert_gptj(model_or_sd, hf_config, out: Path, tp: int, weight_data_type: str = "fp32") -> Path:
    """Write an HF GPT-J model (or state_dict) in FT's layout for `tp` ranks; return <out>/<tp>-gpu."""
    sd = model_or_sd if isinstance(model_or_sd, dict) else model_or_sd.state_dict()
    files = gptj_to_ft(sd, hf_config.n_layer, tp)
    return write_ft(out, tp, files, gptj_config_ini(hf_config, tp, weight_data_type), weight_data_type)


def gptj_meta(cfg: configparser.ConfigParser) -> dict:
    s = cfg["gptj"]
    m = {k: int(s[k]) for k in ("head_num", "size_per_head", "inter_size", "num_layer", "rotary_embedding",
                                "vocab_size", "start_id", "end_id", "tensor_para_size")}
    m["hidden"] = m["head_num"] * m["size_per_head"]
    m["layernorm_eps"] = float(s.get("layernorm_eps", "1e-5"))
    m["max_pos_seq_len"] = int(s.get("max_pos_seq_len", "2048"))
    m["weight_data_type"] = s.get("weight_data_type", "fp32")
    return m


def gptj_shapes(m: dict, tp: int) -> Dict[str, tuple]:
    """FT stem (without the rank suffix) -> shape of one rank's file."""
    d, f, V = m["hidden"], m["inter_size"], m["vocab_size"]
    shapes = {"model.wte": (V, d), "model.final_layernorm.weight": (d,), "model.final_layernorm.bias": (d,),
              "model.lm_head.weight": (V, d), "model.lm_head.bias": (V,)}
    per = {"input_layernorm.weight": (d,), "input_layernorm.bias": (d,),
           "attention.query_key_value.weight": (d, 3, d // tp), "attention.dense.weight": (d // tp, d),
           "mlp.dense_h_to_4h.weight": (d, f // tp), "mlp.dense_h_to_4h.bias": (f // tp,),
           "mlp.dense_4h_to_h.weight": (f // tp, d), "mlp.dense_4h_to_h.bias": (d,)}
    for l in range(m["num_layer"]):
        for name, shp in per.items():
            shapes[f"model.layers.{l}.{name}"] = shp
    return shapes


def gptj_split_axis(stem: str) -> Optional[int]:
    return GPTJ_SPLIT.get(stem.split(".", 3)[-1]) if stem.startswith("model.layers.") else None


def load_gptj_rank(ckpt: Path, rank: int = 0):
    """(meta, {FT stem: float32 tensor}) of one rank of an FT GPT-J checkpoint folder (<N>-gpu/)."""
    return _load_rank(ckpt, rank, gptj_meta, gptj_shapes, gptj_split_axis)


def gptj_ft_to_hf(ckpt: Path) -> Dict[str, torch.Tensor]:
    """Read every rank of an FT GPT-J checkpoint and rebuild the HF state_dict (the round trip)."""
    m, r0 = load_gptj_rank(ckpt, 0)
    tp = m["tensor_para_size"]
    ranks = [r0] + [load_gptj_rank(ckpt, r)[1] for r in range(1, tp)]
    sd = {"transformer.wte.weight": r0["model.wte"], "transformer.ln_f.weight": r0["model.final_layernorm.weight"],
          "transformer.ln_f.bias": r0["model.final_layernorm.bias"], "lm_head.weight": r0["model.lm_head.weight"],
          "lm_head.bias": r0["model.lm_head.bias"]}
    cat = lambda name, axis: torch.cat([r[name] for r in ranks], dim=axis)
    for l in range(m["num_layer"]):
        h, p = f"transformer.h.{l}.", f"model.layers.{l}."
        qkv = cat(p + "attention.query_key_value.weight", -1).permute(1, 2, 0)  # [3, out, in]
        sd.update({
            h + "ln_1.weight": r0[p + "input_layernorm.weight"], h + "ln_1.bias": r0[p + "input_layernorm.bias"],
            h + "attn.q_proj.weight": qkv[0], h + "attn.k_proj.weight": qkv[1], h + "attn.v_proj.weight": qkv[2],
            h + "attn.out_proj.weight": cat(p + "attention.dense.weight", 0).t(),
            h + "mlp.fc_in.weight": cat(p + "mlp.dense_h_to_4h.weight", -1).t(),
            h + "mlp.fc_in.bias": cat(p + "mlp.dense_h_to_4h.bias", -1),
            h + "mlp.fc_out.weight": cat(p + "mlp.dense_4h_to_h.weight", 0).t(),
            h + "mlp.fc_out.bias": r0[p + "mlp.dense_4h_to_h.bias"],
        })
    return {k: v.contiguous() for k, v in sd.items()}


# ---------------------------------------------------------------- T5

def t5_split_axis(key: str) -> Optional[int]:
    """FT's split rule for a T5 file stem (None: whole, every rank reads the same file)."""
    if any(s in key for s in ("SelfAttention.o.weight", "EncDecAttention.o.weight", "DenseReluDense.wo.weight",
                              "relative_attention_bias")):
        return 0
    if any(s in key for s in ("DenseReluDense.wi.weight", "DenseReluDense.wi2.weight", "EncDecAttention.q.weight",
                              "EncDecAttention.k.weight", "EncDecAttention.v.weight", "SelfAttention.qkv.weight")):
        return -1
    if key.startswith("encoder.") and any(s in key for s in ("SelfAttention.q.weight", "SelfAttention.k.weight",
                                                             "SelfAttention.v.weight")):
        return -1
    return None


def t5_config_ini(hf_config, tp: int, weight_data_type: str = "fp32") -> configparser.ConfigParser:
    c = hf_config
    gated = bool(getattr(c, "is_gated_act", False))
    act = getattr(c, "dense_act_fn", "relu")
    cfg = configparser.ConfigParser()
    common = {"num_heads": str(c.num_heads), "d_kv": str(c.d_kv), "d_model": str(c.d_model), "d_ff": str(c.d_ff),
              "vocab_size": str(c.vocab_size), "relative_attention_num_buckets_or_max_pos_seq_len":
              str(c.relative_attention_num_buckets), "relative_attention_max_distance": str(c.relative_attention_max_distance),
              "layer_norm_epsilon": str(c.layer_norm_epsilon), "feed_forward_proj": c.feed_forward_proj,
              "weight_data_type": weight_data_type}
    cfg["encoder"] = dict(common, num_layers=str(c.num_layers))
    cfg["decoder"] = dict(common, num_layers=str(c.num_decoder_layers), decoder_start_token_id=str(c.decoder_start_token_id),
                          eos_token_id=str(c.eos_token_id), pad_token_id=str(c.pad_token_id))
    cfg["structure"] = {"t5_with_bias": "false", "use_gated_activation": str(gated).lower(), "activation": act,
                        "position_embedding_type": "relative", "tie_word_embeddings": str(bool(c.tie_word_embeddings)).lower(),
                        "scale_decoder_outputs": str(bool(getattr(c, "scale_decoder_outputs", c.tie_word_embeddings))).lower(),
                        "tensor_para_size": str(tp)}
    return cfg


def t5_to_ft(sd: Dict[str, torch.Tensor], num_decoder_layers: int, tp: int) -> Dict[str, torch.Tensor]:
    """HF T5 state_dict -> {FT file stem: tensor} for `tp` ranks."""
    out = {}
    for key, val in sd.items():
        if key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            continue  # FT reads shared.weight
        if key.startswith("decoder.") and any(f"SelfAttention.{x}.weight" in key for x in "qkv"):
            continue  # fused below
        stem = key.replace("DenseReluDense.wi_0", "DenseReluDense.wi").replace("DenseReluDense.wi_1", "DenseReluDense.wi2")
        if key == "shared.weight":
            out["shared.weight"] = val
            out["shared.weight_T"] = val.t().contiguous()
            continue
        if key == "lm_head.weight":
            out["lm_head.weight"] = val
            continue
        _put(out, stem, val.t() if val.ndim == 2 else val, tp, t5_split_axis(stem))
    for l in range(num_decoder_layers):
        p = f"decoder.block.{l}.layer.0.SelfAttention."
        qkv = torch.stack([sd[p + f"{x}.weight"].t() for x in "qkv"], dim=1)  # [d, 3, inner]
        _put(out, p + "qkv.weight", qkv, tp, -1)
    return out


def convert_t5(model_or_sd, hf_config, out: Path, tp: int, weight_data_type: str = "fp32") -> Path:
    sd = model_or_sd if isinstance(model_or_sd, dict) else model_or_sd.state_dict()
    files = t5_to_ft(sd, hf_config.num_decoder_layers, tp)
    return write_ft(out, tp, files, t5_config_ini(hf_config, tp, weight_data_type), weight_data_type)


def t5_meta(cfg: configparser.ConfigParser) -> dict:
    e, d, s = cfg["encoder"], cfg["decoder"], cfg["structure"]
    m = {"num_heads": int(e["num_heads"]), "d_kv": int(e["d_kv"]), "d_model": int(e["d_model"]), "d_ff": int(e["d_ff"]),
         "vocab_size": int(e["vocab_size"]), "num_buckets": int(e["relative_attention_num_buckets_or_max_pos_seq_len"]),
         "max_distance": int(e["relative_attention_max_distance"]), "eps": float(e["layer_norm_epsilon"]),
         "encoder_layers": int(e["num_layers"]), "decoder_layers": int(d["num_layers"]),
         "decoder_start_token_id": int(d["decoder_start_token_id"]), "eos_token_id": int(d["eos_token_id"]),
         "pad_token_id": int(d.get("pad_token_id", "0")), "gated": s["use_gated_activation"] == "true",
         "activation": s.get("activation", "relu"), "tie_word_embeddings": s.get("tie_word_embeddings", "true") == "true",
         "scale_decoder_outputs": s.get("scale_decoder_outputs", s.get("tie_word_embeddings", "true")) == "true",
         "tensor_para_size": int(s["tensor_para_size"]), "weight_data_type": e["weight_data_type"]}
    m["inner"] = m["num_heads"] * m["d_kv"]
    return m


def t5_shapes(m: dict, tp: int) -> Dict[str, tuple]:
    """FT stem (no rank suffix) -> shape of one rank's file."""
    d, inner, ff, V, H = m["d_model"], m["inner"], m["d_ff"], m["vocab_size"], m["num_heads"]
    shapes = {"shared.weight": (V, d), "shared.weight_T": (d, V), "encoder.final_layer_norm.weight": (d,),
              "decoder.final_layer_norm.weight": (d,)}
    if not m["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (V, d)
    wi = ["wi", "wi2"] if m["gated"] else ["wi"]
    shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (H // tp, m["num_buckets"])
    shapes["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (H // tp, m["num_buckets"])
    for l in range(m["encoder_layers"]):
        p = f"encoder.block.{l}.layer."
        for x in "qkv":
            shapes[f"{p}0.SelfAttention.{x}.weight"] = (d, inner // tp)
        shapes[f"{p}0.SelfAttention.o.weight"] = (inner // tp, d)
        shapes[f"{p}0.layer_norm.weight"] = (d,)
        shapes[f"{p}1.layer_norm.weight"] = (d,)
        for w in wi:
            shapes[f"{p}1.DenseReluDense.{w}.weight"] = (d, ff // tp)
        shapes[f"{p}1.DenseReluDense.wo.weight"] = (ff // tp, d)
    for l in range(m["decoder_layers"]):
        p = f"decoder.block.{l}.layer."
        shapes[f"{p}0.SelfAttention.qkv.weight"] = (d, 3, inner // tp)
        shapes[f"{p}0.SelfAttention.o.weight"] = (inner // tp, d)
        for x in "qkv":
            shapes[f"{p}1.EncDecAttention.{x}.weight"] = (d, inner // tp)
        shapes[f"{p}1.EncDecAttention.o.weight"] = (inner // tp, d)
        for i in range(3):
            shapes[f"{p}{i}.layer_norm.weight"] = (d,)
        for w in wi:
            shapes[f"{p}2.DenseReluDense.{w}.weight"] = (d, ff // tp)
        shapes[f"{p}2.DenseReluDense.wo.weight"] = (ff // tp, d)
    return shapes


def load_t5_rank(ckpt: Path, rank: int = 0):
    """(meta, {FT stem: float32 tensor}) of one rank of an FT T5 checkpoint folder."""
    return _load_rank(ckpt, rank, t5_meta, t5_shapes, t5_split_axis)


def t5_ft_to_hf(ckpt: Path) -> Dict[str, torch.Tensor]:
    """Read every rank of an FT T5 checkpoint and rebuild the HF state_dict (the round trip)."""
    m, r0 = load_t5_rank(ckpt, 0)
    tp = m["tensor_para_size"]
    ranks = [r0] + [load_t5_rank(ckpt, r)[1] for r in range(1, tp)]
    sd = {}
    for stem in t5_shapes(m, tp):
        if stem == "shared.weight_T":
            continue
        axis = t5_split_axis(stem)
        t = r0[stem] if axis is None else torch.cat([r[stem] for r in ranks], dim=axis)
        if stem.endswith("SelfAttention.qkv.weight"):
            base = stem[: -len("qkv.weight")]
            for i, x in enumerate("qkv"):
                sd[f"{base}{x}.weight"] = t[:, i, :].t()
            continue
        key = stem.replace("DenseReluDense.wi2", "DenseReluDense.wi_1")
        if m["gated"]:
            key = key.replace("DenseReluDense.wi.", "DenseReluDense.wi_0.")
        if t.ndim == 2 and stem not in ("shared.weight", "lm_head.weight"):
            t = t.t()
        sd[key] = t
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    sd["decoder.embed_tokens.weight"] = sd["shared.weight"]
    if m["tie_word_embeddings"]:
        sd["lm_head.weight"] = sd["shared.weight"]
    return {k: v.contiguous() for k, v in sd.items()}


def ckpt_size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.bin"))
