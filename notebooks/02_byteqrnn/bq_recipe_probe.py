"""Probe the start of a full-profile classifier run on a CPU: the full-size model, batch and learning-rate schedule
(decay over the full run's steps), trained for only its first `--stop-after` steps; loss and the VALIDATION split's
AUC (the test split is never loaded). Appends one record to results/transformer_recipe_probe.json.

    KERAS_BACKEND=jax XLA_FLAGS='--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1' \\
        python bq_recipe_probe.py --name ByteTransformer --stop-after 300 --warmup 0 --label old
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
OUT = HERE / "results" / "transformer_recipe_probe.json"


def per_step(running_mean):
    """Keras logs the running mean of the loss over the epoch; the loss of each step from it."""
    import numpy as np
    m = np.asarray(running_mean, np.float64)
    s = m * np.arange(1, len(m) + 1)
    return np.diff(np.concatenate([[0.0], s]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="ByteTransformer", help="a classifier of bq_stages.classifier_configs")
    ap.add_argument("--stop-after", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=None, help="warmup steps (default: the recipe's for this encoder)")
    ap.add_argument("--no-quantize", action="store_true", help="float training (no fake quantization): an ablation")
    ap.add_argument("--label", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np
    import keras
    import bq_data
    import bq_models as M
    import bq_stages as ST
    import bq_train as T
    from labkit.env import machine_info
    from sklearn.metrics import roc_auc_score

    K = ST.knobs("full")
    cfg = ST.classifier_configs(K)[args.name]
    cfg = cfg.with_(quantize=False) if args.no_quantize else cfg
    warmup = ST.warmup_steps(K, cfg) if args.warmup is None else args.warmup
    splits = bq_data.make_splits(bq_data.load_dataset("fortunes"), seed=args.seed, limits=K["limits"])
    xtr, ytr = T.encode_split(splits.train, K["max_len"])
    xva, yva = T.encode_split(splits.val, K["max_len"])
    keras.utils.set_random_seed(args.seed)
    model = M.build_classifier(cfg)
    t0 = time.perf_counter()
    running = T.train_classifier(model, xtr, ytr, K["steps"], K["batch"], K["lr"], seed=args.seed, desc=args.name,
                                 warmup_steps=warmup, stop_after=args.stop_after)
    train_s = time.perf_counter() - t0
    steps = per_step(running)
    val = T.predict_logits(model, xva, batch_size=K["batch"])
    prior = float(ytr.mean())
    # how much of the pooled vector (the head's input) differs between inputs: near 0 = the head sees one vector
    h, mask = model.byte_encoder(xva[:256], training=False)
    pooled = np.asarray(keras.ops.convert_to_numpy(model.pool(h, mask, training=False)), np.float64)
    pooled_frac = float((pooled - pooled.mean(0)).var() / pooled.var())
    windows = [(a, min(a + 50, len(steps))) for a in range(0, len(steps), 50)]
    rec = {
        "label": args.label, "name": args.name, "encoder": cfg.encoder, "warmup_steps": warmup, "lr": K["lr"],
        "schedule_steps": K["steps"], "steps_run": len(steps), "batch": K["batch"], "max_len": K["max_len"],
        "width": cfg.state, "layers": cfg.layers, "quantize": cfg.quantize,
        "train_loss_per_step_mean": {f"{a + 1}-{b}": round(float(steps[a:b].mean()), 4) for a, b in windows},
        "train_loss_running_mean_last": round(float(running[-1]), 4),
        "prior_entropy": round(float(-(prior * np.log(prior) + (1 - prior) * np.log(1 - prior))), 4),
        "val_auc": round(float(roc_auc_score(yva[:, 0], val)), 4), "val_logit_std": round(float(val.std()), 4),
        "val_logit_mean": round(float(val.mean()), 4), "val_n": int(len(yva)),
        "pooled_between_input_variance_fraction_val256": round(pooled_frac, 4),
        "train_s": round(train_s, 1), "s_per_step": round(train_s / len(steps), 2),
        "machine": f"{machine_info('keras')['cpu']}, Keras {keras.__version__} on {keras.backend.backend()}, one "
                   f"thread (XLA intra-op 1, taskset one core), the host shared with other jobs",
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(rec, indent=1))
    # the same batches scored by the class prior (a constant logit): the loss a model that learned nothing reaches
    yb = ytr[T.batch_order(len(xtr), args.stop_after, K["batch"], args.seed), 0]
    const = -(yb * np.log(prior) + (1 - yb) * np.log(1 - prior))
    baseline = {f"{a + 1}-{b}": round(float(const[a * K["batch"]:b * K["batch"]].mean()), 4) for a, b in windows}
    OUT.parent.mkdir(exist_ok=True)
    data = json.loads(OUT.read_text()) if OUT.exists() else {"runs": []}
    data[f"prior_loss_on_the_same_batches_seed{args.seed}_{args.stop_after}steps"] = baseline
    data["runs"] = [r for r in data["runs"] if r["label"] != args.label] + [rec]
    OUT.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
