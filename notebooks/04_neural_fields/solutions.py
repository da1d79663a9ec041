"""Solutions of the notebook's exercises (run by tests/test_solutions.py)."""
from __future__ import annotations

import math
from typing import List, Optional

import torch

import nf_grids
from nf_data import camera_rays
from nf_tracers import render_image


def hash_collision_rate(grid: nf_grids.HashGrid) -> List[float]:
    """Share of the corners of each level whose table row is shared with another corner of that level
    (0 for directly indexed levels). Enumerates every corner, so keep (res+1)^dim moderate."""
    rates = []
    for lvl, r in enumerate(grid.res.tolist()):
        if not grid.hashed[lvl]:
            rates.append(0.0)
            continue
        axes = [torch.arange(r + 1)] * grid.dim
        corners = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, grid.dim)
        rows = nf_grids.spatial_hash(corners, grid.table_size)
        counts = torch.bincount(rows, minlength=grid.table_size)
        rates.append(float((counts[rows] > 1).float().mean()))
    return rates


@torch.no_grad()
def depth_to_points(pipeline, c2w: torch.Tensor, size: int, fov_deg: float, lod: Optional[int] = None) -> torch.Tensor:
    """Render a depth map with the pipeline's tracer and back-project the pixels that hit a surface:
    point = origin + depth * direction (the same rays camera_rays makes, so depth is along the ray)."""
    out = render_image(pipeline, c2w, size, size, fov_deg, lod)
    o, d = camera_rays(c2w, size, size, fov_deg)
    depth = out["depth"].reshape(-1)
    hit = out["alpha"].reshape(-1) > 0.5
    return o[hit] + depth[hit, None] * d[hit]


class ProductTriplaneGrid(nf_grids.TriplaneGrid):
    """K-Planes-style aggregation: the three plane features are multiplied instead of summed, so any
    plane can switch a feature off (a zero there zeroes the product), which localises features in 3-D.
    Planes start near 1 so the product starts near a constant."""

    kind = "triplane-product"

    def __init__(self, dim: int = 3, resolutions=(32, 64, 128), features: int = 8, init_std: float = 0.1):
        super().__init__(dim, resolutions, features, init_std)
        with torch.no_grad():
            for p in self.planes:
                p.add_(1.0)

    def encode(self, points, lod):
        n, p = points.shape[0], len(self.planes_axes)
        x = points.clamp(-1, 1)
        g = torch.stack([x[:, list(a)] for a in self.planes_axes], 0).view(p, n, 1, 2)
        outs = []
        for i in range(lod + 1):
            f = torch.nn.functional.grid_sample(self.planes[i], g, mode="bilinear", padding_mode="border",
                                                align_corners=True)
            outs.append(f.prod(0).reshape(self.features, n).t())
        out = torch.cat(outs, dim=1)
        return torch.nn.functional.pad(out, (0, self.output_dim - out.shape[1]))
