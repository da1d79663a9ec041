"""Solutions of the notebook's exercises (run by tests/test_solutions.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import ft_convert


def qkv_partitions_concat(model, out: Path, tp: int = 4, layer: int = 0) -> bool:
    """Exercise 1: convert with tensor_para_size=tp and check that the tp slices of one layer's fused QKV
    weight, concatenated on the last axis, equal the TP=1 file; and that every slice holds whole heads."""
    c = model.config
    d, heads = c.n_embd, c.n_head
    one = ft_convert.convert_gptj(model, c, out, 1)
    many = ft_convert.convert_gptj(model, c, out, tp)
    stem = f"model.layers.{layer}.attention.query_key_value.weight"
    whole = np.fromfile(one / f"{stem}.0.bin", dtype="<f4").reshape(d, 3, d)
    parts = [np.fromfile(many / f"{stem}.{r}.bin", dtype="<f4").reshape(d, 3, d // tp) for r in range(tp)]
    whole_heads = (d // tp) % (d // heads) == 0
    return bool(np.array_equal(np.concatenate(parts, axis=-1), whole) and whole_heads)


def repetition_penalty(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    """Exercise 2: FT's / HF's repetition penalty: for every token already generated, divide its logit by
    `penalty` when positive, multiply when negative. logits [b, V], previous [b, t]."""
    out = logits.clone()
    seen = torch.gather(out, 1, previous)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return out.scatter(1, previous, seen)


def bandwidth_floor_ms(parameters: float, bytes_per_parameter: float, bandwidth_bytes_per_s: float) -> float:
    """Exercise 3: batch-1 decode reads every weight once per token: the time floor in milliseconds."""
    return parameters * bytes_per_parameter / bandwidth_bytes_per_s * 1e3
