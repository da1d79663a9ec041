"""A CPU-sized check of the full recipe's learning curve: validation Dice against optimiser steps.

    python mo_probe.py --mm 3 --roi 32 --size full --steps 600 --eval-every 100 --out probe.json

Trains one UNet the way the notebook's full profile does (SynthSeg-style synthetic subjects, the fast
recipe's optimiser, DiceCE on random patches), but at a coarser spacing and for a limited number of steps,
and prints at every evaluation the mean GM/WM Dice (and the threshold baseline) on
- `val`: synthetic validation subjects (other deformations, images drawn once from their labels): the
  split any choice made from these curves is based on;
- `dev`: real-intensity subjects (the template's T1 warped, seeds 5000+, never the notebook's test seeds);
- `real_t1`: the template's real T1, the notebook's test image, printed for the record only.
Used to decide, on a CPU, whether the generator, network and training length can reach the goal; the
numbers are for the scale and machine printed with them, not the full profile's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1] / "shared"))


def sets(mm: float, n_train: int, n_val: int, n_dev: int, root: Path):
    import mo_data
    tpl = mo_data.resample_template(mo_data.load_mni152(), mm)
    synth = mo_data.write_subjects(tpl, root / f"synth_{mm:g}mm", n_train + n_val, seed=0, kind="synth")
    dev = mo_data.write_subjects(tpl, root / f"dev_{mm:g}mm", n_dev, seed=5000, kind="real", prefix="dev")
    real = mo_data.write_template_item(tpl, root / f"real_{mm:g}mm")
    return synth[:n_train], {"val": synth[n_train:], "dev": dev, "real_t1": [real]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mm", type=float, default=3.0, help="spacing of the files and of training")
    ap.add_argument("--roi", type=int, default=32)
    ap.add_argument("--size", default="full", choices=("tiny", "full"))
    ap.add_argument("--optimizer", default=None, help="default: the fast recipe's (sgd 0.1)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--n-train", type=int, default=24)
    ap.add_argument("--n-val", type=int, default=2)
    ap.add_argument("--n-dev", type=int, default=1)
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-root", default="/tmp/mo_probe")
    ap.add_argument("--p-t1-like", type=float, default=None, help="mo_transforms.P_T1_LIKE for this run")
    ap.add_argument("--norm", default=None, help="mo_train.UNET_NORM for this run (batch, instance)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import numpy as np
    import torch
    import mo_train
    from monai.losses import DiceCELoss
    import mo_transforms as T
    torch.set_num_threads(a.threads)
    if a.norm:
        mo_train.UNET_NORM = a.norm
    if a.p_t1_like is not None:
        T.P_T1_LIKE = a.p_t1_like
    torch.manual_seed(0)
    train, evals = sets(a.mm, a.n_train, a.n_val, a.n_dev, Path(a.data_root))
    # the full profile's recipe at this scale; cosine schedule over the probe's steps, as fit() does over epochs
    cfg = mo_train.Config(recipe="fast", net="unet", size=a.size, pixdim=a.mm, roi=a.roi, num_samples=a.num_samples,
                          batch_size=a.batch_size, cache_workers=1, synth=True, optimizer=a.optimizer, lr=a.lr)
    loader, _ = mo_train.make_loaders(cfg, train, [], "cpu")
    eval_ds = {k: [T.val_transforms(a.mm)(it) for it in v] for k, v in evals.items()}
    baseline = {k: float(np.mean(mo_train.baseline_dice(v))) for k, v in eval_ds.items()}
    net = mo_train.make_net("unet", a.size, a.roi)
    opt = mo_train.make_optimizer(cfg, net)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.steps)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    print(f"{mo_train.n_params(net) / 1e6:.2f} M parameters, {cfg.resolved_optimizer()} lr {cfg.resolved_lr()}, "
          f"{a.mm} mm, roi {a.roi}, {a.batch_size}x{a.num_samples} patches/step; threshold baseline {baseline}",
          flush=True)
    curve, step, t0, losses = [], 0, time.perf_counter(), []
    while step < a.steps:
        for batch in loader:
            net.train()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss))
            step += 1
            if step % a.eval_every == 0 or step == a.steps:
                row = {"step": step, "seconds": round(time.perf_counter() - t0, 1),
                       "loss": round(float(np.mean(losses[-a.eval_every:])), 4)}
                for k, ds in eval_ds.items():
                    row[k] = round(float(np.mean(mo_train.evaluate(net, ds, cfg, "cpu"))), 4)
                curve.append(row)
                print(json.dumps(row), flush=True)
            if step >= a.steps:
                break
    out = {"args": vars(a), "cpu_count": os.cpu_count(), "baseline": baseline, "curve": curve,
           "n_params": mo_train.n_params(net)}
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
