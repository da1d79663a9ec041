"""Training loops and evaluation for the three pipelines (image, SDF, NeRF).

Every loop stops at whichever comes first, a step count or a wall-clock budget of *training* time
(evaluation pauses the clock; on a GPU the clock is read after a synchronize). The learning rate
decays from lr to lr/10 over the run's progress (max of step and time fractions), so a run cut by
its time budget still ends annealed. Adam uses Instant-NGP's settings: betas (0.9, 0.99), eps 1e-15.
"""
from __future__ import annotations

import math
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from nf_data import MultiViewDataset, Mesh, check_image_pair, psnr, ssim
from nf_tracers import render_image


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class TrainClock:
    """Counts training time only: pause() around evaluation."""

    def __init__(self, device):
        self.device, self.total, self._t0 = device, 0.0, None

    def start(self):
        sync(self.device)
        self._t0 = time.perf_counter()

    def pause(self) -> float:
        sync(self.device)
        self.total += time.perf_counter() - self._t0
        self._t0 = None
        return self.total

    def elapsed(self) -> float:
        return self.total + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)


def make_optimizer(field, lr: float = 1e-2, decoder_lr: Optional[float] = None, fused: bool = False):
    """Adam with Instant-NGP's betas and eps; fused=True runs one CUDA kernel for all parameters."""
    return torch.optim.Adam(field.param_groups(lr, decoder_lr), betas=(0.9, 0.99), eps=1e-15,
                            **({"fused": True} if fused else {}))


def _anneal(opt, base: List[float], frac: float) -> None:
    for g, lr in zip(opt.param_groups, base):
        g["lr"] = lr * 0.1 ** min(max(frac, 0.0), 1.0)


def _bar(total, desc, show):
    import labkit
    return labkit.progress(total=total, desc=desc) if show else None


# ------------------------------------------------------------------------------------------------ image
def pixel_coords(h: int, w: int, device="cpu") -> torch.Tensor:
    """Pixel centres in [-1, 1]^2, row-major (x along the width, y down the height)."""
    y, x = torch.meshgrid((torch.arange(h, device=device) + 0.5) / h * 2 - 1,
                          (torch.arange(w, device=device) + 0.5) / w * 2 - 1, indexing="ij")
    return torch.stack([x, y], -1).reshape(-1, 2)


@torch.no_grad()
def render_field_image(field, h: int, w: int, lod: Optional[int] = None, chunk: int = 2 ** 18) -> torch.Tensor:
    dev = next(field.parameters()).device
    xy = pixel_coords(h, w, dev)
    out = torch.cat([field(xy[s:s + chunk], lod) for s in range(0, xy.shape[0], chunk)])
    return out.reshape(h, w, 3)


def fit_image(field, image: torch.Tensor, max_steps: int, time_budget: float, batch: int = 2 ** 16,
              lr: float = 1e-2, eval_every: int = 50, target_psnr: Optional[float] = None,
              show_progress: bool = True, desc: str = "image fit") -> Dict:
    """Fit an ImageField to image (H, W, 3) in [0, 1]. Returns the PSNR curve against training time."""
    if image.ndim != 3 or image.shape[-1] != 3 or image.shape[0] * image.shape[1] == 0:
        raise ValueError(f"fit_image expects a non-empty RGB image (H, W, 3); got {tuple(image.shape)}")
    check_image_pair(image, image, "fit_image")
    dev = image.device
    h, w = image.shape[:2]
    xy, target = pixel_coords(h, w, dev), image.reshape(-1, 3)
    opt = make_optimizer(field, lr)
    base = [g["lr"] for g in opt.param_groups]
    clock = TrainClock(dev)
    hist = {"seconds": [0.0], "steps": [0], "psnr": [psnr(render_field_image(field, h, w), image)]}
    time_to_target = None
    bar = _bar(max_steps, desc, show_progress)
    step = 0
    clock.start()
    while step < max_steps and clock.elapsed() < time_budget:
        _anneal(opt, base, max(step / max_steps, clock.elapsed() / time_budget))
        idx = torch.randint(0, xy.shape[0], (min(batch, xy.shape[0]),), device=dev)
        loss = torch.mean((field(xy[idx]) - target[idx]) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if bar is not None:
            bar.update(1)
        if step % eval_every == 0 or step == max_steps:
            t = clock.pause()
            p = psnr(render_field_image(field, h, w), image)
            hist["seconds"].append(t); hist["steps"].append(step); hist["psnr"].append(p)
            if target_psnr is not None and time_to_target is None and p >= target_psnr:
                time_to_target = t
            clock.start()
    total = clock.pause()
    if bar is not None:
        bar.close()
    if hist["steps"][-1] != step:
        p = psnr(render_field_image(field, h, w), image)
        hist["seconds"].append(total); hist["steps"].append(step); hist["psnr"].append(p)
        if target_psnr is not None and time_to_target is None and p >= target_psnr:
            time_to_target = total
    hist.update(final_psnr=hist["psnr"][-1], train_seconds=total, steps_done=step,
                time_to_target=time_to_target)
    return hist


# ------------------------------------------------------------------------------------------------ SDF
def fit_sdf(field, points: torch.Tensor, sdf: torch.Tensor, max_steps: int, time_budget: float,
            batch: int = 2 ** 14, lr: float = 1e-2, lods: Optional[Sequence[int]] = None,
            show_progress: bool = True, desc: str = "SDF fit") -> Dict:
    """NGLOD training: the loss is the sum over LODs of the L2 error of each LOD's SDF.
    points (N, 3); sdf (N,) or (N, 1) (a column is flattened, so it cannot broadcast to (B, B))."""
    if sdf.ndim == 2 and sdf.shape[1] == 1:
        sdf = sdf[:, 0]
    if points.ndim != 2 or points.shape[1] != 3 or sdf.shape != (points.shape[0],) or points.shape[0] == 0:
        raise ValueError(f"fit_sdf expects points (N, 3) and their SDF (N,) or (N, 1), N > 0; "
                         f"got {tuple(points.shape)} and {tuple(sdf.shape)}")
    dev = points.device
    lods = list(range(field.num_lods)) if lods is None else list(lods)
    opt = make_optimizer(field, lr)
    base = [g["lr"] for g in opt.param_groups]
    clock = TrainClock(dev)
    losses, step = [], 0
    bar = _bar(max_steps, desc, show_progress)
    clock.start()
    while step < max_steps and clock.elapsed() < time_budget:
        _anneal(opt, base, max(step / max_steps, clock.elapsed() / time_budget))
        idx = torch.randint(0, points.shape[0], (min(batch, points.shape[0]),), device=dev)
        x, s = points[idx], sdf[idx]
        loss = sum(torch.mean((field(x, lod) - s) ** 2) for lod in lods)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item() / len(lods)) if step % 10 == 0 else None
        step += 1
        if bar is not None:
            bar.update(1)
    total = clock.pause()
    if bar is not None:
        bar.close()
    return {"loss": losses, "train_seconds": total, "steps_done": step}


@torch.no_grad()
def sdf_grid_values(field, res: int, lod: Optional[int] = None, chunk: int = 2 ** 17) -> np.ndarray:
    dev = next(field.parameters()).device
    side = torch.linspace(-1, 1, res, device=dev)
    pts = torch.stack(torch.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3)
    vals = torch.cat([field(pts[s:s + chunk], lod) for s in range(0, pts.shape[0], chunk)])
    return vals.reshape(res, res, res).float().cpu().numpy()


def extract_mesh(field, res: int = 64, lod: Optional[int] = None) -> Optional[Mesh]:
    """Marching cubes of the zero level set (scikit-image); None if the field has no zero crossing."""
    from skimage.measure import marching_cubes
    vol = sdf_grid_values(field, res, lod)
    if not (vol.min() < 0 < vol.max()):
        return None
    verts, faces, _, _ = marching_cubes(vol, level=0.0, spacing=(2 / (res - 1),) * 3)
    verts = verts - 1.0                                  # (i, j, k) -> (x, y, z) in [-1, 1]
    return Mesh(torch.tensor(verts.copy(), dtype=torch.float32), torch.tensor(faces.copy(), dtype=torch.int64))


def chamfer_distance(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> float:
    """Symmetric Chamfer distance: mean nearest-neighbour L2 distance a->b plus b->a."""
    def one_way(p, q):
        return torch.cat([torch.cdist(p[s:s + chunk], q, compute_mode="donot_use_mm_for_euclid_dist").min(1).values for s in range(0, p.shape[0], chunk)]).mean()
    return float(one_way(a, b) + one_way(b, a))


# ------------------------------------------------------------------------------------------------ NeRF
@torch.no_grad()
def evaluate_views(pipeline, ds: MultiViewDataset, lod: Optional[int] = None, views: Optional[Sequence[int]] = None,
                   chunk: int = 2 ** 15):
    """Mean per-view PSNR over views of ds, and the rendered images."""
    views = range(ds.poses.shape[0]) if views is None else views
    imgs, scores = [], []
    for v in views:
        img = render_image(pipeline, ds.poses[v], ds.width, ds.height, ds.fov_deg, lod, chunk)["rgb"]
        imgs.append(img)
        scores.append(psnr(img, ds.images[v]))
    return float(np.mean(scores)), imgs


def view_scores(imgs: Sequence[torch.Tensor], ds: MultiViewDataset, views: Optional[Sequence[int]] = None) -> Dict:
    """Full-image and object-only PSNR and SSIM, each the mean over views (object pixels: ds.masks)."""
    views = list(range(ds.poses.shape[0]) if views is None else views)
    rows = []
    for img, v in zip(imgs, views):
        m = ds.masks[v] if ds.masks is not None else None
        rows.append({"psnr": psnr(img, ds.images[v]), "ssim": ssim(img, ds.images[v]),
                     "psnr_object": psnr(img, ds.images[v], m) if m is not None else float("nan"),
                     "ssim_object": ssim(img, ds.images[v], m) if m is not None else float("nan")})
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def nerf_loss(pipeline, o, d, c, max_samples: Optional[int] = None):
    """One batch's loss: mean squared error over the rays that were fully evaluated; also the number of
    those rays and of the samples the rays needed (tensors: reading them would wait for the GPU)."""
    out = pipeline(o, d, jitter=True, max_samples=max_samples)
    err = ((out["rgb"] - c) ** 2).mean(-1)
    if "ray_ok" in out:
        ok = out["ray_ok"].to(err.dtype)
        used = ok.sum()
        return (err * ok).sum() / used.clamp_min(1.0), used, torch.as_tensor(out["samples"], device=o.device)
    return err.mean(), torch.tensor(float(o.shape[0]), device=o.device), torch.tensor(float(out["samples"]), device=o.device)


def fit_nerf(pipeline, train: MultiViewDataset, test: MultiViewDataset, max_steps: int, time_budget: float,
             batch_rays: int = 2 ** 12, lr: float = 1e-2, occupancy_every: int = 16, warmup: int = 64,
             eval_every: int = 200, eval_views: Sequence[int] = (0,), show_progress: bool = True,
             desc: str = "NeRF fit", step_callback=None, max_samples: Optional[int] = None,
             compile: bool = False, eval_every_s: Optional[float] = None, target_psnr: Optional[float] = None) -> Dict:
    """Train a radiance-field pipeline on the train views; the held-out PSNR curve (full images of
    `eval_views` of the test split) is measured every `eval_every` steps or `eval_every_s` seconds of
    training, while the training clock is paused.

    max_samples=None evaluates exactly the samples in occupied space (the eager, packed path; one
    host-device synchronization per step). max_samples=M uses a fixed buffer of M samples per step
    (Instant-NGP's fixed sample budget): nothing in a step waits for the GPU, shapes are fixed, and with
    compile=True the loss (sampling, field, compositing) and its backward run as torch.compile'd code.
    Compilation happens in a warm-up call before the clock starts (reported as compile_seconds); then
    five forward+backward passes of each version (after an untimed one) are timed on one batch
    (trial_step_ms) and the faster version trains. None of this changes a parameter. The occupancy
    grid is refreshed without synchronizing."""
    dev = train.images.device
    o, d, c = train.rays()
    field, tracer = pipeline.field, pipeline.tracer
    opt = make_optimizer(field, lr, fused=(dev.type == "cuda"))
    base = [g["lr"] for g in opt.param_groups]
    loss_fn = lambda oo, dd, cc: nerf_loss(pipeline, oo, dd, cc, max_samples)
    compile_seconds, compiled, trial_ms = 0.0, False, {}
    if compile:
        t0 = time.perf_counter()
        idx = torch.randint(0, o.shape[0], (batch_rays,), device=dev)
        try:
            compiled_fn = torch.compile(loss_fn)
            compiled_fn(o[idx], d[idx], c[idx])[0].backward()    # compiles forward and backward
        except Exception as exc:  # say so and train eager: a missing compiler must not lose the run
            print(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); training eager")
            compile_seconds = time.perf_counter() - t0
        else:
            sync(dev)
            compile_seconds = time.perf_counter() - t0
            for name, fn in (("compiled", compiled_fn), ("eager", loss_fn)):   # a short trial, no update
                fn(o[idx], d[idx], c[idx])[0].backward()            # untimed: first calls may still set up
                sync(dev)
                t1 = time.perf_counter()
                for _ in range(5):
                    fn(o[idx], d[idx], c[idx])[0].backward()
                sync(dev)
                trial_ms[name] = (time.perf_counter() - t1) / 5 * 1e3
            if trial_ms["compiled"] <= trial_ms["eager"]:
                loss_fn, compiled = compiled_fn, True
            else:
                print(f"the compiled step ({trial_ms['compiled']:.1f} ms) is slower than the eager one "
                      f"({trial_ms['eager']:.1f} ms) here; training eager")
        opt.zero_grad(set_to_none=True)
    clock = TrainClock(dev)
    hist = {"seconds": [], "steps": [], "psnr": [], "occupied": [], "samples_per_ray": [], "rays": []}
    bar = _bar(max_steps, desc, show_progress)
    step = 0
    zero = torch.zeros((), device=dev)
    rays_used, samples_sum, rays_drawn = zero.clone(), zero.clone(), 0
    last = (0.0, 0)                                                # samples and rays at the last evaluation
    next_eval_s = eval_every_s if eval_every_s else float("inf")
    time_to_target = None
    clock.start()
    while step < max_steps and clock.elapsed() < time_budget:
        _anneal(opt, base, max(step / max_steps, clock.elapsed() / time_budget))
        if tracer.occupancy is not None and step >= warmup and step % occupancy_every == 0:
            tracer.occupancy.update(field.density)
        idx = torch.randint(0, o.shape[0], (batch_rays,), device=dev)
        loss, used, samples = loss_fn(o[idx], d[idx], c[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rays_used += used.detach()
        samples_sum += samples.detach()
        rays_drawn += batch_rays
        step += 1
        if step_callback is not None:
            step_callback(step)
        if bar is not None:
            bar.update(1)
        if step % eval_every == 0 or clock.elapsed() >= next_eval_s:
            t = clock.pause()
            p, _ = evaluate_views(pipeline, test, views=eval_views)
            hist["seconds"].append(t); hist["steps"].append(step); hist["psnr"].append(p)
            hist["occupied"].append(tracer.occupancy.fraction() if tracer.occupancy is not None else 1.0)
            hist["samples_per_ray"].append((float(samples_sum) - last[0]) / max(rays_drawn - last[1], 1))
            last = (float(samples_sum), rays_drawn)
            hist["rays"].append(float(rays_used))
            if target_psnr is not None and time_to_target is None and p >= target_psnr:
                time_to_target = t
            while next_eval_s <= t:
                next_eval_s += eval_every_s
            clock.start()
    total = clock.pause()
    if bar is not None:
        bar.close()
    hist.update(train_seconds=total, steps_done=step, compile_seconds=compile_seconds, compiled=compiled,
                trial_step_ms=trial_ms,
                samples_per_ray_final=(float(samples_sum) - last[0]) / max(rays_drawn - last[1], 1)
                if rays_drawn > last[1] else (hist["samples_per_ray"] or [0.0])[-1], rays_used=float(rays_used),
                steps_per_s=step / max(total, 1e-9), rays_per_s=float(rays_used) / max(total, 1e-9),
                time_to_target=time_to_target)
    return hist
