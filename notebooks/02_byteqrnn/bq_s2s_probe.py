"""Probe the start of the full-profile seq2seq piece on a CPU: the full-size model, batch and learning-rate schedule
(decay over the full run's steps), trained for only its first `--stop-after` steps on the piece's training pairs
less `--n-val` held back; per-step loss, teacher-forced loss and beam-search byte accuracy on those held-back pairs
beside copying the corrupted input (the piece's beam-test inputs are never used). Appends one record to
results/seq2seq_recipe_probe.json.

    KERAS_BACKEND=jax XLA_FLAGS='--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1' \\
        timeout 900 taskset -c 1 python bq_s2s_probe.py --stop-after 400 --warmup 0 --label no_warmup
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "shared"))
OUT = HERE / "results" / "seq2seq_recipe_probe.json"
ABOUT = ('Written by bq_s2s_probe.py: the first N steps of the full-profile seq2seq piece (ByteQRNN encoder + 3-layer '
         'merged-attention decoder, width 128, quantization-aware, batch 64, Adam clipnorm 1.0, the 4000-step schedule'
         ' decaying from 2e-3 to 5% of it; the same batches in the same order for every run: seed 0) on a 2-core CPU, '
         "one thread, Keras on JAX. The piece's training pairs less the last 256, which are held back and scored: "
         'teacher-forced cross-entropy per target byte (heldback_teacher_forced_ce; a unigram byte predictor from the '
         'training targets: heldback_unigram_ce) and beam-4 byte accuracy on 64 of them beside copying the corrupted '
         "input; the piece's beam-test inputs were never used. train_loss_per_step_mean: per-step losses recovered "
         "from Keras' running mean, averaged over 50-step windows, on Keras' scale (per-byte cross-entropy times "
         'training_targets_non_pad_fraction; unigram_predictor_train_loss_on_the_keras_scale is the unigram predictor '
         'on that scale). Reference: the first full run (one H200, 2026-12-01, no warmup) logged per-step losses ~2.24'
         ' at steps 50-150, ~2.7 by step 400, 2.61-2.64 to step 4000, and beam byte accuracy 0.087 against 0.508 for '
         'copying. Runs are single seeds.')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stop-after", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=None, help="warmup steps (default: the recipe's, K['s2s_warmup'])")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's, 2 * K['lr'])")
    ap.add_argument("--n-val", type=int, default=256, help="training pairs held back for scoring")
    ap.add_argument("--n-beam", type=int, default=64, help="held-back pairs decoded by beam search")
    ap.add_argument("--label", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np
    import keras
    import bq_seq2seq as S2
    import bq_stages as ST
    from bq_layers import PAD_ID, VOCAB_SIZE
    from bq_recipe_probe import per_step
    from labkit.env import machine_info

    K = ST.knobs("full")
    warmup = K["s2s_warmup"] if args.warmup is None else args.warmup
    lr = 2 * K["lr"] if args.lr is None else args.lr
    (src, dec_in, tgt), _, cfg = ST.seq2seq_data(K, args.seed)   # the beam-test pairs are not used
    n = len(src) - args.n_val
    vsrc, vdec, vtgt = src[n:], dec_in[n:], tgt[n:]
    keras.utils.set_random_seed(args.seed)
    model = S2.build_seq2seq(cfg)
    t0 = time.perf_counter()
    running = S2.train_seq2seq(model, src[:n], dec_in[:n], tgt[:n], K["s2s_steps"], K["batch"], lr=lr,
                               seed=args.seed, warmup_steps=warmup, stop_after=args.stop_after)
    train_s = time.perf_counter() - t0
    steps = per_step(running)
    # teacher-forced loss per target byte on the held-back pairs, and a unigram predictor's (training byte counts)
    w = (vtgt != PAD_ID)
    logits = keras.ops.convert_to_numpy(model((vsrc, vdec), training=False)).astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    val_ce = float(-np.take_along_axis(logp, vtgt[..., None], -1)[..., 0][w].mean())
    counts = np.bincount(tgt[:n][tgt[:n] != PAD_ID], minlength=VOCAB_SIZE) + 1.0
    unigram_ce = float(-np.log(counts / counts.sum())[vtgt[w]].mean())
    t1 = time.perf_counter()
    bsrc, btgt = vsrc[: args.n_beam], vtgt[: args.n_beam]
    best, _ = S2.beam_search(model, bsrc, beam=4)
    beam_s = time.perf_counter() - t1
    windows = [(a, min(a + 50, len(steps))) for a in range(0, len(steps), 50)]
    rec = {
        "label": args.label, "warmup_steps": warmup, "lr_peak": lr, "schedule_steps": K["s2s_steps"],
        "steps_run": len(steps), "batch": K["batch"], "src_len": cfg.src_len, "tgt_len": cfg.tgt_len,
        "dim": cfg.dim, "dec_layers": cfg.dec_layers, "encoder_layers": cfg.encoder.layers,
        "quantize": cfg.quantize, "clipnorm": 1.0,
        "train_loss_per_step_mean": {f"{a + 1}-{b}": round(float(steps[a:b].mean()), 4) for a, b in windows},
        "train_loss_per_step_min_window": round(float(min(steps[a:b].mean() for a, b in windows)), 4),
        "heldback_teacher_forced_ce": round(val_ce, 4), "heldback_unigram_ce": round(unigram_ce, 4),
        "heldback_n": int(args.n_val), "beam_n": int(len(bsrc)), "beam": 4,
        "byte_acc_beam": round(S2.byte_accuracy(best, btgt), 4),
        "byte_acc_copy_input": round(S2.byte_accuracy([list(r[r >= 3]) for r in bsrc], btgt), 4),
        "train_s": round(train_s, 1), "s_per_step": round(train_s / len(steps), 3), "beam_s": round(beam_s, 1),
        "machine": f"{machine_info('keras')['cpu']}, Keras {keras.__version__} on {keras.backend.backend()}, one "
                   f"thread (XLA intra-op 1, taskset one core), the host shared with other jobs",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(rec, indent=1))
    OUT.parent.mkdir(exist_ok=True)
    data = json.loads(OUT.read_text()) if OUT.exists() else {"runs": []}
    data["about"] = ABOUT
    # Keras' loss divides by all target positions (PAD ones weigh 0): a per-byte CE times the non-PAD fraction
    frac = float((tgt[:n] != PAD_ID).mean())
    data["training_targets_non_pad_fraction"] = round(frac, 4)
    data["unigram_predictor_train_loss_on_the_keras_scale"] = round(
        float(-(counts / counts.sum() * np.log(counts / counts.sum())).sum()) * frac, 4)
    data["runs"] = [r for r in data["runs"] if r["label"] != args.label] + [rec]
    OUT.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
