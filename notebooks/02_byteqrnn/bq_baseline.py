"""The BERT-family baseline: all-MiniLM-L6-v2 (the real pretrained weights that ship offline),
fine-tuned for offensive-vs-clean on the same splits (PyTorch + transformers: the model's own format).

The fine-tuned weights and test scores are cached under data_root()/cache/02_byteqrnn/, keyed by the
split's fingerprint and the fine-tuning settings, so a re-run (or the smoke profile in CI) only pays
for evaluation-free loading; CPU latency is always measured live.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Stated for the blog's comparison (Devlin et al. 2019): BERT-base has ~110M parameters, ~440 MB in fp32.
BERT_BASE_PARAMS = 110_000_000
BERT_BASE_FP32_MB = 440.0


@dataclass(frozen=True)
class FinetuneConfig:
    max_tokens: int = 128
    epochs: int = 2
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    max_train: Optional[int] = None
    seed: int = 0

    def key(self, split_fingerprint: str) -> str:
        blob = json.dumps({"split": split_fingerprint, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    from labkit import data_root
    d = data_root() / "cache" / "02_byteqrnn"
    d.mkdir(parents=True, exist_ok=True)
    return d


def load_minilm(path, num_labels: int = 1):
    """(tokenizer, AutoModelForSequenceClassification) from the local all-MiniLM-L6-v2 folder; the
    classification head is new (randomly initialised), the encoder is the pretrained one."""
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    transformers.logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=num_labels)
    return tok, model


def fp32_bytes(model) -> int:
    return int(sum(p.numel() * 4 for p in model.parameters()))


def num_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def score(tok, model, texts: Sequence[str], max_tokens: int = 128, batch_size: int = 64,
          device: str = "cpu") -> np.ndarray:
    """Logits [N] (positive = offensive)."""
    import torch
    model.eval().to(device)
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(list(texts[i:i + batch_size]), truncation=True, max_length=max_tokens,
                      padding=True, return_tensors="pt").to(device)
            out.append(model(**enc).logits[:, 0].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def finetune(tok, model, texts: Sequence[str], labels: Sequence[int], cfg: FinetuneConfig,
             device: str = "cpu", progress=None) -> list:
    """AdamW fine-tuning of the whole model with BCE on the single logit; returns the loss curve."""
    import torch
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    texts, labels = list(texts), np.asarray(labels, dtype=np.float32)
    if cfg.max_train and len(texts) > cfg.max_train:
        keep = rng.choice(len(texts), cfg.max_train, replace=False)
        texts, labels = [texts[i] for i in keep], labels[keep]
    model.train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * int(np.ceil(len(texts) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10))
                                              * max(0.0, 1 - s / steps))
    lossf = torch.nn.BCEWithLogitsLoss()
    losses = []
    it = range(steps)
    if progress:
        it = progress(it, desc="MiniLM fine-tune", total=steps)
    order = np.concatenate([rng.permutation(len(texts)) for _ in range(cfg.epochs)])
    for s in it:
        idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
        if len(idx) == 0:
            break
        enc = tok([texts[i] for i in idx], truncation=True, max_length=cfg.max_tokens, padding=True,
                  return_tensors="pt").to(device)
        y = torch.as_tensor(labels[idx], device=device)
        loss = lossf(model(**enc).logits[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def finetune_cached(path, splits, cfg: FinetuneConfig, device: str = "cpu", progress=None) -> dict:
    """Fine-tune (or load the cached fine-tune) and score the test split.
    Returns {tok, model, test_scores, losses, cached, seconds}."""
    import torch
    from labkit.paths import atomic_write_bytes
    key = cfg.key(splits.fingerprint())
    d = cache_dir()
    wfile, sfile = d / f"minilm_{key}.pt", d / f"minilm_{key}.json"
    tok, model = load_minilm(path)
    t0 = time.perf_counter()
    if wfile.exists() and sfile.exists():
        model.load_state_dict(torch.load(wfile, map_location="cpu"))
        meta = json.loads(sfile.read_text())
        return {"tok": tok, "model": model.eval(), "test_scores": np.array(meta["test_scores"], np.float32),
                "losses": meta["losses"], "cached": True, "seconds": meta["seconds"], "key": key}
    losses = finetune(tok, model, splits.train["text"].tolist(), splits.train["label"].tolist(), cfg,
                      device=device, progress=progress)
    test_scores = score(tok, model, splits.test["text"].tolist(), cfg.max_tokens, device=device)
    seconds = time.perf_counter() - t0
    model.to("cpu")
    import io
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write_bytes(wfile, buf.getvalue())
    atomic_write_bytes(sfile, json.dumps({"test_scores": test_scores.tolist(), "losses": losses,
                                          "seconds": seconds, "config": asdict(cfg)}).encode())
    return {"tok": tok, "model": model.eval(), "test_scores": test_scores, "losses": losses,
            "cached": False, "seconds": seconds, "key": key}


def latency_per_example(tok, model, texts: Sequence[str], max_tokens: int = 128, threads: int = 1,
                        repeat: int = 3) -> float:
    """Median seconds per example at batch 1 on CPU, tokenization included, `threads` torch threads."""
    import torch
    from labkit import time_it
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval().to("cpu")
    try:
        def run():
            with torch.inference_mode():
                for t in texts:
                    enc = tok([t], truncation=True, max_length=max_tokens, return_tensors="pt")
                    model(**enc)
        timing = time_it(run, repeat=repeat, warmup=1)
    finally:
        torch.set_num_threads(old)
    return timing.median / len(texts)
