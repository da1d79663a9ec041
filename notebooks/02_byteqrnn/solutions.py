"""Solutions of the notebook's exercises (run by tests/test_solutions.py)."""
from __future__ import annotations

import numpy as np
from keras import ops

from bq_layers import EOS_ID, PAD_ID, UNK_ID, _masked_block_mean, downsample_mean


def gbst_uniform_mix(x, mask, max_block_size: int = 4, downsample_rate: int = 2):
    """Exercise 1: GBST without learned scores (every block size weighted 1/M), i.e. the plain
    average of the candidate blocks, then the same downsampling. x [B, L, D], mask [B, L]."""
    cands = [x] + [_masked_block_mean(x, mask, b)[0] for b in range(2, max_block_size + 1)]
    mixed = sum(cands) / float(max_block_size) * mask[..., None]
    return downsample_mean(mixed, mask, downsample_rate)


def per_channel_int8(w: np.ndarray):
    """Exercise 2: symmetric int8 quantization with one scale per output channel (last axis).
    Returns (int8 codes, scales [C]); w ~= codes * scales."""
    w = np.asarray(w, np.float32)
    axes = tuple(range(w.ndim - 1))
    scales = np.maximum(np.abs(w).max(axis=axes), 1e-12) / 127.0
    codes = np.clip(np.round(w / scales), -127, 127).astype(np.int8)
    return codes, scales


def greedy_decode(model, src, max_len: int):
    """Exercise 3: greedy decoding with the fixed-size merged-attention cache."""
    n = len(src)
    kv, mask = model.encode(ops.convert_to_tensor(src))
    caches = [ops.zeros((n, 1, model.cfg.dim)) for _ in model.dec]
    prev = np.full(n, PAD_ID, np.int32)
    out = [[] for _ in range(n)]
    alive = np.ones(n, bool)
    for i in range(max_len):
        logits, caches = model.step(ops.convert_to_tensor(prev), ops.convert_to_tensor(np.int32(i + 1)),
                                    caches, kv, mask)
        lg = ops.convert_to_numpy(logits).copy()
        lg[:, [PAD_ID, UNK_ID]] = -np.inf
        prev = lg.argmax(-1).astype(np.int32)
        for b in range(n):
            if alive[b]:
                if prev[b] == EOS_ID:
                    alive[b] = False
                else:
                    out[b].append(int(prev[b]))
        if not alive.any():
            break
    return out
