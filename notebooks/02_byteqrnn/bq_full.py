"""The full profile's long work, in resumable pieces (see bq_stages.py), and its TensorFlow-only export.

    KERAS_BACKEND=jax python bq_full.py --budget-s 480     # GPU: train and score every piece (JAX + PyTorch)
    KERAS_BACKEND=tensorflow python bq_full.py --export    # CPU with TF: int8 LiteRT file, its AUC and latency
    python bq_full.py --tiny ...                           # the same at the smoke profile's sizes (a test)
    KERAS_BACKEND=jax python bq_full.py --time-steps       # seconds per full-size training step, this machine

Pieces go to labkit.stage_dir("02_byteqrnn", "full") ($LABKIT_STAGE_DIR moves it; --tiny uses the "smoke"
one). A piece already there is skipped; a piece expected to overrun the budget is not started. The notebook
(profile full) then finds every piece and only loads. Ends with `STAGES COMPLETE` or `STAGES LEFT: <n>`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "shared"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")  # JAX and PyTorch (MiniLM) share the GPU

# Expected seconds of each piece on one H200 under JAX: compile + steps x step time.
# Measured with --time-steps on the shared 2-core CPU under JAX (2026-11-30, load average ~14, so about 1/7 of
# the cores): first step (XLA compile) 151 s ByteQRNN, 293 s ByteTransformer, 257 s Funnel; then 20.6, 11.7 and
# 7.1 s per step (batch 64, 256 bytes). A quiet 2-core CPU is ~6.6x faster (3.1 s/step for ByteQRNN, issue 13),
# and the H200 ran a ByteQRNN-shaped Keras-JAX model ~1,500x faster than that CPU (2.07 ms/step): so about
# 2-3 ms/step here; we allow 4-5 ms. Compiling does not get the GPU's speed-up: ~25-45 s per model on a quiet
# CPU, allowed 60 s per piece (train step + predict step). So compiling, not training, is most of each piece.
GPU_COMPILE_S = 60.0
GPU_STEP_S = {"ByteQRNN": 0.004, "ByteQRNN (SFL GBST)": 0.004, "ByteTransformer": 0.004,
              "ByteFunnelTransformer": 0.004, "pretrain": 0.005, "ByteQRNN pre-trained": 0.004,
              "seq2seq": 0.004}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def time_steps(K: dict, n: int = 3) -> None:
    """Seconds per training step of each full-size model here (first call = compile, then the median of n)."""
    import keras
    import numpy as np
    import bq_models as M
    import bq_seq2seq as S2
    import bq_stages as ST
    from bq_layers import encode_bytes
    B, L = K["batch"], K["max_len"]
    rng = np.random.default_rng(0)
    x = encode_bytes([bytes(rng.integers(32, 127, size=int(rng.integers(20, L)))).decode() for _ in range(B)], L)
    y = (rng.random((B, 1)) < 0.1).astype(np.float32)
    pooling = "scan" if keras.backend.backend() == "jax" else "loop"

    def bench(name, model, xs, ys, loss):
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
        t0, c0 = time.perf_counter(), time.process_time()
        model.train_on_batch(xs, ys)
        first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
        ts, cs = [], []
        for _ in range(n):
            t0, c0 = time.perf_counter(), time.process_time()
            model.train_on_batch(xs, ys)
            ts.append(time.perf_counter() - t0)
            cs.append(time.process_time() - c0)
        # process CPU seconds as well as wall: on a shared machine the wall time counts other people's work
        log(f"{name}: first step (compile) {first:.1f} s wall / {first_cpu:.1f} s CPU, then {np.median(ts):.3f} s "
            f"wall / {np.median(cs):.3f} s CPU per step (batch {B}); load average {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} cores")

    for name, cfg in ST.classifier_configs(K, pooling).items():
        if name == "ByteQRNN (SFL GBST)":
            continue
        bench(name, M.build_classifier(cfg), x, y, keras.losses.BinaryCrossentropy(from_logits=True))
    bench("pretrain", M.build_pretrainer(ST.base_config(K).with_(pooling=pooling)), x, x,
          keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    s2s = ST.base_config(K).with_(layers=max(1, K["qrnn_layers"] - 1), num_classes=0, pooling=pooling)
    cfg = S2.Seq2SeqConfig(src_len=K["s2s_len"] + 8, tgt_len=K["s2s_len"], dim=K["s2s_dim"],
                           dec_layers=K["s2s_layers"], heads=K["heads"], encoder=s2s)
    src = encode_bytes(["the quick brown fox"] * B, K["s2s_len"] + 8)
    tgt = encode_bytes(["the quick brown fox"] * B, K["s2s_len"])
    bench("seq2seq", S2.build_seq2seq(cfg), (src, tgt), tgt,
          keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def run_stages(K: dict, st, budget_s: float, seed: int = 0, dataset: str = "fortunes", skip=()) -> int:
    """Run every piece not yet stored, in order, within the budget, except those named in `skip` (left for
    another machine, e.g. MiniLM where its 90 MB weights were not carried). Returns how many are left."""
    import keras
    import bq_data
    import bq_stages as ST
    from labkit import progress
    t_start = time.perf_counter()
    pooling = "scan" if keras.backend.backend() == "jax" else "loop"
    data = ST.load_data(K, seed, dataset)
    splits = data[1]
    cfgs = ST.classifier_configs(K, pooling)
    qrnn_cfg = cfgs["ByteQRNN"]
    state = {}

    def est(name, steps):
        return GPU_COMPILE_S + GPU_STEP_S.get(name, 0.005) * steps

    pieces = [(name, est(name, K["steps"]), lambda n=name: ST.train_classifier_piece(st, n, cfgs[n], K, data, seed))
              for name in cfgs]
    unlabeled = bq_data.load_unlabeled_english() + splits.train.text.tolist()
    pieces += [
        ("pretrain", est("pretrain", K["pre_steps"]),
         lambda: state.update(pre=ST.pretrain_piece(st, qrnn_cfg, K, unlabeled, seed)[0])),
        ("ByteQRNN pre-trained", est("ByteQRNN pre-trained", K["steps"]),
         lambda: ST.finetune_piece(st, qrnn_cfg, K, data, seed, pretrainer=state.get("pre"))),
        ("seq2seq", est("seq2seq", K["s2s_steps"]) + 30, lambda: ST.seq2seq_piece(st, K, seed)),
        ("matt_timing", 30.0, lambda: ST.matt_timing_piece(st, K, seed)),
        ("minilm", 60.0, lambda: ST.minilm_piece(st, K, splits, seed, _torch_device(), progress=progress)),
    ]
    unknown = set(skip) - {name for name, _, _ in pieces}
    if unknown:
        raise SystemExit(f"--skip {sorted(unknown)}: no such piece; pieces are {[n for n, _, _ in pieces]}")
    skipped = not_started = 0      # once one piece is not started, none after it is (pieces build on earlier ones)
    for name, expected, fn in pieces:
        if st.json_path(name).exists():
            log(f"{name}: already in {st.folder}")
            continue
        if name in skip:
            log(f"{name}: skipped here (--skip); run it on another machine")
            skipped += 1
            continue
        elapsed = time.perf_counter() - t_start
        if not_started or elapsed + expected > budget_s:
            log(f"{name}: not started (expected {expected:.0f} s; {budget_s - elapsed:.0f} s of the budget left)")
            not_started += 1
            continue
        log(f"{name}: running (expected about {expected:.0f} s)")
        t0 = time.perf_counter()
        fn()
        log(f"{name}: done in {time.perf_counter() - t0:.1f} s")
    if st.json_path("ByteQRNN pre-trained").exists() and st.weights_path("pretrain").exists():
        st.weights_path("pretrain").unlink()   # the fine-tune has it; keeps the stage dir small (it travels)
    return skipped + not_started


def _torch_device() -> str:
    try:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def run_export(K: dict, st, seed: int = 0, dataset: str = "fortunes") -> None:
    """From the stored fine-tuned ByteQRNN: int8 LiteRT file, AUC, latency vs MiniLM fp32 (TensorFlow, CPU)."""
    import keras
    import bq_baseline as BL
    import bq_models as M
    import bq_stages as ST
    from labkit.data import require
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("--export needs KERAS_BACKEND=tensorflow (LiteRT conversion)")
    name = "ByteQRNN pre-trained"
    if not st.weights_path(name).exists():
        raise SystemExit(f"{st.weights_path(name)} is missing: run the stage command first (bq_full.py --budget-s ...)")
    data = ST.load_data(K, seed, dataset)
    model = M.build_classifier(ST.classifier_configs(K, "loop")["ByteQRNN"])
    model.load_weights(str(st.weights_path(name)))
    tok, minilm = BL.load_minilm(require("minilm"))   # the pretrained weights: latency needs the architecture only
    _, rec = ST.export_piece(st, K, data, model, minilm_model=minilm, tok=tok)
    m = rec["metrics"]
    log(f"int8 file {m['int8_bytes'] / 1e6:.2f} MB, AUC int8 {m['auc_int8']['overall']:.4f} vs Keras "
        f"{m['auc_keras']['overall']:.4f}; 1-thread ms/example: int8 {m['int8_ms_per_example_1thread']:.2f}, "
        f"MiniLM fp32 {m['minilm_ms_per_example_1thread']:.2f}; all-padding logit {m['all_padding_logit']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=480.0, help="start no piece expected to end after this")
    ap.add_argument("--export", action="store_true", help="TensorFlow: int8 export + CPU latency from stored weights")
    ap.add_argument("--tiny", action="store_true", help="smoke-profile sizes (an end-to-end test of the pieces)")
    ap.add_argument("--time-steps", action="store_true", help="time one full-size training step of each model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", action="append", default=[], metavar="PIECE",
                    help="leave this piece for another machine (repeatable), e.g. --skip minilm")
    args = ap.parse_args(argv)
    import keras
    import labkit
    import bq_stages as ST
    K = ST.knobs("smoke" if args.tiny else "full")
    if args.time_steps:
        time_steps(K)
        return 0
    labkit.seed_everything(args.seed)
    from bq_backend import enable_compile_cache
    enable_compile_cache()
    folder = labkit.stage_dir(ST.FOLDER, "smoke" if args.tiny else "full")
    st = ST.Stages(folder, log=log)
    log(f"Keras backend {keras.backend.backend()}; machine: {ST.machine_name()}; stage dir {folder}")
    if args.export:
        run_export(K, st, args.seed)
        return 0
    left = run_stages(K, st, args.budget_s, args.seed, skip=tuple(args.skip))
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    log(f"stage dir holds {size / 2**20:.1f} MiB")
    print("STAGES COMPLETE" if left == 0 else f"STAGES LEFT: {left}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
