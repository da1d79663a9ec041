"""Training for the brain-tissue task: networks, the "regular" and the "fast" recipe, validation.

regular: Dataset + DataLoader (transforms on CPU worker processes, every epoch from the files), fp32, Adam.
fast:    CacheDataset (deterministic transforms computed once) + ThreadDataLoader, random transforms on the
         GPU (EnsureTyped(device=cuda) before them), automatic mixed precision, SGD with momentum
         (MONAI's fast_training_tutorial; REFERENCE section 5).
Both use DiceCE loss. Validation is sliding-window inference over whole volumes with per-class Dice, with the
no-learning threshold baseline (mo_data.threshold_baseline) on the same volumes beside it.
synth=True trains on images drawn anew from label maps at every use (SynthSeg-style, mo_transforms.RandSynthd).
`fit` also runs under torch.distributed (DDP) when a process group is initialised (see mo_ddp.py).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

NUM_CLASSES = 3
UNET_NORM = "batch"     # the UNet's normalisation layers (MONAI Norm name: "batch" or "instance")


@dataclass
class Config:
    recipe: str = "fast"             # "regular" | "fast"
    net: str = "unet"                # "unet" | "unetr"
    size: str = "tiny"               # "tiny" (CPU smoke) | "full"
    pixdim: float = 3.0              # mm, the spacing the transforms resample to
    roi: int = 32                    # training patch and sliding-window size (voxels per side)
    num_samples: int = 2             # random patches per volume per step
    batch_size: int = 2              # volumes per step
    epochs: int = 2
    val_every: int = 1
    lr: Optional[float] = None       # None: the recipe's default
    optimizer: Optional[str] = None  # None: the recipe's default ("adam" regular, "sgd" fast)
    amp: Optional[bool] = None       # None: the recipe's default (fp32 regular, AMP fp16 fast); CUDA only
    channels_last: bool = True       # fast recipe on CUDA: NDHWC (channels_last_3d) network and batches
    num_workers: int = 2             # DataLoader workers for the regular recipe
    cache_workers: int = 2
    sw_batch_size: int = 4
    overlap: float = 0.25
    dice_target: float = 0.85        # for "time to target"
    stop_at_target: bool = False     # stop after the first validation with mean Dice >= dice_target
    time_budget_s: Optional[float] = None   # stop after the first epoch that ends past this many training seconds
    max_steps_per_epoch: Optional[int] = None
    seed: int = 0
    synth: bool = False              # train on images synthesised from the items' "gen" label maps
    sync_bn: bool = False            # under DDP on CUDA: BatchNorm statistics over all processes' patches

    def resolved_optimizer(self) -> str:
        return self.optimizer or ("adam" if self.recipe == "regular" else "sgd")

    def resolved_amp(self) -> bool:
        return self.amp if self.amp is not None else self.recipe == "fast"

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-3 if self.resolved_optimizer() in ("adam", "adamw") else 0.1


@dataclass
class History:
    epoch_seconds: List[float] = field(default_factory=list)
    loss: List[float] = field(default_factory=list)
    val_epochs: List[int] = field(default_factory=list)
    val_dice: List[List[float]] = field(default_factory=list)   # per class (gm, wm)
    val_baseline: List[float] = field(default_factory=list)     # per class: the threshold rule on the same volumes
    wall: List[float] = field(default_factory=list)             # seconds since start of training at each val
    setup_seconds: float = 0.0                                   # dataset construction (cache fill)
    world_size: int = 1

    def mean_dice(self) -> List[float]:
        return [float(np.mean(d)) for d in self.val_dice]

    def time_to_target(self, target: float, include_setup: bool = False) -> Optional[float]:
        """Training seconds until the first validation at or above `target` (plus the dataset set-up, e.g.
        the cache fill, with include_setup); None if never reached. Validation time is included."""
        for t, d in zip(self.wall, self.mean_dice()):
            if d >= target:
                return t + (self.setup_seconds if include_setup else 0.0)
        return None

    def epochs_to_target(self, target: float) -> Optional[int]:
        for e, d in zip(self.val_epochs, self.mean_dice()):
            if d >= target:
                return e
        return None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "History":
        return cls(**json.loads(text))


def make_net(kind: str = "unet", size: str = "tiny", roi: int = 32, num_classes: int = NUM_CLASSES) -> torch.nn.Module:
    """3-D UNet or UNETR. 'full' sizes follow MONAI's examples (UNet 16..256, UNETR feature 16, hidden 768,
    12 heads); 'tiny' is a few-thousand-parameter version for the CPU smoke run."""
    from monai.networks.nets import UNETR, UNet
    if kind == "unet":
        if size == "full":
            return UNet(3, 1, num_classes, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
                        num_res_units=2, norm=UNET_NORM)
        return UNet(3, 1, num_classes, channels=(8, 16, 32), strides=(2, 2), num_res_units=1, norm=UNET_NORM)
    if kind == "unetr":
        if roi % 16:
            raise ValueError(f"UNETR needs a patch size divisible by 16, got roi={roi}")
        if size == "full":
            return UNETR(1, num_classes, img_size=(roi,) * 3, feature_size=16, hidden_size=768, mlp_dim=3072,
                         num_heads=12, norm_name="instance", res_block=True)
        return UNETR(1, num_classes, img_size=(roi,) * 3, feature_size=8, hidden_size=96, mlp_dim=192,
                     num_heads=4, norm_name="instance", res_block=True)
    raise ValueError(f"net={kind!r}; use 'unet' or 'unetr'")


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _dist():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def make_loaders(cfg: Config, train_items: Sequence[dict], val_items: Sequence[dict], device: str):
    """The recipe's training loader and a cached validation dataset."""
    from monai.data import CacheDataset, DataLoader, Dataset, ThreadDataLoader, partition_dataset
    import mo_transforms as T
    dist, rank, world = _dist()
    items = list(train_items)
    if cfg.synth:       # the images are drawn from the label maps: the cached part is "gen" and "label" only
        items = [{"gen": it["gen"], "label": it["label"]} for it in items]
    if world > 1:   # each rank trains on its own shard of the subjects
        items = partition_dataset(items, num_partitions=world, shuffle=True, seed=cfg.seed, even_divisible=True)[rank]
    if cfg.recipe == "fast":
        tfm = T.train_transforms(cfg.pixdim, cfg.roi, cfg.num_samples,
                                 device=device if device.startswith("cuda") else None, synth=cfg.synth)
        tfm.set_random_state(seed=cfg.seed + rank)     # MONAI's random transforms carry their own RNG
        ds = CacheDataset(items, tfm, cache_rate=1.0, num_workers=cfg.cache_workers, progress=False,
                          copy_cache=False)
        loader = ThreadDataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=0)
    elif cfg.recipe == "regular":
        tfm = T.train_transforms(cfg.pixdim, cfg.roi, cfg.num_samples, device=None, synth=cfg.synth)
        tfm.set_random_state(seed=cfg.seed + rank)     # worker processes are re-seeded from torch's seed
        ds = Dataset(items, tfm)
        loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                            pin_memory=device.startswith("cuda"), persistent_workers=cfg.num_workers > 0)
    else:
        raise ValueError(f"recipe={cfg.recipe!r}; use 'regular' or 'fast'")
    val_ds = CacheDataset(list(val_items), T.val_transforms(cfg.pixdim), cache_rate=1.0,
                          num_workers=cfg.cache_workers, progress=False) if val_items else None
    return loader, val_ds


def make_optimizer(cfg: Config, net: torch.nn.Module):
    name, lr = cfg.resolved_optimizer(), cfg.resolved_lr()
    if name == "sgd":
        return torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-5)
    if name == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5)
    return torch.optim.Adam(net.parameters(), lr=lr)


def predict(net: torch.nn.Module, image: torch.Tensor, roi: int, device: str, sw_batch_size: int = 4,
            overlap: float = 0.25, amp: bool = False) -> torch.Tensor:
    """Sliding-window inference of one channel-first volume -> label volume (uint8, spatial only)."""
    from monai.inferers import sliding_window_inference
    net.eval()
    x = torch.as_tensor(image)[None].to(device)
    with torch.no_grad(), torch.autocast("cuda", enabled=amp and device.startswith("cuda")):
        logits = sliding_window_inference(x, (roi,) * 3, sw_batch_size, net, overlap=overlap, mode="gaussian")
    return logits.argmax(1)[0].to(torch.uint8).cpu()


def dice_per_class(pred: torch.Tensor, label: torch.Tensor, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Dice of each foreground class (1..num_classes-1) between two label volumes; 1.0 when both are empty."""
    pred = torch.as_tensor(pred).reshape(-1).long()
    label = torch.as_tensor(label).reshape(-1).long()
    out = []
    for c in range(1, num_classes):
        p, g = pred == c, label == c
        denom = int(p.sum() + g.sum())
        out.append(1.0 if denom == 0 else 2.0 * int((p & g).sum()) / denom)
    return np.array(out)


def baseline_dice(ds) -> np.ndarray:
    """Mean per-class Dice (gm, wm) of the no-learning threshold rule over a dataset of cached volumes."""
    import mo_data
    return np.mean([dice_per_class(torch.from_numpy(mo_data.threshold_baseline(np.asarray(d["image"][0].cpu()))),
                                   d["label"][0].cpu()) for d in ds], axis=0)


def evaluate(net: torch.nn.Module, val_ds, cfg: Config, device: str) -> np.ndarray:
    """Mean per-class Dice (gm, wm) over a validation dataset of cached volumes."""
    scores = []
    for item in val_ds:
        pred = predict(net, item["image"], cfg.roi, device, cfg.sw_batch_size, cfg.overlap, cfg.resolved_amp())
        scores.append(dice_per_class(pred, item["label"][0]))
    return np.mean(scores, axis=0)


def fit(cfg: Config, train_items: Sequence[dict], val_items: Sequence[dict], device: str = "cpu",
        net: Optional[torch.nn.Module] = None, progress: Optional[Callable] = None,
        checkpoint: Optional[Path] = None) -> tuple:
    """Train with the recipe in `cfg`; return (net, History). Works single-process or under DDP
    (only rank 0 validates and writes the checkpoint)."""
    import mo_data
    dist, rank, world = _dist()
    mo_data.check_items(list(train_items) + list(val_items), NUM_CLASSES)   # bad label maps fail here, by name
    torch.manual_seed(cfg.seed + rank)
    t0 = time.perf_counter()
    loader, val_ds = make_loaders(cfg, train_items, val_items if rank == 0 else [], device)
    hist = History(setup_seconds=time.perf_counter() - t0, world_size=world)
    if val_ds is not None:
        hist.val_baseline = [float(v) for v in baseline_dice(val_ds)]
    net = net if net is not None else make_net(cfg.net, cfg.size, cfg.roi)
    net, mem_fmt, use_amp, scaler, loss_fn = step_parts(cfg, net, device)
    if cfg.sync_bn and world > 1:
        if not device.startswith("cuda"):   # torch's SyncBatchNorm runs on CUDA only
            raise ValueError("sync_bn needs CUDA devices (torch.nn.SyncBatchNorm); this run is on " + device)
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    model = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)
    opt = make_optimizer(cfg, net)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    train_start = time.perf_counter()
    epochs = range(cfg.epochs)
    if progress is not None and rank == 0:
        epochs = progress(epochs, desc=f"{cfg.recipe} {cfg.net}")
    for epoch in epochs:
        model.train()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        e0 = time.perf_counter()
        loss_sum, n_steps = torch.zeros((), device=device), 0   # summed on the device: no host sync per step
        for step, batch in enumerate(loader):
            if cfg.max_steps_per_epoch and step >= cfg.max_steps_per_epoch:
                break
            loss = train_step(model, batch["image"], batch["label"], opt, scaler, loss_fn, device, use_amp, mem_fmt)
            loss_sum += loss.detach().float()
            n_steps += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        hist.epoch_seconds.append(time.perf_counter() - e0)
        hist.loss.append(float(loss_sum) / n_steps if n_steps else math.nan)
        sched.step()
        if rank == 0 and val_ds is not None and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            d = evaluate(net, val_ds, cfg, device)
            hist.val_epochs.append(epoch + 1)
            hist.val_dice.append([float(v) for v in d])
            hist.wall.append(time.perf_counter() - train_start)
        reached = (cfg.stop_at_target and bool(hist.val_dice) and hist.val_epochs[-1] == epoch + 1
                   and np.mean(hist.val_dice[-1]) >= cfg.dice_target)
        over = cfg.time_budget_s is not None and time.perf_counter() - train_start > cfg.time_budget_s
        stop = torch.tensor(int(rank == 0 and (reached or over)), device=device if device.startswith("cuda") else "cpu")
        if world > 1:
            dist.broadcast(stop, 0)     # every rank stops after the same epoch
        if int(stop):
            break
    if rank == 0 and checkpoint is not None:
        save_checkpoint(net, cfg, checkpoint)
    return net, hist


def step_parts(cfg: Config, net: torch.nn.Module, device: str) -> tuple:
    """What a recipe's training step runs with: (net on `device` in the recipe's memory format, that format, AMP
    on/off, the GradScaler, the DiceCE loss). Sets cuDNN's benchmark flag for the recipe on CUDA (the fast recipe
    lets cuDNN pick the fastest kernels for its fixed patch size)."""
    from monai.losses import DiceCELoss
    cuda = device.startswith("cuda")
    mem_fmt = torch.channels_last_3d if cfg.channels_last and cfg.recipe == "fast" and cuda else torch.contiguous_format
    use_amp = cfg.resolved_amp() and cuda
    if cuda:
        torch.backends.cudnn.benchmark = cfg.recipe == "fast"
    return (net.to(device).to(memory_format=mem_fmt), mem_fmt, use_amp, torch.amp.GradScaler("cuda", enabled=use_amp),
            DiceCELoss(to_onehot_y=True, softmax=True))


def train_step(model, x, y, opt, scaler, loss_fn, device: str, use_amp: bool, mem_fmt) -> torch.Tensor:
    """One optimiser step on a batch (image x, label y); returns the loss (on the device, not synced)."""
    x = x.to(device, non_blocking=True).contiguous(memory_format=mem_fmt)
    y = y.to(device, non_blocking=True)
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", enabled=use_amp):
        loss = loss_fn(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss


def save_checkpoint(net: torch.nn.Module, cfg: Config, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp_" + path.name)
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "config": asdict(cfg)}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, map_location: str = "cpu"):
    ck = torch.load(path, map_location=map_location, weights_only=False)
    cfg = Config(**ck["config"])
    net = make_net(cfg.net, cfg.size, cfg.roi)
    net.load_state_dict(ck["state_dict"])
    return net.eval(), cfg


def measure_epoch_time(cfg: Config, train_items, device: str, epochs: int = 2) -> Dict[str, float]:
    """Seconds per training epoch of a recipe (after one warm-up epoch), with no validation."""
    c = Config(**{**asdict(cfg), "epochs": epochs + 1, "val_every": 10 ** 6})
    _, h = fit(c, train_items, [], device)
    return {"setup_seconds": h.setup_seconds, "first_epoch_seconds": h.epoch_seconds[0],
            "epoch_seconds": float(np.median(h.epoch_seconds[1:])) if len(h.epoch_seconds) > 1 else h.epoch_seconds[0]}


def matched_dice_speedup(fast: "History", regular: "History") -> Optional[dict]:
    """Time of each recipe (cache fill included) to the highest validation mean Dice that both reached, and
    their ratio: a speed-up that exists even when a time budget stops the regular recipe short of the fixed
    target. None when either run has no validation."""
    if not fast.val_dice or not regular.val_dice:
        return None
    level = min(max(fast.mean_dice()), max(regular.mean_dice()))
    t_fast, t_reg = fast.time_to_target(level, True), regular.time_to_target(level, True)
    return {"val_mean_dice": level, "fast_s": t_fast, "regular_s": t_reg, "speedup": t_reg / t_fast}


def recipe_differences(regular: Config, fast: Config) -> Dict[str, str]:
    """What differs between two configs besides the data pipeline, in words (precision, optimiser, layout)."""
    def describe(c: Config) -> str:
        return (f"{'AMP (fp16 autocast + GradScaler)' if c.resolved_amp() else 'fp32'}, "
                f"{c.resolved_optimizer()} lr {c.resolved_lr():g}"
                + (", channels_last_3d, cudnn.benchmark" if c.recipe == "fast" and c.channels_last else ""))
    return {"regular": describe(regular), "fast": describe(fast)}


def race(cfgs: Dict[str, Config], train_items, val_items, device: str, target: float,
         max_epochs: int, time_budget_s: Optional[float] = None) -> Dict[str, dict]:
    """Train each config (in order, one process) until its validation mean GM/WM Dice reaches `target`, or
    `max_epochs` have run, or (optionally) `time_budget_s` training seconds have passed, validating every
    epoch. Time to target counts the dataset set-up (cache fill), the training epochs and the validations
    before the target was reached, as MONAI's fast-training guide measures it (spleen: 13,063 s -> 120 s to
    Dice 0.94 on an A100). A run that stops short gives `elapsed_s`: a lower bound of its time to target."""
    out = {}
    for name, cfg in cfgs.items():
        c = Config(**{**asdict(cfg), "epochs": max_epochs, "val_every": 1, "dice_target": target,
                      "stop_at_target": True, "time_budget_s": time_budget_s})
        torch.manual_seed(c.seed)
        _, h = fit(c, train_items, val_items, device)
        ttt = h.time_to_target(target, include_setup=True)
        out[name] = {"time_to_target_s": ttt, "epochs_to_target": h.epochs_to_target(target),
                     "stopped_by": "target" if ttt is not None else (
                         "max_epochs" if len(h.epoch_seconds) >= max_epochs else "time_budget"),
                     "elapsed_s": h.setup_seconds + (h.wall[-1] if h.wall else 0.0), "setup_s": h.setup_seconds,
                     "epoch_s": float(np.median(h.epoch_seconds[1:] or h.epoch_seconds)),
                     "epochs_run": len(h.epoch_seconds), "final_val_dice": h.val_dice[-1],
                     "val_threshold_baseline": h.val_baseline, "history": asdict(h)}
    return out


def race_speedups(res: Dict[str, dict]) -> dict:
    """Regular over fast, from race() results of both: per epoch, and in time to the target when both reached
    it; when only one did, the other's elapsed time bounds the speed-up (regular stopped short: from below; fast
    stopped short: from above)."""
    reg, fast = res["regular"], res["fast"]
    rt, ft = reg["time_to_target_s"], fast["time_to_target_s"]
    out = {"fast_vs_regular_epoch_speedup": reg["epoch_s"] / fast["epoch_s"],
           "fast_vs_regular_time_to_dice_speedup": rt / ft if rt and ft else None}
    if ft and not rt:
        out["fast_vs_regular_time_to_dice_speedup_lower_bound"] = reg["elapsed_s"] / ft
    if rt and not ft:
        out["fast_vs_regular_time_to_dice_speedup_upper_bound"] = rt / fast["elapsed_s"]
    return out
