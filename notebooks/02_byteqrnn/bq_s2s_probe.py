"""Probe the full-profile seq2seq recipe: the full-size model, batch and learning-rate schedule (decay over the full
run's steps), trained from scratch for its first `--stop-after` steps (default: all) on the piece's training pairs
less `--n-val` held back; per-step loss, teacher-forced loss and beam-search byte accuracy on those held-back pairs
beside copying the corrupted input (the piece's beam-test inputs are never used). Appends records to `--out`
(default results/seq2seq_recipe_probe.json).

One recipe (a CPU probe of the first steps):

    KERAS_BACKEND=jax XLA_FLAGS='--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1' \\
        timeout 900 taskset -c 1 python bq_s2s_probe.py --stop-after 400 --warmup 0 --label no_warmup

A sweep of RECIPES (one GPU, all 4000 steps, the recipes as concurrent processes; picks nothing: read the lines).
On a JAX-GPU machine, from the repo root with the wheels and data/fortunes_en carried (copy the committed file to
--out first so the sweep's records join the earlier ones; bring it back as results/seq2seq_recipe_probe.json):

    source ci/gpu_image_env.sh .whl && cd notebooks/02_byteqrnn && cp results/seq2seq_recipe_probe.json $OUT/ &&
        python3 bq_s2s_probe.py --sweep all --window 100 --deadline-s 330 --out $OUT/seq2seq_recipe_probe.json

A finished stage's seq2seq.json as a record (its losses as windows; its beam scores are on the beam-test pairs):

    python bq_s2s_probe.py --from-stage build/stages/seq2seq.json --label stage_gpu --note "one H200, ..."
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "shared"))
OUT = HERE / "results" / "seq2seq_recipe_probe.json"
PRECISIONS = ("default", "high", "highest")   # JAX's jax_default_matmul_precision legacy values (jax/_src/config.py)
# name: settings. (a) is the full profile's recipe (warmup 200, peak 2e-3, LayerNorm on the encoder memory); (b) is
# (a) without that LayerNorm: the model that collapsed on one H200 (2026-12-01, records below); (c) is (a) without
# warmup; (d) is (a) with float32 matmuls at full precision (JAX's default on GPU may use TF32); (e) is (a) with
# another batch order; (f) is (a) at half the peak learning rate.
RECIPES = {
    "a_w200_lr2e-3": dict(warmup=200, lr=2e-3),
    "b_w200_lr2e-3_nonorm": dict(warmup=200, lr=2e-3, mem_norm=0),
    "c_w0_lr2e-3": dict(warmup=0, lr=2e-3),
    "d_w200_lr2e-3_highest": dict(warmup=200, lr=2e-3, precision="highest"),
    "e_w200_lr2e-3_order1": dict(warmup=200, lr=2e-3, order_seed=1),
    "f_w200_lr1e-3": dict(warmup=200, lr=1e-3),
}
ABOUT = ('Written by bq_s2s_probe.py: the full-profile seq2seq piece (ByteQRNN encoder + 3-layer merged-attention '
         'decoder, width 128, quantization-aware, batch 64, Adam clipnorm 1.0, the 4000-step schedule decaying from '
         'lr_peak to 5% of it after warmup_steps of linear warmup) trained from scratch for steps_run steps, Keras on '
         'JAX; machine says where (the CPU records: a 2-core CPU, one thread each; sweep_* records: one H200, the '
         'recipes as concurrent processes). mem_norm: a LayerNorm on the encoder memory before the cross-attention '
         'keys/values (absent from a record: off, the model before 2026-12-01 06:00 UTC); widest_activation_range: the '
         "widest range any 8-bit activation quantizer tracked at the end (its rounding step is that / 255). Pairs: "
         'seed 0; batches: a fresh permutation per pass, order_seed (0 where absent). The piece\'s training pairs less '
         'the last 256, which are held back and scored: teacher-forced cross-entropy per target byte '
         '(heldback_teacher_forced_ce; a unigram byte predictor from the training targets: heldback_unigram_ce) and '
         "beam-4 byte accuracy on 64 of them beside copying the corrupted input; the piece's beam-test inputs were "
         "never used. train_loss_per_step_mean: per-step losses recovered from Keras' running mean (one fit epoch "
         "over all steps), averaged over windows, on Keras' scale (per-byte cross-entropy times "
         'training_targets_non_pad_fraction; unigram_predictor_train_loss_on_the_keras_scale is the unigram predictor '
         'on that scale). Records with source "stage" are a full stage run (all training pairs, no held-back scores; '
         "its beam scores are on the 500 beam-test pairs). Runs are single seeds.")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", help="the record's label (one recipe or --from-stage)")
    ap.add_argument("--sweep", help=f"comma-separated names of RECIPES, or 'all' ({', '.join(RECIPES)})")
    ap.add_argument("--from-stage", type=Path, help="a stage's seq2seq.json to add as a record (no training)")
    ap.add_argument("--stop-after", type=int, default=None, help="train only the first N steps (default: all)")
    ap.add_argument("--warmup", type=int, default=None, help="warmup steps (default: the recipe's, K['s2s_warmup'])")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's, K['s2s_lr'])")
    ap.add_argument("--precision", choices=PRECISIONS, default=None,
                    help="JAX's default float32 matmul precision (JAX backend only; default: JAX's own)")
    ap.add_argument("--mem-norm", type=int, choices=(0, 1), default=None,
                    help="LayerNorm on the encoder memory (default: the config's, on); 0 is the model that collapsed")
    ap.add_argument("--n-val", type=int, default=256, help="training pairs held back for scoring")
    ap.add_argument("--n-beam", type=int, default=64, help="held-back pairs decoded by beam search")
    ap.add_argument("--seed", type=int, default=0, help="pairs, weights and dropout")
    ap.add_argument("--order-seed", type=int, default=None, help="batch order (default: --seed)")
    ap.add_argument("--window", type=int, default=50, help="steps per loss window")
    ap.add_argument("--profile", choices=("full", "smoke"), default="full")
    ap.add_argument("--out", type=Path, default=OUT, help="the JSON file records are appended to")
    ap.add_argument("--note", default="", help="appended to the record's machine (how it ran)")
    ap.add_argument("--parallel", type=int, default=0, help="sweep: recipes at a time (0: all)")
    ap.add_argument("--deadline-s", type=float, default=330.0,
                    help="sweep: stop unfinished recipes after this many seconds and write what finished")
    args = ap.parse_args(argv)
    modes = sum(x is not None for x in (args.label if not args.from_stage else None, args.sweep, args.from_stage))
    if modes != 1 or (args.from_stage and not args.label):
        ap.error("give exactly one of --label (one recipe), --sweep NAMES, or --from-stage PATH with --label")
    if args.sweep:
        names = list(RECIPES) if args.sweep == "all" else [s.strip() for s in args.sweep.split(",") if s.strip()]
        bad = [s for s in names if s not in RECIPES]
        if bad or not names:
            ap.error(f"unknown recipe(s) {bad or args.sweep!r}; known: {', '.join(RECIPES)}")
        args.sweep = names
    for name in ("stop_after", "window", "n_beam"):
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if args.n_val < args.n_beam:
        ap.error(f"--n-val ({args.n_val}) must be at least --n-beam ({args.n_beam})")
    if args.warmup is not None and args.warmup < 0 or args.lr is not None and not args.lr > 0:
        ap.error(f"--warmup must be >= 0 and --lr > 0 (got {args.warmup}, {args.lr})")
    if args.parallel < 0 or args.deadline_s <= 0:
        ap.error("--parallel must be >= 0 and --deadline-s > 0")
    return args


def windows(running, width: int) -> dict:
    """Per-step losses (recovered from Keras' running mean) averaged over consecutive windows of `width` steps."""
    from bq_recipe_probe import per_step
    steps = per_step(running)
    return {f"{a + 1}-{min(a + width, len(steps))}": round(float(steps[a:a + width].mean()), 4)
            for a in range(0, len(steps), width)}


def append_records(out: Path, records: list, extra: dict = None) -> dict:
    """Add records to `out` (replacing any with the same label), keep the others, refresh 'about'."""
    out = Path(out)
    data = json.loads(out.read_text()) if out.exists() else {"runs": []}
    data["about"] = ABOUT
    data.update(extra or {})
    labels = {r["label"] for r in records}
    data["runs"] = [r for r in data["runs"] if r["label"] not in labels] + list(records)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(out)
    return data


def summary(rec: dict) -> str:
    """One line per record: the recipe, where the loss went, held-back CE and beam accuracy against baselines."""
    w = rec["train_loss_per_step_mean"]
    keys = list(w)
    low = min(keys, key=w.get)
    if rec.get("source") == "stage":
        scores = (f"beam-test byte acc float {rec['byte_acc_float_beam_on_beam_test']} uint8 "
                  f"{rec['byte_acc_uint8_beam_on_beam_test']} (copy {rec['byte_acc_copy_input_on_beam_test']})")
    else:
        scores = (f"held-back CE {rec['heldback_teacher_forced_ce']} (unigram {rec['heldback_unigram_ce']}) | beam "
                  f"byte acc {rec['byte_acc_beam']} (copy {rec['byte_acc_copy_input']}) | {rec['train_s']} s")
    return (f"{rec['label']}: warmup {rec['warmup_steps']} lr {rec['lr_peak']:g} precision "
            f"{rec.get('matmul_precision') or 'default'} order {rec.get('order_seed', 0)} | loss {keys[0]} "
            f"{w[keys[0]]:.3f}, lowest {low} {w[low]:.3f}, {keys[-1]} {w[keys[-1]]:.3f} | {scores}")


def stage_record(path: Path, label: str, note: str, width: int) -> dict:
    """A finished stage's seq2seq.json (settings, metrics with Keras' running-mean losses) as a probe record."""
    st = json.loads(Path(path).read_text())
    s, m, cfg = st["settings"], st["metrics"], st["settings"]["cfg"]
    return {"label": label, "source": "stage", "warmup_steps": s["warmup"], "lr_peak": s["lr"],
            "schedule_steps": s["steps"], "steps_run": len(m["losses"]), "batch": s["batch"], "order_seed": s["seed"],
            "src_len": cfg["src_len"], "tgt_len": cfg["tgt_len"], "dim": cfg["dim"], "dec_layers": cfg["dec_layers"],
            "encoder_layers": cfg["encoder"]["layers"], "quantize": cfg["quantize"], "clipnorm": 1.0,
            "mem_norm": cfg.get("mem_norm", False), "n_pairs": s["n_pairs"],
            "train_loss_per_step_mean": windows(m["losses"], width),
            "beam_test_pairs": s["beam_inputs"], "byte_acc_float_beam_on_beam_test": round(m["byte_acc_float_beam"], 4),
            "byte_acc_uint8_beam_on_beam_test": round(m["byte_acc_uint8_beam"], 4),
            "byte_acc_copy_input_on_beam_test": round(m["byte_acc_copy_input"], 4),
            "beam_top1_agreement_uint8": round(m["beam_top1_agreement_uint8"], 4),
            **({"widest_activation_range": round(m["widest_activation_range"], 2)}
               if "widest_activation_range" in m else {}),
            "machine": f"{st.get('machine')}{', ' + note if note else ''}"}


def probe(args) -> dict:
    """Train one recipe from scratch and score it on the held-back pairs; returns the record (and appends it)."""
    import numpy as np
    import keras
    if args.precision is not None:
        if keras.backend.backend() != "jax":
            raise SystemExit(f"--precision sets JAX's matmul precision; the Keras backend is {keras.backend.backend()}")
        import jax
        jax.config.update("jax_default_matmul_precision", args.precision)   # before anything is traced
    import bq_seq2seq as S2
    import bq_stages as ST
    from bq_layers import PAD_ID, VOCAB_SIZE
    from labkit.env import machine_info

    K = ST.knobs(args.profile)
    warmup = K["s2s_warmup"] if args.warmup is None else args.warmup
    lr = K["s2s_lr"] if args.lr is None else args.lr
    order_seed = args.seed if args.order_seed is None else args.order_seed
    stop = args.stop_after or K["s2s_steps"]
    if stop > K["s2s_steps"] or warmup >= K["s2s_steps"]:
        raise SystemExit(f"--stop-after ({stop}) and --warmup ({warmup}) must be below the schedule's "
                         f"{K['s2s_steps']} steps")
    (src, dec_in, tgt), _, cfg = ST.seq2seq_data(K, args.seed)   # the beam-test pairs are not used
    if args.mem_norm is not None:
        import dataclasses
        cfg = dataclasses.replace(cfg, mem_norm=bool(args.mem_norm))
    n = len(src) - args.n_val
    vsrc, vdec, vtgt = src[n:], dec_in[n:], tgt[n:]
    keras.utils.set_random_seed(args.seed)
    model = S2.build_seq2seq(cfg)
    t0 = time.perf_counter()
    running = S2.train_seq2seq(model, src[:n], dec_in[:n], tgt[:n], K["s2s_steps"], K["batch"], lr=lr,
                               seed=order_seed, warmup_steps=warmup, stop_after=stop)
    train_s = time.perf_counter() - t0
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
    win = windows(running, args.window)
    mi = machine_info("keras")
    where = mi["gpu"] or f"{mi['cpu']}"
    rec = {
        "label": args.label, "warmup_steps": warmup, "lr_peak": lr, "schedule_steps": K["s2s_steps"],
        "steps_run": len(running), "batch": K["batch"], "order_seed": order_seed,
        "matmul_precision": args.precision, "src_len": cfg.src_len, "tgt_len": cfg.tgt_len,
        "dim": cfg.dim, "dec_layers": cfg.dec_layers, "encoder_layers": cfg.encoder.layers,
        "quantize": cfg.quantize, "clipnorm": 1.0, "mem_norm": cfg.mem_norm,
        "widest_activation_range": round(S2.widest_quant_range(model), 2),
        "train_loss_per_step_mean": win, "train_loss_per_step_min_window": min(win.values()),
        "heldback_teacher_forced_ce": round(val_ce, 4), "heldback_unigram_ce": round(unigram_ce, 4),
        "heldback_n": int(args.n_val), "beam_n": int(len(bsrc)), "beam": 4,
        "byte_acc_beam": round(S2.byte_accuracy(best, btgt), 4),
        "byte_acc_copy_input": round(S2.byte_accuracy([list(r[r >= 3]) for r in bsrc], btgt), 4),
        "train_s": round(train_s, 1), "s_per_step": round(train_s / len(running), 4), "beam_s": round(beam_s, 1),
        "machine": f"{where}, Keras {keras.__version__} on {keras.backend.backend()}"
                   f"{', ' + args.note if args.note else ''}",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    # Keras' loss divides by all target positions (PAD ones weigh 0): a per-byte CE times the non-PAD fraction
    frac = float((tgt[:n] != PAD_ID).mean())
    p = counts / counts.sum()
    extra = {"training_targets_non_pad_fraction": round(frac, 4),
             "unigram_predictor_train_loss_on_the_keras_scale": round(float(-(p * np.log(p)).sum()) * frac, 4)}
    if args.profile == "full" and args.n_val == 256:   # the file-level numbers describe the full-size split
        append_records(args.out, [rec], extra)
    else:
        append_records(args.out, [rec])
    return rec


def sweep_argv(args, name: str, part: Path) -> list:
    """The command line that runs one recipe of the sweep as its own process (so each sets its own precision)."""
    r = RECIPES[name]
    argv = [sys.executable, str(Path(__file__).resolve()), "--label", f"sweep_{name}", "--warmup", str(r["warmup"]),
            "--lr", repr(r["lr"]), "--order-seed", str(r.get("order_seed", args.seed)), "--seed", str(args.seed),
            "--n-val", str(args.n_val), "--n-beam", str(args.n_beam), "--window", str(args.window),
            "--profile", args.profile, "--out", str(part),
            "--note", f"one of {len(args.sweep)} recipes of bq_s2s_probe.py --sweep, each its own process, "
                      f"{min(args.parallel or len(args.sweep), len(args.sweep))} at a time on this machine"
                      f"{'; ' + args.note if args.note else ''}"]
    if args.stop_after:
        argv += ["--stop-after", str(args.stop_after)]
    if r.get("precision"):
        argv += ["--precision", r["precision"]]
    if "mem_norm" in r:
        argv += ["--mem-norm", str(r["mem_norm"])]
    return argv


def run_sweep(args) -> list:
    """Run the recipes as child processes (each its own JAX runtime, GPU memory not preallocated so they share one
    GPU), at most --parallel at a time; stop those unfinished at --deadline-s; append what finished to --out; print
    one line per recipe. Each child's record and log are kept beside --out in <name>.parts/."""
    parts = args.out.parent / (args.out.stem + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    queue, running, done, t0 = list(args.sweep), {}, {}, time.monotonic()
    limit = args.parallel or len(queue)
    while queue or running:
        while queue and len(running) < limit:
            name = queue.pop(0)
            log = open(parts / f"{name}.log", "w")
            running[name] = (subprocess.Popen(sweep_argv(args, name, parts / f"{name}.json"), stdout=log,
                                              stderr=subprocess.STDOUT, env=env, cwd=str(HERE)), log)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                done[name] = proc.returncode
                del running[name]
        if time.monotonic() - t0 > args.deadline_s:
            for name, (proc, log) in running.items():
                proc.kill()           # our own child, by its handle
                proc.wait()
                log.close()
                done[name] = "stopped at the deadline"
            for name in queue:
                done[name] = "not started before the deadline"
            running, queue = {}, []
            break
        time.sleep(1.0)
    records = []
    for name in args.sweep:
        part = parts / f"{name}.json"
        recs = [r for r in json.loads(part.read_text())["runs"] if r["label"] == f"sweep_{name}"] \
            if part.exists() else []
        if done.get(name) == 0 and recs:
            records.append(recs[-1])
            print(summary(recs[-1]), flush=True)
        else:
            print(f"sweep_{name}: no record ({done.get(name)}; see {parts / (name + '.log')})", flush=True)
    if records:
        extra = {k: v for k, v in json.loads((parts / f"{args.sweep[0]}.json").read_text()).items()
                 if k not in ("about", "runs")} if (parts / f"{args.sweep[0]}.json").exists() else {}
        append_records(args.out, records, extra)
    print(f"sweep: {len(records)} of {len(args.sweep)} recipes in {time.monotonic() - t0:.0f} s -> {args.out}")
    return records


def main(argv=None):
    args = parse(argv)
    if args.sweep:
        return run_sweep(args)
    if args.from_stage:
        if not args.from_stage.exists():
            raise SystemExit(f"--from-stage: no file {args.from_stage}")
        rec = stage_record(args.from_stage, args.label, args.note, args.window)
        append_records(args.out, [rec])
        print(summary(rec))
        return rec
    rec = probe(args)
    print(json.dumps(rec, indent=1))
    print(summary(rec))
    return rec


if __name__ == "__main__":
    main()
