"""Weights and tokenizers for notebook 01: the real GPT-2 BPE, a SentencePiece model, tiny GPT-J and T5.

Nothing here downloads anything. The GPT-2 BPE comes from the registered data source `gpt2_bpe`
(`gpt2.tiktoken`: base64 token + rank per line); we rebuild `vocab` and `merges` from the ranks and
hand them to `tokenizers`. The T5 SentencePiece model is trained here on the task's own text.

The tiny models are trained briefly on CPU on deterministic offline text so that what they generate
can be checked by eye (and by tests):
- GPT-J: sequences people know (counting, weekdays, months, capitals) written in English;
- T5: "number to words: 342" -> "three hundred forty two".
Checkpoints are cached under data_root()/cache/01_triton_gptj_t5/<name>-<hash>/ (written to a temp
folder, then renamed), and re-used when present.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

FOLDER = "01_triton_gptj_t5"
ENDOFTEXT = 50256
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def cache_dir() -> Path:
    import labkit
    path = labkit.data_root() / "cache" / FOLDER
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder in a temp place beside `final`, then rename it into place (readers never see half)."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # someone else finished first: keep theirs
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


# ---------------------------------------------------------------- GPT-2 BPE (GPT-J's tokenizer)

def bytes_to_unicode() -> dict:
    """GPT-2's reversible byte -> printable character map (the alphabet of vocab.json)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def read_tiktoken(path: Path) -> dict:
    """gpt2.tiktoken -> {token bytes: rank}."""
    ranks = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def _bpe_parts(ranks: dict, token: bytes, max_rank: int) -> list:
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best_rank is None or best_rank >= max_rank:
            return parts
        parts = parts[:best] + [parts[best] + parts[best + 1]] + parts[best + 2:]


def vocab_and_merges(ranks: dict):
    """Recover GPT-2's vocab.json and merges.txt from the ranks: the merge that made token t (rank r)
    is the split BPE reaches on t's bytes using only merges ranked below r."""
    b2u = bytes_to_unicode()
    enc = lambda b: "".join(b2u[x] for x in b)
    vocab = {enc(tok): rank for tok, rank in ranks.items()}
    vocab["<|endoftext|>"] = ENDOFTEXT
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) == 1:
            continue
        parts = _bpe_parts(ranks, tok, rank)
        if len(parts) != 2:
            raise ValueError(f"token {tok!r} (rank {rank}) does not split into one merge: {parts}")
        merges.append((enc(parts[0]), enc(parts[1])))
    return vocab, merges


def gpt2_tokenizer_files() -> Path:
    """A folder holding tokenizer.json (plus vocab.json, merges.txt) of the real GPT-2 BPE, cached."""
    import labkit
    src = labkit.data.require("gpt2_bpe") / "gpt2.tiktoken"

    def build(tmp: Path) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, AddedToken
        vocab, merges = vocab_and_merges(read_tiktoken(src))
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
        tok.save(str(tmp / "tokenizer.json"))

    return _atomic_dir(cache_dir() / f"gpt2_bpe-{_key(['v1'])}", build)


def gpt2_tokenizer():
    """The real GPT-2 BPE as a `tokenizers.Tokenizer` ("Hello world" -> [15496, 995])."""
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(gpt2_tokenizer_files() / "tokenizer.json"))


# ---------------------------------------------------------------- GPT-J corpus and training

NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
CAPITALS = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin", "Japan": "Tokyo",
            "Egypt": "Cairo", "Canada": "Ottawa", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
            "Greece": "Athens", "Poland": "Warsaw"}


def gptj_sentence(rng: random.Random) -> str:
    """One line of the GPT-J training text (deterministic given the rng)."""
    kind = rng.randrange(5)
    if kind == 0:
        i = rng.randrange(6)
        return "Count with me: " + ", ".join(NUMBERS[i:i + 6]) + "."
    if kind == 1:
        i = rng.randrange(7)
        return "The days of the week are " + ", ".join((DAYS * 2)[i:i + 5]) + "."
    if kind == 2:
        i = rng.randrange(12)
        return "The months of the year are " + ", ".join((MONTHS * 2)[i:i + 5]) + "."
    if kind == 3:
        country = rng.choice(sorted(CAPITALS))
        return f"The capital of {country} is {CAPITALS[country]}."
    return "Hello world! This is a tiny GPT-J model served by Triton."


def gptj_corpus(n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [gptj_sentence(rng) for _ in range(n)]


GPTJ_TINY = dict(vocab_size=50400, n_positions=256, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                 n_inner=256, bos_token_id=ENDOFTEXT, eos_token_id=ENDOFTEXT, tie_word_embeddings=False)


def train_tiny_gptj(out: Path, steps: int = 200, batch: int = 16, seq: int = 32, seed: int = 0,
                    progress=None) -> dict:
    """Train the tiny GPT-J on the corpus and save it (HF format) into `out`; return a summary.

    Speed trick, stated: we train a compact copy whose vocabulary is only the ~100 GPT-2 tokens the corpus
    uses, then scatter its embedding and lm_head rows into the full 50,400-row model (the softmax over the
    other ~50k tokens would only push them down). Those never-seen tokens keep their random embeddings and get
    a low lm_head bias, which is what full-softmax training drives them towards.
    """
    from transformers import GPTJConfig, GPTJForCausalLM
    tok = gpt2_tokenizer()
    text = gptj_corpus(4000, seed)
    stream = []
    for line in text:
        stream += tok.encode(line).ids + [ENDOFTEXT]
    data = torch.tensor(stream)
    used = torch.unique(data)
    remap = torch.full((GPTJ_TINY["vocab_size"],), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    data = remap[data]
    # train a compact model over the used rows only, then scatter its rows into the full vocabulary
    torch.manual_seed(seed)
    small = GPTJForCausalLM(GPTJConfig(**dict(GPTJ_TINY, vocab_size=len(used), bos_token_id=None, eos_token_id=None)))
    opt = torch.optim.AdamW(small.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    losses = []
    it = range(steps) if progress is None else progress(range(steps), desc="train tiny GPT-J")
    t0 = time.perf_counter()
    small.train()
    for _ in it:
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=g)
        x = torch.stack([data[s:s + seq] for s in starts])
        y = torch.stack([data[s + 1:s + seq + 1] for s in starts])
        loss = small(input_ids=x, labels=None).logits.reshape(-1, len(used))
        loss = torch.nn.functional.cross_entropy(loss, y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    torch.manual_seed(seed + 1)
    model = GPTJForCausalLM(GPTJConfig(**GPTJ_TINY)).eval()
    with torch.no_grad():
        sd = small.state_dict()
        full = model.state_dict()
        for k, v in sd.items():
            if k in ("transformer.wte.weight", "lm_head.weight", "lm_head.bias"):
                continue
            full[k].copy_(v)
        full["transformer.wte.weight"][used] = sd["transformer.wte.weight"]
        full["lm_head.weight"][used] = sd["lm_head.weight"]
        full["lm_head.bias"][:] = sd["lm_head.bias"].min() - 10.0
        full["lm_head.bias"][used] = sd["lm_head.bias"]
    model.save_pretrained(out)
    summary = {"steps": steps, "final_loss": sum(losses[-20:]) / 20, "losses": losses,
               "train_seconds": time.perf_counter() - t0, "vocab_rows_trained": int(len(used))}
    (out / "train_summary.json").write_text(json.dumps(summary))
    return summary


# ---------------------------------------------------------------- T5 task, SentencePiece and training

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
T5_PREFIX = "number to words: "


def number_to_words(n: int) -> str:
    """0..999999 in English words, no 'and': 342 -> 'three hundred forty two'."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_to_words(n % 100))
    return number_to_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + number_to_words(n % 1000))


def t5_pairs(numbers) -> list:
    return [(f"{T5_PREFIX}{n}", number_to_words(n)) for n in numbers]


def t5_split(max_number: int = 999, held_out: int = 100, seed: int = 0):
    """Train/test numbers: a fixed random set of `held_out` numbers is never trained on."""
    rng = random.Random(seed)
    nums = list(range(max_number + 1))
    rng.shuffle(nums)
    return sorted(nums[held_out:]), sorted(nums[:held_out])


def train_sentencepiece(out_prefix: Path, vocab_size: int = 64) -> Path:
    """A unigram SentencePiece model trained on the task's text (T5 ids: pad 0, eos 1, unk 2)."""
    import sentencepiece as spm
    lines = [a for a, b in t5_pairs(range(1000))] + [b for a, b in t5_pairs(range(1000))]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size,
                                   model_type="unigram", split_digits=True, pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, num_threads=1, character_coverage=1.0, minloglevel=2)
    path = Path(str(out_prefix) + ".model")
    path.write_bytes(buf.getvalue())
    return path


class SPTokenizer:
    """T5-style wrapper: encode appends </s> (id 1); decode drops pad/eos."""

    def __init__(self, model_file):
        import sentencepiece as spm
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.pad_id, self.eos_id = 0, 1

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list:
        return self.sp.encode(text) + [self.eos_id]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.sp.decode([i for i in ids if i != self.pad_id])


T5_TINY = dict(d_model=64, d_kv=16, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4,
               relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0,
               feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0,
               pad_token_id=0, eos_token_id=1)


def pad_batch(seqs, pad: int = 0, left: bool = False) -> torch.Tensor:
    n = max(len(s) for s in seqs)
    rows = [([pad] * (n - len(s)) + list(s)) if left else (list(s) + [pad] * (n - len(s))) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


def train_tiny_t5(out: Path, steps: int = 600, batch: int = 48, seed: int = 0, progress=None, lr: float = 4e-3) -> dict:
    """Train the tiny T5 on number -> words and save it plus spiece.model into `out`."""
    from transformers import T5Config, T5ForConditionalGeneration
    sp_path = train_sentencepiece(out / "spiece")
    tok = SPTokenizer(sp_path)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(vocab_size=tok.vocab_size, **T5_TINY))
    train_nums, _ = t5_split(seed=seed)
    pairs = t5_pairs(train_nums)
    enc = [(tok.encode(a), tok.encode(b)) for a, b in pairs]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    losses = []
    it = range(steps) if progress is None else progress(range(steps), desc="train tiny T5")
    t0 = time.perf_counter()
    model.train()
    for _ in it:
        chunk = [enc[rng.randrange(len(enc))] for _ in range(batch)]
        x = pad_batch([a for a, _ in chunk])
        y = pad_batch([b for _, b in chunk], pad=-100)
        loss = model(input_ids=x, attention_mask=(x != 0).long(), labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    model.save_pretrained(out)
    summary = {"steps": steps, "final_loss": sum(losses[-20:]) / 20, "losses": losses,
               "train_seconds": time.perf_counter() - t0}
    (out / "train_summary.json").write_text(json.dumps(summary))
    return summary


class _threads:
    """Train on one thread: these models are so small that a second thread mostly adds synchronisation,
    and on a busy machine spinning threads make it much slower."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)
        return False


def tiny_checkpoint(kind: str, steps: Optional[int] = None, progress=None) -> Path:
    """The cached tiny checkpoint folder for kind 'gptj' or 't5' (trained on first use)."""
    if kind == "gptj":
        steps = steps or 250
        key = _key(["gptj", GPTJ_TINY, steps, "v2"])
        with _threads(1):
            return _atomic_dir(cache_dir() / f"gptj_tiny-{key}", lambda d: train_tiny_gptj(d, steps=steps, progress=progress))
    if kind == "t5":
        steps = steps or 600  # 600: 0.94 held-out exact match with max_distance 128 (400: 0.77), CPU, 2026-11-30
        key = _key(["t5", T5_TINY, steps, "v2"])
        with _threads(1):
            return _atomic_dir(cache_dir() / f"t5_tiny-{key}", lambda d: train_tiny_t5(d, steps=steps, progress=progress))
    raise ValueError(f"kind={kind!r}; use 'gptj' or 't5'")


def train_summary(path: Path) -> dict:
    return json.loads((Path(path) / "train_summary.json").read_text())


def load_hf(kind: str, path, dtype=torch.float32, device: str = "cpu"):
    """Load a Hugging Face GPT-J or T5 checkpoint folder (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import GPTJForCausalLM, T5ForConditionalGeneration
    cls = GPTJForCausalLM if kind == "gptj" else T5ForConditionalGeneration
    return cls.from_pretrained(str(path), dtype=dtype).to(device).eval()


def t5_tokenizer(path) -> SPTokenizer:
    """The SentencePiece tokenizer that sits beside a T5 checkpoint (spiece.model)."""
    return SPTokenizer(Path(path) / "spiece.model")
