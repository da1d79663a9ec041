"""Neural fields = a feature grid + a small decoder, and the Pipeline that pairs a field with a tracer.

As in Wisp, a field does not know how it is rendered: ``Pipeline(field, tracer)`` does. Any grid of
nf_grids can sit inside any field, so the notebook swaps grids without touching anything else.

* ``ImageField``     2-D points -> RGB (sigmoid).
* ``SDFField``       3-D points -> signed distance, per LOD (NGLOD trains every LOD at once).
* ``RadianceField``  3-D points (+ view directions) -> density (truncated exp) and RGB
                     (Instant-NGP's split: a density MLP whose extra outputs feed a colour MLP that
                     also sees the view direction in degree-2 spherical harmonics).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from nf_grids import FeatureGrid


class MLP(nn.Sequential):
    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64, layers: int = 2):
        mods, d = [], in_dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
            d = hidden
        mods.append(nn.Linear(d, out_dim))
        super().__init__(*mods)


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x) whose gradient is exp(min(x, 15)), so a large density cannot blow up a step
    (Instant-NGP's truncated exponential). Written with plain tensor ops (no autograd.Function), so
    torch.compile traces it into the training step: xc equals min(x, 15) but has gradient 1."""
    xc = x - (x - 15.0).clamp_min(0.0).detach()
    ex = torch.exp(xc)
    return torch.exp(x).detach() + ex - ex.detach()


def sh_deg2(d: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics up to degree 2 of unit directions (N, 3) -> (N, 9)."""
    x, y, z = d.unbind(-1)
    return torch.stack([
        torch.full_like(x, 0.28209479), -0.48860251 * y, 0.48860251 * z, -0.48860251 * x,
        1.09254843 * x * y, -1.09254843 * y * z, 0.31539157 * (2 * z * z - x * x - y * y),
        -1.09254843 * x * z, 0.54627421 * (x * x - y * y)], -1)


class NeuralField(nn.Module):
    kind = "field"

    def __init__(self, grid: FeatureGrid):
        super().__init__()
        self.grid = grid

    @property
    def num_lods(self) -> int:
        return self.grid.num_lods

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def param_groups(self, lr: float, decoder_lr: Optional[float] = None, weight_decay: float = 1e-6):
        """Grid and decoder as separate optimizer groups (weight decay on the decoder only)."""
        grid = list(self.grid.parameters())
        ids = {id(p) for p in grid}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": grid, "lr": lr, "weight_decay": 0.0},
                {"params": rest, "lr": decoder_lr or lr, "weight_decay": weight_decay}]


class ImageField(NeuralField):
    kind = "image"

    def __init__(self, grid: FeatureGrid, hidden: int = 64, layers: int = 2):
        super().__init__(grid)
        self.decoder = MLP(grid.output_dim, 3, hidden, layers)

    def forward(self, xy: torch.Tensor, lod: Optional[int] = None) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.grid(xy, lod)))


class SDFField(NeuralField):
    kind = "sdf"

    def __init__(self, grid: FeatureGrid, hidden: int = 128, layers: int = 1):
        super().__init__(grid)
        self.decoder = MLP(grid.output_dim, 1, hidden, layers)

    def forward(self, x: torch.Tensor, lod: Optional[int] = None) -> torch.Tensor:
        return self.decoder(self.grid(x, lod))[:, 0]


class RadianceField(NeuralField):
    kind = "radiance"

    def __init__(self, grid: FeatureGrid, hidden: int = 64, geo_features: int = 15):
        super().__init__(grid)
        self.density_net = MLP(grid.output_dim, 1 + geo_features, hidden, 1)
        self.color_net = MLP(geo_features + 9, 3, hidden, 2)

    def density(self, x: torch.Tensor, lod: Optional[int] = None) -> torch.Tensor:
        return trunc_exp(self.density_net(self.grid(x, lod))[:, 0] - 1.0)

    def forward(self, x: torch.Tensor, d: torch.Tensor, lod: Optional[int] = None):
        h = self.density_net(self.grid(x, lod))
        sigma = trunc_exp(h[:, 0] - 1.0)
        rgb = torch.sigmoid(self.color_net(torch.cat([h[:, 1:], sh_deg2(d)], -1)))
        return sigma, rgb


class Pipeline(nn.Module):
    """A neural field and the tracer that renders it (Wisp's Pipeline(nef, tracer))."""

    def __init__(self, field: NeuralField, tracer):
        super().__init__()
        self.field = field
        self.tracer = tracer                      # an nn.Module tracer (with buffers) becomes a submodule

    @property
    def num_lods(self) -> int:
        return self.field.num_lods

    def forward(self, *rays, lod: Optional[int] = None, **kw):
        return self.tracer(self.field, *rays, lod=lod, **kw)

    def __repr__(self) -> str:
        return (f"Pipeline(field={type(self.field).__name__}[{self.field.grid.kind} grid, "
                f"{self.field.num_params():,} params], tracer={type(self.tracer).__name__})")
