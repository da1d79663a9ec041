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
FT's own GPT-J converter writes fp32 only, and FT's GptJWeight::loadModel (the versions read) reads files as fp32
("only support FP32 now"): fp16 GPT-J files serve this project's runtime.
T5 (as FT's `examples/pytorch/t5/utils/huggingface_t5_ckpt_convert.py` writes it; files named by the HF key):
every 2-D tensor is transposed before `tofile`, so weights are [in, out] and relative_attention_bias is
[heads, buckets]. Split on the last axis: encoder SelfAttention.q/k/v, EncDecAttention.q/k/v, DenseReluDense.wi
(gated: wi_0 -> wi, wi_1 -> wi2); on axis 0: SelfAttention.o, EncDecAttention.o, DenseReluDense.wo,
relative_attention_bias. Decoder self-attention q/k/v are fused into `...SelfAttention.qkv.weight` [d, 3, inner].
Whole: layer norms; `shared.weight.bin` = the embedding transposed, [d, V]; `shared.weight_T.bin` = [V, d], the
table FT's C++ reads (T5EncoderWeight / T5DecodingWeight::loadModel) and indexes by token id; `lm_head.weight.bin`
[V, d] (T5DecodingWeight reads it when present, else shared.weight_T). config.ini: [encoder] and [decoder] hold
every key of the HF stack configs (relative_attention_num_buckets renamed
relative_attention_num_buckets_or_max_pos_seq_len) plus weight_data_type; [structure] t5_with_bias,
use_gated_activation, position_embedding_type. One deliberate difference: FT reads [decoder] tie_word_embeddings
(default true) to scale the logits by d_model^-0.5, so we write it from HF's `scale_decoder_outputs` (false for
T5 v1.1 / flan). FT fixes the relative-attention max_distance at 128 (T5TritonModel.cc): other values are refused.
"""
from __future__ import annotations

import configparser
import copy
import io
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

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


def ini_text(config: configparser.ConfigParser) -> str:
    """config.ini's text exactly as `write_ft` (and FT's converters: ConfigParser.write) writes it."""
    buf = io.StringIO()
    config.write(buf)
    return buf.getvalue()


def rank_count(ckpt: Path, probe: str) -> int:
    """tensor_para_size of a checkpoint folder, from its files (FT's config.ini does not record it; Triton's
    config.pbtxt does): how many `<probe>.<rank>.bin` exist, checked against a `<N>-gpu` folder name."""
    ckpt = Path(ckpt)
    n = 0
    while (ckpt / f"{probe}.{n}.bin").exists():
        n += 1
    if n == 0:
        raise FileNotFoundError(f"{ckpt / (probe + '.0.bin')} is missing: not an FT checkpoint folder of this model")
    named = re.fullmatch(r"(\d+)-gpu", ckpt.name)
    if named and int(named.group(1)) != n:
        raise ValueError(f"{ckpt} holds {n} rank files of {probe} but its name says {named.group(1)} GPUs")
    return n


def _load_rank(ckpt: Path, rank: int, m: dict, shapes: Dict[str, tuple], split_axis_of):
    """(m, {FT stem: float32 tensor}) of one rank: files of split tensors end in .<rank>.bin."""
    ckpt = Path(ckpt)
    tp = m["tensor_para_size"]
    if not 0 <= rank < tp:
        raise ValueError(f"rank {rank} does not exist in a checkpoint written for tensor_para_size={tp}")
    tensors = {}
    for stem, shp in shapes.items():
        fname = f"{stem}.{rank}.bin" if split_axis_of(stem) is not None else f"{stem}.bin"
        tensors[stem] = read_bin(ckpt / fname, shp, m["weight_data_type"])
    return m, tensors


# ---------------------------------------------------------------- config.ini as FT reads it

# `INIReader` ports FT's `3rdparty/INIReader.h` (inih, as vendored in NVIDIA/FasterTransformer): lines are read
# with fgets into a 200-byte buffer (INI_MAX_LINE), so a longer line is cut into 199-character pieces and the
# rest is parsed as a line of its own; `;` after whitespace starts a comment; an indented line continues the
# previous key; a key given twice keeps both values joined by a newline; section and key names are
# case-insensitive. `Get` / `GetInteger` / `GetFloat` without a default print an error and `exit(-1)` when the key
# is missing (or, for numbers, does not start with one); here they raise `MissingKey`. `GetInteger` is C's
# `strtol(value, &end, 0)` (a decimal, `0x` hex or leading-0 octal prefix), `GetBoolean` accepts
# true/yes/on/1 and false/no/off/0 in any case.
#
# REQUIRED lists every key FT reads with no default when the Triton backend loads a model folder; each entry
# names the C++ that reads it (paths in NVIDIA/FasterTransformer).

INI_MAX_LINE = 200      # INIReader.h: fgets(line, INI_MAX_LINE, file) keeps at most 199 characters
MAX_NAME = 50           # INIReader.h: prev_name[MAX_NAME] (strncpy0 keeps 49 characters)
MAX_SECTION = 50
_SPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale
_MISSING = object()

T5_ROOT = "src/fastertransformer/triton_backend/t5/T5TritonModel.cc"
GPTJ_ROOT = "src/fastertransformer/triton_backend/gptj/GptJTritonModel.cc"
FILE_TYPE = "src/fastertransformer/utils/cuda_utils.h getModelFileType (from T5EncoderWeight/T5DecodingWeight::loadModel)"

# (section, key, how FT reads it, where): every key read without a default
REQUIRED: Dict[str, List[Tuple[str, str, str, str]]] = {
    "t5": [("encoder", "_name_or_path", "Get", T5_ROOT)]
    + [("encoder", k, "GetInteger", T5_ROOT) for k in (
        "num_heads", "d_kv", "d_model", "d_ff", "num_layers", "vocab_size",
        "relative_attention_num_buckets_or_max_pos_seq_len")]
    + [("decoder", k, "GetInteger", T5_ROOT) for k in (
        "num_heads", "d_kv", "d_model", "d_ff", "num_layers", "vocab_size",
        "relative_attention_num_buckets_or_max_pos_seq_len", "decoder_start_token_id", "eos_token_id")]
    + [("encoder", "feed_forward_proj", "Get", T5_ROOT + " -> utils/activation_types.h getActivationType")]
    + [("encoder", "weight_data_type", "Get", FILE_TYPE), ("decoder", "weight_data_type", "Get", FILE_TYPE)],
    "gptj": [("gptj", "model_name", "Get", GPTJ_ROOT)]
    + [("gptj", k, "GetInteger", GPTJ_ROOT) for k in (
        "head_num", "size_per_head", "inter_size", "num_layer", "vocab_size", "rotary_embedding", "start_id", "end_id")],
}
# (read with a default by T5TritonModel.cc: [decoder] tie_word_embeddings true, [structure] t5_with_bias false,
# use_gated_activation false, position_embedding_type "relative"; t5_meta reads them the same way)
# activation_types.h getActivationType: the names FT accepts for [encoder] feed_forward_proj
FT_ACTIVATIONS = ("Gelu", "gelu", "Relu", "relu", "Silu", "silu", "GeGLU", "geglu", "gated-gelu", "ReGLU", "reglu",
                  "gated-relu", "SiGLU", "gated-silu")


class MissingKey(KeyError):
    """FT would print '[ERROR] Does not find the section ... with name ...' and exit(-1)."""


def _rstrip(s: str) -> str:
    return s.rstrip(_SPACE)


def _lskip(s: str) -> str:
    return s.lstrip(_SPACE)


def _find_chars_or_comment(s: str, chars: Optional[str]) -> int:
    """Index of the first char of `chars` (None: none) or of a ';' that follows whitespace; len(s) if neither."""
    was_space = False
    for i, ch in enumerate(s):
        if (chars is not None and ch in chars) or (was_space and ch == ";"):
            return i
        was_space = ch in _SPACE
    return len(s)


def _fgets_lines(text: str):
    """What repeated fgets(line, INI_MAX_LINE, f) returns: pieces of at most 199 chars, each ending at '\\n'."""
    for line in text.splitlines(keepends=True):
        while len(line) > INI_MAX_LINE - 1:
            yield line[:INI_MAX_LINE - 1]
            line = line[INI_MAX_LINE - 1:]
        yield line


class INIReader:
    """FT's INIReader over the text of a config.ini (see the module docstring)."""

    def __init__(self, text: str):
        self.values: Dict[str, str] = {}
        self.sections = set()
        self.error = self._parse(text)

    @classmethod
    def from_file(cls, path) -> "INIReader":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: FT's INIReader would return ParseError() -1 and the "
                                    "backend would not load the model")
        return cls(path.read_text())

    @staticmethod
    def _key(section: str, name: str) -> str:
        return f"{section}={name}".lower()

    def _handler(self, section: str, name: str, value: str) -> None:
        key = self._key(section, name)
        if self.values.get(key):
            self.values[key] += "\n"
        self.values[key] = self.values.get(key, "") + value
        self.sections.add(section)

    def _parse(self, text: str) -> int:
        section, prev_name, error = "", "", 0
        for lineno, line in enumerate(_fgets_lines(text), start=1):
            raw = line[1:] if lineno == 1 and line.startswith("\ufeff") else line  # INI_ALLOW_BOM
            start = _lskip(_rstrip(raw))
            indented = len(start) < len(_rstrip(raw))
            if start[:1] in (";", "#"):
                continue
            if prev_name and start and indented:  # continuation of the previous key (INI_ALLOW_MULTILINE)
                value = _rstrip(start[:_find_chars_or_comment(start, None)])
                self._handler(section, prev_name, value)
            elif start[:1] == "[":
                end = _find_chars_or_comment(start[1:], "]") + 1
                if end < len(start) and start[end] == "]":
                    section, prev_name = start[1:end][:MAX_SECTION - 1], ""
                elif not error:
                    error = lineno
            elif start:
                end = _find_chars_or_comment(start, "=:")
                if end < len(start):
                    name = _rstrip(start[:end])
                    value = _lskip(start[end + 1:])
                    value = _rstrip(value[:_find_chars_or_comment(value, None)])
                    prev_name = name[:MAX_NAME - 1]
                    self._handler(section, name, value)
                elif not error:
                    error = lineno
        return error

    # ------------------------------------------------------------ the accessors FT calls
    def has(self, section: str, name: str) -> bool:
        return self._key(section, name) in self.values

    def Get(self, section: str, name: str, default=_MISSING) -> str:
        key = self._key(section, name)
        if key in self.values:
            return self.values[key]
        if default is _MISSING:
            raise MissingKey(f"config.ini has no [{section}] {name}, which FT reads without a default "
                             "(FT prints 'Does not find the section' and exits)")
        return default

    def _number(self, section: str, name: str, default, parse, what: str):
        x = parse(self.Get(section, name, ""))
        if x is not None:
            return x
        if default is _MISSING:
            raise MissingKey(f"config.ini [{section}] {name} = {self.Get(section, name, '<missing>')!r} is not {what} "
                             "FT can read (without a default FT exits)")
        return default

    def GetInteger(self, section: str, name: str, default=_MISSING) -> int:
        return self._number(section, name, default, _strtol, "an integer")

    def GetFloat(self, section: str, name: str, default=_MISSING) -> float:
        return self._number(section, name, default, _strtod, "a number")

    GetReal = GetFloat

    def GetBoolean(self, section: str, name: str, default: bool) -> bool:
        v = self.Get(section, name, "").lower()
        if v in ("true", "yes", "on", "1"):
            return True
        if v in ("false", "no", "off", "0"):
            return False
        return default


_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_STRTOD = re.compile(r"[ \t\n\v\f\r]*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf(inity)?|nan)", re.IGNORECASE)


def _strtol(s: str) -> Optional[int]:
    """C strtol(s, &end, 0): the value of the longest numeric prefix, None when there is none (end == s)."""
    m = _STRTOL.match(s)
    if not m:
        return None
    sign, digits = m.groups()
    if digits[:2].lower() == "0x":
        n = int(digits, 16)
    elif digits.startswith("0"):
        n = int(digits, 8)
    else:
        n = int(digits)
    return -n if sign == "-" else n


def _strtod(s: str) -> Optional[float]:
    m = _STRTOD.match(s)
    return float(m.group(0)) if m else None


def missing_required(reader: INIReader, kind: str) -> List[str]:
    """Each key FT's `kind` ('t5' or 'gptj') backend reads without a default that this config.ini lacks or that
    does not parse as FT reads it, as 'section.key (why; where)'. Empty: FT can read every one."""
    bad = []
    for section, key, how, where in REQUIRED[kind]:
        try:
            getattr(reader, how)(section, key)
        except MissingKey as e:
            bad.append(f"[{section}] {key} ({e}; read in {where})")
    if kind == "t5" and reader.has("encoder", "feed_forward_proj") \
            and reader.Get("encoder", "feed_forward_proj") not in FT_ACTIVATIONS:
        bad.append(f"[encoder] feed_forward_proj = {reader.Get('encoder', 'feed_forward_proj')!r} is not a name "
                   "getActivationType knows (FT_CHECK fails)")
    return bad


def check_ft_config(reader: INIReader, kind: str, where: str = "config.ini") -> INIReader:
    """Raise ValueError naming every required key FT could not read from `reader`; return the reader."""
    bad = missing_required(reader, kind)
    if bad:
        raise ValueError(f"{where}: FasterTransformer's {kind} backend could not load it:\n  " + "\n  ".join(bad))
    return reader


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
    config = gptj_config_ini(hf_config, tp, weight_data_type)
    check_ft_config(INIReader(ini_text(config)), "gptj", "the GPT-J config.ini")
    return write_ft(out, tp, files, config, weight_data_type)


def gptj_meta(cfg: configparser.ConfigParser) -> dict:
    s = cfg["gptj"]
    m = {k: int(s[k]) for k in ("head_num", "size_per_head", "inter_size", "num_layer", "rotary_embedding",
                                "vocab_size", "start_id", "end_id")}
    if "tensor_para_size" in s:  # ours writes it; FT's converter does not (load_gptj_rank counts the files)
        m["tensor_para_size"] = int(s["tensor_para_size"])
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
    m = gptj_meta(read_config(ckpt))
    n = rank_count(ckpt, "model.layers.0.attention.dense.weight")
    if m.setdefault("tensor_para_size", n) != n:
        raise ValueError(f"{ckpt}: config.ini says tensor_para_size={m['tensor_para_size']} but there are {n} rank files")
    return _load_rank(ckpt, rank, m, gptj_shapes(m, n), gptj_split_axis)


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

FT_T5_MAX_DISTANCE = 128  # T5TritonModel.cc: `max_distance_ = 128;  // use default value of huggingface here`
# feed_forward_proj values whose FT activation (utils/activation_types.h) computes what HF T5 computes:
# FT's GELU is the tanh form, which HF uses for gated-gelu ("gelu_new") but not for plain "gelu" (erf)
T5_ACTIVATIONS = {"relu": "relu", "gated-relu": "relu", "gated-gelu": "gelu_tanh", "silu": "silu", "gated-silu": "silu"}


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


def _t5_checks(c) -> None:
    """Refuse what FT cannot run as Hugging Face does."""
    if c.relative_attention_max_distance != FT_T5_MAX_DISTANCE:
        raise ValueError(f"T5 relative_attention_max_distance={c.relative_attention_max_distance}: FasterTransformer "
                         f"fixes it at {FT_T5_MAX_DISTANCE} (T5TritonModel.cc) whatever config.ini says, so its logits "
                         "would differ from this model's; only models with 128 (every published T5) can be converted")
    if c.feed_forward_proj not in T5_ACTIVATIONS:
        raise ValueError(f"T5 feed_forward_proj={c.feed_forward_proj!r}: supported are {sorted(T5_ACTIVATIONS)} "
                         "(FT's GELU is the tanh form; HF's plain 'gelu' is not)")


def t5_stack_configs(hf_config):
    """The encoder and decoder configs T5ForConditionalGeneration builds (transformers' modeling_t5.py):
    the ones FT's converter dumps into [encoder] and [decoder]."""
    enc = copy.deepcopy(hf_config)
    enc.is_decoder, enc.use_cache = False, False
    dec = copy.deepcopy(hf_config)
    dec.is_decoder, dec.num_layers = True, hf_config.num_decoder_layers
    return enc, dec


def t5_config_ini(hf_config, tp: int = 1, weight_data_type: str = "fp32", stacks=None) -> configparser.ConfigParser:
    """config.ini as FT's huggingface_t5_ckpt_convert.py writes it (same sections, keys, order and value
    strings), except [decoder] tie_word_embeddings, written from HF's scale_decoder_outputs. `tp` is not stored
    (FT's config.ini has no tensor_para_size; Triton's config.pbtxt carries it)."""
    c = hf_config
    _t5_checks(c)
    _np_dtype(weight_data_type)
    cfg = configparser.ConfigParser()
    for name, stack in zip(("encoder", "decoder"), stacks or t5_stack_configs(c)):
        cfg[name] = {}
        for key, val in stack.to_dict().items():
            cfg[name][key] = f"{val}"
        cfg[name]["weight_data_type"] = weight_data_type
    for name in ("encoder", "decoder"):
        cfg[name]["relative_attention_num_buckets_or_max_pos_seq_len"] = cfg[name].pop("relative_attention_num_buckets")
    if "_name_or_path" not in cfg["encoder"]:  # T5TritonModel.cc reads it without a default
        cfg["encoder"]["_name_or_path"] = str(getattr(c, "name_or_path", ""))
    # FT scales the logits by d_model^-0.5 when [decoder] tie_word_embeddings (default true) is true: that is HF's
    # scale_decoder_outputs (transformers >= 5 forces tie_word_embeddings=True); older configs: tie_word_embeddings
    cfg["decoder"]["tie_word_embeddings"] = str(bool(getattr(c, "scale_decoder_outputs", c.tie_word_embeddings)))
    cfg["structure"] = {"t5_with_bias": "false", "use_gated_activation": "1" if "gated" in c.feed_forward_proj else "false",
                        "position_embedding_type": "relative"}
    return cfg


def t5_to_ft(sd: Dict[str, torch.Tensor], num_decoder_layers: int, tp: int) -> Dict[str, torch.Tensor]:
    """HF T5 state_dict -> {FT file stem: tensor} for `tp` ranks, following FT's split_and_convert_process."""
    out = {}
    for key, val in sd.items():
        if key == "shared.weight":
            out["shared.weight"] = val.t()       # FT transposes every 2-D tensor: [d, V]
            out["shared.weight_T"] = val         # ...and writes its transpose back: [V, d], what FT's C++ reads
            continue
        if key == "lm_head.weight":
            out["lm_head.weight"] = val          # transposed twice by FT's converter: [V, d]
            continue
        if key.endswith("embed_tokens.weight") or (key.startswith("decoder.") and any(
                f"SelfAttention.{x}.weight" in key for x in "qkv")):
            continue                             # FT reads shared.weight_T / the fused qkv below
        stem = key.replace("DenseReluDense.wi_0", "DenseReluDense.wi").replace("DenseReluDense.wi_1", "DenseReluDense.wi2")
        axis = t5_split_axis(stem)
        if axis is None and "layer_norm.weight" not in stem:
            continue                             # FT's converter logs "cannot find key" and skips it
        _put(out, stem, val.t() if val.ndim == 2 else val, tp, axis)
    for l in range(num_decoder_layers):
        p = f"decoder.block.{l}.layer.0.SelfAttention."
        qkv = torch.stack([sd[p + f"{x}.weight"].t() for x in "qkv"], dim=1)  # [d, 3, inner]
        _put(out, p + "qkv.weight", qkv, tp, -1)
    return out


def convert_t5(model_or_sd, hf_config, out: Path, tp: int, weight_data_type: str = "fp32") -> Path:
    """Write an HF T5 model (or state_dict) as FT's converter does for `tp` ranks; return <out>/<tp>-gpu."""
    stacks = None if isinstance(model_or_sd, dict) else (model_or_sd.encoder.config, model_or_sd.decoder.config)
    sd = model_or_sd if isinstance(model_or_sd, dict) else model_or_sd.state_dict()
    config = t5_config_ini(hf_config, tp, weight_data_type, stacks)
    check_ft_config(INIReader(ini_text(config)), "t5", "the T5 config.ini")
    files = t5_to_ft(sd, hf_config.num_decoder_layers, tp)
    return write_ft(out, tp, files, config, weight_data_type)


def t5_meta(reader: "INIReader", tensor_para_size: int = 1) -> dict:
    """The model as FT's T5 backend reads config.ini (T5TritonModel.cc, via FT's INIReader); refuses what FT
    would run differently from Hugging Face or what this runtime does not implement."""
    check_ft_config(reader, "t5")
    E = lambda k: reader.GetInteger("encoder", k)
    D = lambda k: reader.GetInteger("decoder", k)
    shared = ("num_heads", "d_kv", "d_model", "d_ff", "vocab_size", "relative_attention_num_buckets_or_max_pos_seq_len")
    differ = [k for k in shared if E(k) != D(k)]
    if differ:
        raise ValueError(f"config.ini: encoder and decoder differ in {differ}; this runtime needs them equal")
    for section in ("encoder", "decoder"):
        md = reader.GetInteger(section, "relative_attention_max_distance", FT_T5_MAX_DISTANCE)
        if md != FT_T5_MAX_DISTANCE:
            raise ValueError(f"config.ini [{section}] relative_attention_max_distance = {md}: FasterTransformer uses "
                             f"{FT_T5_MAX_DISTANCE} whatever this says, so it would not compute this model")
    if reader.GetBoolean("structure", "t5_with_bias", False):
        raise ValueError("config.ini [structure] t5_with_bias = true (Megatron T5 with biases) is not supported")
    if reader.Get("structure", "position_embedding_type", "relative") != "relative":
        raise ValueError("config.ini [structure] position_embedding_type: only 'relative' (T5) is supported")
    act = reader.Get("encoder", "feed_forward_proj")
    if act not in T5_ACTIVATIONS:
        raise ValueError(f"config.ini [encoder] feed_forward_proj = {act!r}: supported are {sorted(T5_ACTIVATIONS)}")
    gated = reader.GetBoolean("structure", "use_gated_activation", False)
    if gated != act.startswith("gated"):
        raise ValueError(f"config.ini: [structure] use_gated_activation = {gated} contradicts feed_forward_proj = {act!r}")
    wdt = reader.Get("encoder", "weight_data_type")
    if wdt != reader.Get("decoder", "weight_data_type"):
        raise ValueError("config.ini: [encoder] and [decoder] weight_data_type differ")
    _np_dtype(wdt)
    m = {"num_heads": E("num_heads"), "d_kv": E("d_kv"), "d_model": E("d_model"), "d_ff": E("d_ff"),
         "vocab_size": E("vocab_size"), "num_buckets": E("relative_attention_num_buckets_or_max_pos_seq_len"),
         "max_distance": FT_T5_MAX_DISTANCE, "eps": reader.GetFloat("encoder", "layer_norm_epsilon", 1e-6),
         "encoder_layers": E("num_layers"), "decoder_layers": D("num_layers"),
         "decoder_start_token_id": D("decoder_start_token_id"), "eos_token_id": D("eos_token_id"),
         "pad_token_id": reader.GetInteger("decoder", "pad_token_id", 0), "gated": gated, "activation": T5_ACTIVATIONS[act],
         # T5Decoding.cc: logits alpha = 1/sqrt(d_model) when tie_word_embeddings (and no T5 biases)
         "scale_decoder_outputs": reader.GetBoolean("decoder", "tie_word_embeddings", True),
         "tensor_para_size": tensor_para_size, "weight_data_type": wdt, "lm_head": True}
    m["inner"] = m["num_heads"] * m["d_kv"]
    return m


def t5_reader(hf_config, weight_data_type: str = "fp32") -> "INIReader":
    """The config.ini we would write for `hf_config`, read as FT reads it (for in-memory conversions)."""
    return INIReader(ini_text(t5_config_ini(hf_config, 1, weight_data_type)))


def t5_shapes(m: dict, tp: int) -> Dict[str, tuple]:
    """FT stem (no rank suffix) -> shape of one rank's file, for the files FT's C++ loaders read
    (T5EncoderWeight, T5DecodingWeight and their layer weights); lm_head only when m['lm_head']."""
    d, inner, ff, V, H = m["d_model"], m["inner"], m["d_ff"], m["vocab_size"], m["num_heads"]
    shapes = {"shared.weight_T": (V, d), "encoder.final_layer_norm.weight": (d,), "decoder.final_layer_norm.weight": (d,)}
    if m["lm_head"]:
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
    """(meta, {FT stem: float32 tensor}) of one rank of an FT T5 checkpoint folder, read as FT reads it:
    config.ini through FT's INIReader, the embedding from shared.weight_T.bin, lm_head.weight.bin if present."""
    ckpt = Path(ckpt)
    m = t5_meta(INIReader.from_file(ckpt / "config.ini"),
                rank_count(ckpt, "encoder.block.0.layer.0.SelfAttention.o.weight"))
    m["lm_head"] = (ckpt / "lm_head.weight.bin").exists()  # T5DecodingWeight: checkIfFileExist, else shared.weight_T
    return _load_rank(ckpt, rank, m, t5_shapes(m, m["tensor_para_size"]), t5_split_axis)


def t5_ft_to_hf(ckpt: Path) -> Dict[str, torch.Tensor]:
    """Read every rank of an FT T5 checkpoint and rebuild the HF state_dict (the round trip)."""
    m, r0 = load_t5_rank(ckpt, 0)
    tp = m["tensor_para_size"]
    ranks = [r0] + [load_t5_rank(ckpt, r)[1] for r in range(1, tp)]
    sd = {}
    for stem in t5_shapes(m, tp):
        axis = t5_split_axis(stem)
        t = r0[stem] if axis is None else torch.cat([r[stem] for r in ranks], dim=axis)
        if stem.endswith("SelfAttention.qkv.weight"):
            base = stem[: -len("qkv.weight")]
            for i, x in enumerate("qkv"):
                sd[f"{base}{x}.weight"] = t[:, i, :].t()
            continue
        key = {"shared.weight_T": "shared.weight"}.get(stem, stem).replace("DenseReluDense.wi2", "DenseReluDense.wi_1")
        if m["gated"]:
            key = key.replace("DenseReluDense.wi.", "DenseReluDense.wi_0.")
        if t.ndim == 2 and stem not in ("shared.weight_T", "lm_head.weight"):
            t = t.t()
        sd[key] = t
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    sd["decoder.embed_tokens.weight"] = sd["shared.weight"]
    sd.setdefault("lm_head.weight", sd["shared.weight"])
    return {k: v.contiguous() for k, v in sd.items()}


def ckpt_size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.bin"))
