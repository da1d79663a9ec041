"""Test-only reference: what FasterTransformer's own converters write, re-expressed step by step so that our
converter (ft_convert) can be compared with it byte for byte. FT itself cannot be installed here (CUDA build;
its scripts load checkpoints from disk), so this ports the logic of (NVIDIA/FasterTransformer, Apache-2.0):

- examples/pytorch/t5/utils/huggingface_t5_ckpt_convert.py: convert_checkpoint (config.ini), split_and_convert_process
  (one tensor: transpose if 2-D, numpy, the elif chain of name rules, np.split, tofile) and fuse_decoder_qkv;
- examples/pytorch/gptj/utils/huggingface_gptj_ckpt_convert.py: the config.ini block of __main__, save,
  param2file, param2distributed and savebin (always float32).

Only the input side differs: FT's scripts call from_pretrained / torch.load on a folder; these functions take the
model (T5) or the state_dict and config dict (GPT-J) in memory. FT's T5 script keeps its [structure] defaults in
a module-level dict that a gated model mutates for the rest of the process; here each call starts afresh, as one
run of FT's script does. Everything else follows FT's order of operations and its string formatting.
"""
from __future__ import annotations

import configparser
from pathlib import Path

import numpy as np
import torch

NP = {"fp32": np.float32, "fp16": np.float16}


def _split_to_files(arr: np.ndarray, parts: int, axis: int, path_stem: Path) -> None:
    for j, piece in enumerate(np.split(arr, parts, axis=axis)):
        piece.tofile(f"{path_stem}.{j:d}.bin")


def _t5_tensor(key: str, val: torch.Tensor, parts: int, saved_dir: Path, np_type) -> None:
    """split_and_convert_process: the same rules in the same order."""
    if val.dim() == 2:
        val = val.transpose(1, 0)
    val = val.cpu().detach().numpy().astype(np_type)
    if "shared.weight" in key:
        val.tofile(saved_dir / f"{key}.bin")
        val.T.tofile(saved_dir / f"{key}_T.bin")
    elif "lm_head.weight" in key:
        val.transpose(1, 0).tofile(saved_dir / f"{key}.bin")
    elif "layer_norm.weight" in key:
        val.tofile(saved_dir / f"{key}.bin")
    elif any(s in key for s in ("SelfAttention.o.weight", "EncDecAttention.o.weight", "DenseReluDense.wo.weight")):
        _split_to_files(val, parts, 0, saved_dir / key)
    elif ("DenseReluDense.wi.weight" in key
          or ("encoder" in key and any(f"SelfAttention.{x}.weight" in key for x in "qkv"))
          or any(f"EncDecAttention.{x}.weight" in key for x in "qkv")):
        _split_to_files(val, parts, -1, saved_dir / key)
    elif "DenseReluDense.wi_0.weight" in key or "DenseReluDense.wi_1.weight" in key:
        saved_key = key.replace("wi_0", "wi") if "wi_0" in key else key.replace("wi_1", "wi2")
        _split_to_files(val, parts, -1, saved_dir / saved_key)
    elif "relative_attention_bias" in key:
        _split_to_files(val, parts, 0, saved_dir / key)
    # else: decoder self-attention q/k/v (fused below), embed_tokens and unknown keys: FT logs and skips them


def _t5_fused_qkv(model, parts: int, saved_dir: Path, np_type) -> None:
    """fuse_decoder_qkv: [d, 3, inner] from the transposed q, k, v, split on the last axis."""
    params = {n: p for n, p in model.named_parameters() if "decoder" in n and "SelfAttention" in n}
    for i in range(model.decoder.config.num_layers):
        ws = [params[f"decoder.block.{i}.layer.0.SelfAttention.{x}.weight"].T for x in "qkv"]
        shape = ws[0].shape
        qkv = torch.cat(ws, dim=-1).reshape([shape[0], 3, shape[1]])
        qkv = qkv.cpu().detach().numpy().astype(np_type)
        _split_to_files(qkv, parts, -1, saved_dir / f"decoder.block.{i}.layer.0.SelfAttention.qkv.weight")


def ft_t5_convert(model, saved_dir, tensor_para_size: int, weight_data_type: str = "fp32") -> Path:
    """convert_checkpoint for a T5ForConditionalGeneration: <saved_dir>/<N>-gpu/."""
    out = Path(saved_dir) / f"{tensor_para_size:d}-gpu"
    out.mkdir(parents=True, exist_ok=True)
    structure = {"t5_with_bias": "false", "use_gated_activation": "false", "position_embedding_type": "relative"}
    if model.encoder.config.feed_forward_proj.find("gated") != -1:
        structure["use_gated_activation"] = "1"
    config = configparser.ConfigParser()
    config["encoder"] = {}
    for key, val in model.encoder.config.to_dict().items():
        config["encoder"][key] = f"{val}"
    config["encoder"]["weight_data_type"] = weight_data_type
    config["decoder"] = {}
    for key, val in model.decoder.config.to_dict().items():
        config["decoder"][key] = f"{val}"
    config["decoder"]["weight_data_type"] = weight_data_type
    for old, new in {"relative_attention_num_buckets": "relative_attention_num_buckets_or_max_pos_seq_len"}.items():
        config["encoder"][new] = config["encoder"].pop(old)
        config["decoder"][new] = config["decoder"].pop(old)
    config["structure"] = {}
    for k, v in structure.items():
        config["structure"][k] = v
    with open(out / "config.ini", "w") as f:
        config.write(f)
    np_type = NP[weight_data_type]
    for name, param in model.state_dict().items():
        _t5_tensor(name, param, tensor_para_size, out, np_type)
    _t5_fused_qkv(model, tensor_para_size, out, np_type)
    return out


# ---------------------------------------------------------------- GPT-J

def _savebin(param, save_path: str) -> None:
    if isinstance(param, torch.Tensor):
        param = param.cpu().float().numpy()
    np.squeeze(param).astype(np.float32).tofile(save_path + ".bin")


def _distributed(pt_param, base: str, n: int, axis: int) -> None:
    for i, p in enumerate(np.split(pt_param.cpu().float().numpy(), n, axis=axis)):
        _savebin(p, base + f".{i}")


def ft_gptj_convert(w: dict, hf_config: dict, output_dir, n_inference_gpus: int, n_layers: int) -> Path:
    """__main__ of FT's GPT-J converter, with `w` = the HF state_dict and `hf_config` = config.to_dict()."""
    out = Path(output_dir) / f"{n_inference_gpus}-gpu"
    out.mkdir(parents=True, exist_ok=True)
    config = configparser.ConfigParser()
    config["gptj"] = {}
    g = config["gptj"]
    g["model_name"] = "gptj" if hf_config["_name_or_path"] == "" else hf_config["_name_or_path"]
    g["head_num"] = str(hf_config["n_head"])
    n_embd = hf_config["n_embd"]
    g["size_per_head"] = str(n_embd // hf_config["n_head"])
    g["inter_size"] = str(n_embd * 4)
    g["num_layer"] = str(hf_config["n_layer"])
    g["rotary_embedding"] = str(hf_config["rotary_dim"])
    g["vocab_size"] = str(hf_config["vocab_size"])
    g["start_id"] = str(hf_config["bos_token_id"])
    g["end_id"] = str(hf_config["eos_token_id"])
    g["weight_data_type"] = "fp32"
    with open(out / "config.ini", "w") as f:
        config.write(f)
    d = str(out)
    for l in range(n_layers):
        _savebin(w["transformer.wte.weight"], d + "/model.wte")
        k, base = f"transformer.h.{l}.", d + f"/model.layers.{l}."
        _savebin(w[k + "ln_1.bias"], base + "input_layernorm.bias")
        _savebin(w[k + "ln_1.weight"], base + "input_layernorm.weight")
        _distributed(w[k + "mlp.fc_in.weight"].T, base + "mlp.dense_h_to_4h.weight", n_inference_gpus, -1)
        _distributed(w[k + "mlp.fc_in.bias"], base + "mlp.dense_h_to_4h.bias", n_inference_gpus, -1)
        _distributed(w[k + "mlp.fc_out.weight"].T, base + "mlp.dense_4h_to_h.weight", n_inference_gpus, 0)
        _savebin(w[k + "mlp.fc_out.bias"], base + "mlp.dense_4h_to_h.bias")
        _distributed(w[k + "attn.out_proj.weight"].T, base + "attention.dense.weight", n_inference_gpus, 0)
        qkv = torch.stack([w[k + f"attn.{x}_proj.weight"] for x in "qkv"]).permute(2, 0, 1)
        _distributed(qkv, base + "attention.query_key_value.weight", n_inference_gpus, -1)
    _savebin(w["transformer.ln_f.weight"], d + "/model.final_layernorm.weight")
    _savebin(w["transformer.ln_f.bias"], d + "/model.final_layernorm.bias")
    _savebin(w["lm_head.weight"], d + "/model.lm_head.weight")
    _savebin(w["lm_head.bias"], d + "/model.lm_head.bias")
    return out
