"""Tracers: how a field becomes pixels.

* ``PixelTracer``     image fields: a pixel is the field at the pixel's centre.
* ``SphereTracer``    SDF fields: march each ray by the signed distance until |sdf| < eps; normals
                      by central differences; a shaded image, depth and normals come back. A ray
                      that starts inside the surface (sdf < 0 where it enters the box) hits at once,
                      at depth t_near (0 for a camera inside the box), flagged in "inside".
* ``VolumeTracer``    radiance fields: constant-step ray marching inside the [-1, 1]^3 box, samples in
                      empty cells of an ``OccupancyGrid`` are dropped before the field is queried
                      (the "packed" samples), then alpha compositing over a background colour.
                      With max_samples set, the packed samples go into a buffer of fixed size (no
                      host-device synchronization, fixed shapes for torch.compile); rays whose
                      samples did not fit are reported in "ray_ok" and left out of the loss.

Ray directions need not be unit vectors: every tracer normalises them, so t and depth are distances.
* ``OccupancyGrid``   Instant-NGP's acceleration structure: an EMA of density per cell, refreshed
                      every few steps at one random point per cell; cells under the threshold are
                      pruned, so training and rendering skip empty space.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn


def unit_directions(d: torch.Tensor) -> torch.Tensor:
    """Directions scaled to unit length (a zero vector stays zero and misses the box)."""
    return d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def check_rays(o: torch.Tensor, d: torch.Tensor) -> None:
    if o.ndim != 2 or o.shape[-1] != 3 or o.shape != d.shape:
        raise ValueError(f"rays need origins and directions of the same shape (N, 3); got {tuple(o.shape)} "
                         f"and {tuple(d.shape)}")


def ray_aabb(o: torch.Tensor, d: torch.Tensor, lo: float = -1.0, hi: float = 1.0):
    """Entry and exit distances of rays through the box [lo, hi]^3 (t_far < t_near: a miss)."""
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0, t1 = (lo - o) * inv, (hi - o) * inv
    t_near = torch.minimum(t0, t1).max(-1).values.clamp_min(0.0)
    t_far = torch.maximum(t0, t1).min(-1).values
    return t_near, t_far


class PixelTracer:
    """Image 'tracer': evaluates the field at 2-D coordinates."""

    def __call__(self, field, xy: torch.Tensor, lod: Optional[int] = None):
        return {"rgb": field(xy, lod)}


class SphereTracer:
    def __init__(self, steps: int = 64, eps: float = 1e-3, step_scale: float = 0.9,
                 light=(0.4, 0.8, 0.45), normal_eps: float = 2e-3):
        self.steps, self.eps, self.step_scale, self.normal_eps = steps, eps, step_scale, normal_eps
        light = torch.tensor(light)
        self.light = light / light.norm()

    @torch.no_grad()
    def __call__(self, field, o: torch.Tensor, d: torch.Tensor, lod: Optional[int] = None):
        check_rays(o, d)
        d = unit_directions(d)
        t_near, t_far = ray_aabb(o, d)
        t = t_near.clone()
        alive = t_far > t_near
        hit = torch.zeros_like(alive)
        inside = torch.zeros_like(alive)
        if alive.any():                       # a ray that starts inside the surface hits where it starts
            idx = alive.nonzero().squeeze(1)
            inside[idx] = field(o[idx] + t[idx, None] * d[idx], lod) < 0
            hit |= inside
            alive &= ~inside
        for _ in range(self.steps):
            idx = alive.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            s = field(o[idx] + t[idx, None] * d[idx], lod)
            t[idx] = torch.maximum(t[idx] + self.step_scale * s, t_near[idx])   # never behind the start
            done = s.abs() < self.eps
            hit[idx[done]] = True
            alive[idx[done]] = False
            alive[idx] &= ~(t[idx] > t_far[idx])
        x = o + t[:, None] * d
        normal = torch.zeros_like(o)
        if hit.any():
            normal[hit] = self.normals(field, x[hit], lod)
        light = self.light.to(o.device)
        shade = (normal * light).sum(-1).clamp_min(0)[:, None]
        base = 0.5 + 0.5 * normal                                  # normal-coloured clay
        rgb = torch.where(hit[:, None], base * (0.3 + 0.7 * shade), torch.ones_like(o))
        depth = torch.where(hit, t, torch.zeros_like(t))
        return {"rgb": rgb, "depth": depth, "normal": normal, "alpha": hit.float(), "x": x, "hit": hit,
                "inside": inside}

    def normals(self, field, x: torch.Tensor, lod: Optional[int] = None) -> torch.Tensor:
        h = self.normal_eps
        eye = torch.eye(3, device=x.device) * h
        pts = torch.cat([x + e for e in eye] + [x - e for e in eye])
        s = field(pts, lod).view(6, -1)
        g = torch.stack([s[i] - s[i + 3] for i in range(3)], -1)
        return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class OccupancyGrid(nn.Module):
    def __init__(self, res: int = 64, min_optical_thickness: float = 0.01, decay: float = 0.95,
                 step: float = 2 * math.sqrt(3) / 128):
        """A cell stays occupied while its density times the marching step (its optical
        thickness) is above min_optical_thickness, or above the grid's mean if that is lower."""
        super().__init__()
        self.res, self.decay = res, decay
        self.min_optical_thickness, self.step = min_optical_thickness, step   # a VolumeTracer sets step
        self.register_buffer("density", torch.zeros(res ** 3))
        self.register_buffer("mask", torch.ones(res ** 3, dtype=torch.bool))   # all occupied until updated

    @property
    def threshold(self) -> float:
        """The density under which a cell is pruned."""
        return self.min_optical_thickness / self.step

    def cell_index(self, x: torch.Tensor) -> torch.Tensor:
        c = ((x + 1) * 0.5 * self.res).floor().long().clamp(0, self.res - 1)
        return c[:, 0] + self.res * (c[:, 1] + self.res * c[:, 2])

    def occupied(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask[self.cell_index(x)]

    def cell_centers(self) -> torch.Tensor:
        r = self.res
        i = torch.arange(r ** 3, device=self.mask.device)
        c = torch.stack([i % r, (i // r) % r, i // (r * r)], -1).float()
        return (c + 0.5) / r * 2 - 1

    @torch.no_grad()
    def update(self, density_fn, chunk: int = 2 ** 18) -> torch.Tensor:
        """Refresh the moving maximum at one random point per cell and re-threshold. Returns the
        occupied share as a 0-d tensor: nothing here waits for the GPU, so a training loop can call
        it without stalling. A cell whose new density is NaN or infinite keeps its density and its
        state (one bad update cannot empty the grid)."""
        r = self.res
        i = torch.arange(r ** 3, device=self.mask.device)
        c = torch.stack([i % r, (i // r) % r, i // (r * r)], -1).float()
        x = (c + torch.rand_like(c)) / r * 2 - 1
        new = torch.cat([density_fn(x[s:s + chunk]).float().reshape(-1) for s in range(0, x.shape[0], chunk)])
        ok = torch.isfinite(new)
        self.density.copy_(torch.where(ok, torch.maximum(self.density * self.decay, new), self.density))
        thr = torch.clamp(self.density.mean(), max=self.threshold)
        self.mask.copy_(torch.where(ok, self.density > thr, self.mask))
        return self.mask.float().mean()

    def fraction(self) -> float:
        return self.mask.float().mean().item()


class VolumeTracer(nn.Module):
    def __init__(self, num_samples: int = 128, occupancy: Optional[OccupancyGrid] = None,
                 background=(1.0, 1.0, 1.0)):
        super().__init__()
        self.num_samples = num_samples
        self.occupancy = occupancy
        self.step = 2 * math.sqrt(3) / num_samples                  # the box's diagonal in num_samples steps
        if occupancy is not None:
            occupancy.step = self.step
        self.register_buffer("background", torch.tensor(background, dtype=torch.float32))

    def forward(self, field, o: torch.Tensor, d: torch.Tensor, lod: Optional[int] = None,
                jitter: bool = False, normals: bool = False, max_samples: Optional[int] = None):
        check_rays(o, d)
        d = unit_directions(d)
        n, s = o.shape[0], self.num_samples
        t_near, t_far = ray_aabb(o, d)
        off = torch.rand(n, 1, device=o.device) if jitter else torch.full((n, 1), 0.5, device=o.device)
        t = t_near[:, None] + (torch.arange(s, device=o.device)[None] + off) * self.step   # (n, s)
        valid = t < t_far[:, None]
        x = o[:, None] + t[..., None] * d[:, None]                    # (n, s, 3)
        if self.occupancy is not None:
            valid = valid & self.occupancy.occupied(x.reshape(-1, 3)).view(n, s)
        if max_samples is None:
            sigma, rgb, count, ray_ok = self._packed(field, x, d, valid, lod)
        else:
            sigma, rgb, count, ray_ok = self._fixed(field, x, d, valid, lod, max_samples)
        alpha = 1.0 - torch.exp(-sigma * self.step)
        trans = torch.cumprod(torch.cat([torch.ones(n, 1, device=o.device), 1.0 - alpha + 1e-10], 1), 1)[:, :-1]
        w = alpha * trans
        acc = w.sum(1)
        color = (w[..., None] * rgb).sum(1) + (1.0 - acc)[:, None] * self.background
        depth = (w * t).sum(1) / acc.clamp_min(1e-6)
        out = {"rgb": color, "depth": depth, "alpha": acc, "samples": count}
        if ray_ok is not None:
            out["ray_ok"] = ray_ok
        if normals:
            out["normal"] = self.normals(field, o + depth[:, None] * d, acc > 0.5, lod)
        return out

    @staticmethod
    def _packed(field, x, d, valid, lod):
        """Evaluate exactly the valid samples (their number decides shapes: one synchronization)."""
        n, s = valid.shape
        ray_i, samp_i = valid.nonzero(as_tuple=True)
        sigma = x.new_zeros(n, s)
        rgb = x.new_zeros(n, s, 3)
        if ray_i.numel():
            sg, cl = field(x[ray_i, samp_i], d[ray_i], lod)
            sigma = sigma.index_put((ray_i, samp_i), sg.float())
            rgb = rgb.index_put((ray_i, samp_i), cl.float())
        return sigma, rgb, int(ray_i.numel()), None

    @staticmethod
    def _fixed(field, x, d, valid, lod, max_samples: int):
        """Evaluate the valid samples through a buffer of max_samples slots, in ray order. Slot k holds
        the k-th valid sample; slots left over hold a padding sample; samples beyond the buffer are
        dropped and their rays marked not ok. Every shape is fixed, nothing synchronizes."""
        n, s = valid.shape
        flat = valid.reshape(-1)
        pos = torch.cumsum(flat.int(), 0) - 1                           # slot of each valid sample
        keep = flat & (pos < max_samples)
        slot = torch.where(keep, pos, torch.full_like(pos, max_samples)).long()
        src = torch.full((max_samples + 1,), n * s, dtype=torch.long, device=x.device)
        src = src.scatter(0, slot, torch.arange(n * s, device=x.device))[:max_samples]  # sample per slot
        xs = torch.cat([x.reshape(-1, 3), x.new_zeros(1, 3)])[src]      # index n*s: the padding sample
        ds = torch.cat([d, d.new_zeros(1, 3)])[torch.div(src, s, rounding_mode="floor")]
        sg, cl = field(xs, ds, lod)
        sigma = x.new_zeros(n * s + 1).scatter(0, src, sg.float())[:-1].view(n, s)
        rgb = x.new_zeros(n * s + 1, 3).scatter(0, src[:, None].expand(-1, 3), cl.float())[:-1].view(n, s, 3)
        ray_ok = torch.cumsum(valid.sum(1), 0) <= max_samples          # every sample of the ray fitted
        return sigma, rgb, flat.sum(), ray_ok

    @torch.no_grad()
    def normals(self, field, x: torch.Tensor, where: torch.Tensor, lod=None, h: float = 0.01):
        """Minus the normalized density gradient (central differences) at the expected surface."""
        normal = torch.zeros_like(x)
        if where.any():
            p = x[where]
            eye = torch.eye(3, device=x.device) * h
            dens = field.density(torch.cat([p + e for e in eye] + [p - e for e in eye]), lod).view(6, -1)
            g = torch.stack([dens[i] - dens[i + 3] for i in range(3)], -1)
            normal[where] = -g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return normal


@torch.no_grad()
def render_image(pipeline, c2w: torch.Tensor, width: int, height: int, fov_deg: float,
                 lod: Optional[int] = None, chunk: int = 2 ** 15, normals: bool = False):
    """Render one view of a 3-D pipeline in chunks: dict of (H, W, ...) tensors."""
    from nf_data import camera_rays
    o, d = camera_rays(c2w, width, height, fov_deg)
    parts = []
    for s in range(0, o.shape[0], chunk):
        kw = {"normals": normals} if isinstance(pipeline.tracer, VolumeTracer) else {}
        parts.append(pipeline(o[s:s + chunk], d[s:s + chunk], lod=lod, **kw))
    out = {}
    for k in ("rgb", "depth", "alpha", "normal"):
        if k in parts[0]:
            v = torch.cat([p[k] for p in parts])
            out[k] = v.reshape(height, width, *v.shape[1:])
    return out
