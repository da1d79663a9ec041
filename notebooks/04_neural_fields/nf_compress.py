"""Image fitting as compression: every grid sized to a parameter budget (a fraction of the image's values).

Instant-NGP's image experiments are compression experiments: the encoding has fewer parameters than
the image has values, so a high PSNR on the fitted pixels means the grid found structure, not room
to memorise. ``field_for_budget`` builds, for one grid kind, the largest ImageField whose stored
parameters (grid as stored for inference + decoder) fit a budget; ``rate_distortion`` fits each kind
at each budget for the same wall-clock time. Sizes come from one knob per kind:

* hash      table size 2^k per level (levels, features and N_min..N_max fixed): the fine levels
            whose (N_l + 1)^2 corners exceed 2^k hash, the coarse ones index directly;
* dense     the single grid's resolution;
* triplane  the finest of four resolutions (r/8, r/4, r/2, r), one plane in 2-D;
* codebook  the same four resolutions, each corner storing log2(K) bits (resolution capped at the
            image's, since finer corners than pixels cannot help);
* octree    (quadtree, dense up to 16x16 cells or the level above the finest) the finest level and the share of pixels, highest
            gradient first, whose cells exist at the levels finer than that.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F

import nf_fields
import nf_grids
import nf_train


def stored_params(field: nf_fields.ImageField) -> float:
    """Numbers stored for inference: the grid's (codebook: bits per corner + codewords) + the decoder's."""
    return field.grid.stored_params() + sum(p.numel() for p in field.decoder.parameters())


def edge_ranked_points(image: torch.Tensor) -> torch.Tensor:
    """Pixel centres (H*W, 2) sorted by the image's gradient magnitude, largest first."""
    h, w = image.shape[:2]
    gray = image.float().mean(-1)
    grad = F.pad((gray[1:, :] - gray[:-1, :]).abs(), (0, 0, 0, 1)) + F.pad((gray[:, 1:] - gray[:, :-1]).abs(), (0, 1))
    order = torch.argsort(grad.reshape(-1), descending=True)
    return nf_train.pixel_coords(h, w, image.device)[order]


def _resolution_ladder(top: int, bottom: int = 8, factor: float = 0.92) -> List[int]:
    out, r = [], float(top)
    while r >= bottom:
        out.append(int(r))
        r *= factor
    return sorted(set(out), reverse=True)


def candidates(kind: str, size: int, edge_points: Optional[torch.Tensor] = None, hash_levels: int = 16,
               hash_n_min: int = 16, features: int = 4) -> Iterable[Callable[[], nf_grids.FeatureGrid]]:
    """Grid builders of one kind for a size x size image, roughly largest first."""
    if kind == "hash":
        for k in range(24, 3, -1):
            yield lambda k=k: nf_grids.HashGrid(2, levels=hash_levels, features=2, log2_table=k,
                                                n_min=min(hash_n_min, size), n_max=size)
    elif kind == "dense":
        for r in _resolution_ladder(size, bottom=2):
            yield lambda r=r: nf_grids.DenseGrid(2, resolutions=(r,), features=features)
    elif kind in ("triplane", "codebook"):
        for r in _resolution_ladder(size, bottom=4):
            res = tuple(max(1, r // 2 ** i) for i in (3, 2, 1, 0))
            if kind == "triplane":
                yield lambda res=res: nf_grids.TriplaneGrid(2, resolutions=res, features=features)
            else:
                yield lambda res=res: nf_grids.CodebookGrid(2, resolutions=res, features=features, codebook_bits=4)
    elif kind == "octree":
        if edge_points is None:
            raise ValueError("an octree image grid needs edge_points (edge_ranked_points(image))")
        top = int(math.log2(size)) - 1                        # finest cells of 2x2 pixels
        n = edge_points.shape[0]
        for finest in range(top, 2, -1):
            for share in [0.75 ** k for k in range(16)]:
                pts = edge_points[: max(1, int(n * share))]
                yield lambda pts=pts, f=finest: nf_grids.OctreeGrid.from_points(
                    pts, base_level=2, num_lods=f - 1, features=features, dense_level=min(4, f - 1))
    else:
        raise ValueError(f"unknown grid kind {kind!r}; choose from {', '.join(nf_grids.GRID_TYPES)}")


def field_for_budget(kind: str, budget: float, size: int, device="cpu", hidden: int = 64, layers: int = 2,
                     **kw) -> nf_fields.ImageField:
    """The ImageField with the most stored parameters <= budget among the kind's candidates."""
    best, best_n, smallest = None, -1.0, float("inf")
    for make in candidates(kind, size, **kw):
        field = nf_fields.ImageField(make(), hidden, layers)
        n = stored_params(field)
        smallest = min(smallest, n)
        if best_n < n <= budget:
            best, best_n = field, n
    if best is None:
        raise ValueError(f"no {kind} grid fits a budget of {budget:,.0f} stored parameters at {size}x{size} "
                         f"(the smallest candidate with this decoder stores {smallest:,.0f})")
    return best.to(device)


def rate_distortion(image: torch.Tensor, kinds: Sequence[str], fractions: Sequence[float], max_steps: int,
                    time_budget: float, batch: int, eval_every: int, hidden: int = 64, layers: int = 2,
                    seed: int = 0, show_progress: bool = True, **kw) -> List[Dict]:
    """Fit each grid kind at each budget (fraction x the image's H*W*3 values). One row per fit."""
    import labkit
    size = image.shape[0]
    if image.shape[1] != size:
        raise ValueError(f"rate_distortion expects a square image; got {tuple(image.shape)}")
    values = image.numel()
    rows, done = [], {}
    for frac in fractions:
        for kind in kinds:
            labkit.seed_everything(seed)
            field = field_for_budget(kind, frac * values, size, image.device, hidden, layers, **kw)
            key = (kind, stored_params(field))
            if key in done:            # the same grid as at a larger budget (e.g. a codebook capped by the
                rows.append(dict(done[key], budget=frac))      # image's resolution): not fitted twice
                continue
            run = nf_train.fit_image(field, image, max_steps, time_budget, batch, eval_every=eval_every,
                                     show_progress=show_progress, desc=f"image / {kind} / {frac:g}")
            grid = field.grid
            rows.append({"grid": kind, "budget": frac, "stored params": stored_params(field),
                         "share of image values": stored_params(field) / values,
                         "PSNR (dB)": run["final_psnr"], "seconds": run["train_seconds"], "steps": run["steps_done"],
                         "hashed levels": int(sum(grid.hashed)) if kind == "hash" else 0,
                         "curve": (run["seconds"], run["psnr"]), "field": field})
            done[key] = rows[-1]
    return rows
