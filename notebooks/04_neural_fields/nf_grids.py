"""Feature grids behind one interface: ``grid(points, lod=None) -> features``.

Every grid maps points in [-1, 1]^dim (dim 2 for images, 3 for shapes and scenes) to a feature vector
of ``grid.output_dim`` numbers. ``lod`` picks the finest level of detail used (0 = coarsest, None =
all); coarser LODs give the same output width (unused levels are zeros or left out of a sum), so one
decoder serves every LOD. The five grids, as in Kaolin Wisp:

* ``DenseGrid``     features at the corners of regular grids (the baseline), via ``grid_sample``.
* ``HashGrid``      Instant-NGP multiresolution hash encoding (growth factor b, spatial hash with the
                    published primes, direct indexing where a level fits its table).
* ``OctreeGrid``    NGLOD sparse octree: features only at the corners of occupied cells, per LOD,
                    summed over LODs; lookups by binary search in sorted cell / corner keys.
* ``TriplaneGrid``  triplanes with several LODs. planes="sum" (default) adds a point's three plane
                    projections as EG3D does; planes="concat" concatenates them as Kaolin Wisp's
                    ``TriplanarGrid`` does. LODs are concatenated (lods="concat", default) or summed
                    (lods="sum", Wisp's default multiscale_type). One plane in 2-D.
* ``CodebookGrid``  VQAD-style learned-index codebook on dense regular grids (VQAD uses octree
                    corners): each corner holds logits over K codewords;
                    forward uses the hard (argmax) codeword, backward the softmax (straight-through),
                    so only log2(K) bits per corner plus the codebook are stored.

All interpolation is d-linear over the 2^d corners of the cell that holds the point, so a grid is
exact at its corners and continuous between them (tests/test_grids.py checks both).

Inputs every grid accepts: floating points of shape (N, dim), N >= 0 (an empty batch gives (0,
output_dim)); float64 points are computed in the grid's own dtype; points outside the box take the
boundary's features; a point with a NaN or infinite coordinate gets NaN features (a defined result
that needs no host-device synchronization, so training steps stay compilable). Integer points and
fractional LODs are errors.
"""
from __future__ import annotations

import math
import operator
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# Instant-NGP's spatial hash primes (Mueller et al. 2022, eq. 4; pi_1 = 1 for cache coherence).
PRIMES = (1, 2654435761, 805459861)


def corner_offsets(dim: int, device=None) -> torch.Tensor:
    """The 2^dim corner offsets of a cell, shape (2^dim, dim), entries 0/1 (bit i of the row = axis i)."""
    idx = torch.arange(2 ** dim, device=device)
    return torch.stack([(idx >> i) & 1 for i in range(dim)], dim=-1)


def to_unit(points: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped (points outside the box take the boundary's features)."""
    return ((points + 1.0) * 0.5).clamp(0.0, 1.0)


def cell_corners(u: torch.Tensor, res: torch.Tensor, offsets: torch.Tensor):
    """Integer corners and d-linear weights of the cells that hold u.

    u: (N, d) in [0, 1]; res: (L,) cells per side for each level; offsets: (2^d, d).
    Returns corners (N, L, 2^d, d) int64 in [0, res] and weights (N, L, 2^d) summing to 1.
    """
    pos = u[:, None, :] * res[None, :, None].to(u.dtype)                         # (N, L, d)
    base = torch.minimum(pos.floor(), (res[None, :, None] - 1).to(u.dtype))      # the last cell owns u=1
    frac = pos - base                                                            # in [0, 1]
    base = base.long()
    corners = base[:, :, None, :] + offsets[None, None]                          # (N, L, 2^d, d)
    off = offsets[None, None].to(u.dtype)
    w = torch.where(off > 0, frac[:, :, None, :], 1.0 - frac[:, :, None, :]).prod(-1)
    return corners, w


def _expand_corners(per_axis, op):
    """Combine per-axis pairs [(v_i at offset 0, v_i at offset 1)] of shape (..., ) into (..., 2^d),
    corner c holding op over axes of v_i[bit i of c] (same corner order as corner_offsets)."""
    out = torch.stack(per_axis[0], -1)
    for lo, hi in per_axis[1:]:
        out = op(out[..., None, :], torch.stack([lo, hi], -1)[..., :, None]).flatten(-2)
    return out


def separable_corners(u: torch.Tensor, res: torch.Tensor):
    """Per-axis integer cell base (N, L, d) and fraction (N, L, d) for cells at resolutions res (L,),
    plus the d-linear weights (N, L, 2^d). Cheaper than materialising every corner's coordinates."""
    pos = u[:, None, :] * res[None, :, None].to(u.dtype)
    base = torch.minimum(pos.floor(), (res[None, :, None] - 1).to(u.dtype))
    frac = pos - base
    w = _expand_corners([(1 - frac[..., i], frac[..., i]) for i in range(u.shape[1])], torch.mul)
    return base.long(), frac, w


def check_resolutions(resolutions: Sequence[int], kind: str) -> List[int]:
    res = [operator.index(r) for r in resolutions]
    if not res or min(res) < 1:
        raise ValueError(f"{kind} grid needs at least one resolution, each >= 1 cell per side; got {list(resolutions)}")
    return res


class FeatureGrid(nn.Module):
    """Common interface. Subclasses set dim, num_lods, output_dim and implement encode(points, lod)
    for finite points in their own dtype; forward checks the input and handles the edge cases."""

    dim: int
    num_lods: int
    output_dim: int
    kind: str = "grid"
    dims = (1, 2, 3)                    # the dimensions a grid kind supports

    def check_dim(self, dim: int) -> None:
        if dim not in self.dims:
            raise ValueError(f"{self.kind} grid: dim={dim} is not supported (use {' or '.join(map(str, self.dims))})")

    def check_lod(self, lod: Optional[int]) -> int:
        if lod is None:
            return self.num_lods - 1
        if isinstance(lod, bool):
            raise TypeError(f"lod must be an integer level of detail or None, not {lod!r}")
        try:
            lod = operator.index(lod)               # 1.5 and 1.0 are refused, not truncated
        except TypeError:
            raise TypeError(f"lod must be an integer level of detail or None, not {lod!r} "
                            f"({type(lod).__name__})") from None
        if not 0 <= lod < self.num_lods:
            raise ValueError(f"lod={lod} is out of range for a {self.kind} grid with {self.num_lods} LODs "
                             f"(use 0..{self.num_lods - 1} or None for all)")
        return lod

    def param_dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.get_default_dtype()

    def check_points(self, points: torch.Tensor) -> torch.Tensor:
        """The points as a floating tensor (N, dim) in the grid's dtype; raises on anything else."""
        if not isinstance(points, torch.Tensor):
            raise TypeError(f"{self.kind} grid expects a torch.Tensor of points, not {type(points).__name__}")
        if points.ndim != 2 or points.shape[1] != self.dim:
            raise ValueError(f"{self.kind} grid expects points of shape (N, {self.dim}); got {tuple(points.shape)}")
        if not points.is_floating_point():
            raise TypeError(f"{self.kind} grid expects floating-point coordinates in [-1, 1], got {points.dtype} "
                            f"(integer pixel or voxel indices must be scaled into the box first)")
        return points.to(self.param_dtype())

    def forward(self, points: torch.Tensor, lod: Optional[int] = None) -> torch.Tensor:
        points = self.check_points(points)
        lod = self.check_lod(lod)
        if points.shape[0] == 0:
            return points.new_zeros(0, self.output_dim)
        finite = torch.isfinite(points).all(-1, keepdim=True)          # (N, 1)
        out = self.encode(torch.where(finite, points, torch.zeros_like(points)), lod)
        return torch.where(finite, out, torch.full_like(out, float("nan")))

    def encode(self, points: torch.Tensor, lod: int) -> torch.Tensor:
        raise NotImplementedError

    def num_params(self) -> int:
        """Trainable numbers."""
        return sum(p.numel() for p in self.parameters())

    def stored_params(self) -> float:
        """Numbers needed at inference, counted as float32 values (the codebook grid stores less)."""
        return float(self.num_params())

    def lod_params(self, lod: int) -> float:
        """Stored numbers used by LODs 0..lod (for quality/size trade-offs)."""
        return self.stored_params() * (lod + 1) / self.num_lods

    def extra_repr(self) -> str:
        return f"dim={self.dim}, lods={self.num_lods}, output_dim={self.output_dim}, params={self.num_params():,}"


# ------------------------------------------------------------------------------------------------
class DenseGrid(FeatureGrid):
    """Regular grids of (res+1)^dim corner features, one per LOD, concatenated. The baseline."""

    kind = "dense"
    dims = (2, 3)                       # grid_sample: 4-D and 5-D inputs

    def __init__(self, dim: int = 3, resolutions: Sequence[int] = (64,), features: int = 8,
                 init_std: float = 0.01):
        super().__init__()
        self.check_dim(dim)
        self.dim, self.resolutions, self.features = dim, check_resolutions(resolutions, self.kind), features
        self.num_lods = len(self.resolutions)
        self.output_dim = features * self.num_lods
        shape = lambda r: (1, features) + (r + 1,) * dim
        self.grids = nn.ParameterList([nn.Parameter(torch.randn(shape(r)) * init_std) for r in self.resolutions])

    def encode(self, points: torch.Tensor, lod: int) -> torch.Tensor:
        n = points.shape[0]
        # grid_sample wants (x, y[, z]) indexing (W, H[, D]): our grids are stored in that order.
        g = points.clamp(-1, 1).view(1, n, *([1] * (self.dim - 1)), self.dim)
        outs = []
        for i in range(lod + 1):
            f = F.grid_sample(self.grids[i], g, mode="bilinear", padding_mode="border", align_corners=True)
            outs.append(f.reshape(self.features, n).t())
        out = torch.cat(outs, dim=1)
        return F.pad(out, (0, self.output_dim - out.shape[1]))

    def lod_params(self, lod: int) -> float:
        return float(sum(self.grids[i].numel() for i in range(lod + 1)))


# ------------------------------------------------------------------------------------------------
def hash_growth(n_min: int, n_max: int, levels: int) -> float:
    """Instant-NGP growth factor b = exp((ln N_max - ln N_min) / (L - 1))."""
    return math.exp((math.log(n_max) - math.log(n_min)) / max(levels - 1, 1))


def spatial_hash(coords: torch.Tensor, table_size: int) -> torch.Tensor:
    """XOR over axes of coords_i * pi_i, modulo the table size (a power of two, so mod = mask).

    int64 products keep the low 32 bits exactly as Instant-NGP's uint32 arithmetic does, so the
    index is the same as the CUDA original's for any table size 2^k <= 2^32."""
    h = torch.zeros(coords.shape[:-1], dtype=torch.int64, device=coords.device)
    for i in range(coords.shape[-1]):
        h = h ^ (coords[..., i] * PRIMES[i])
    return h & (table_size - 1)


class HashGrid(FeatureGrid):
    """Multiresolution hash encoding (Instant-NGP): L levels, F features each, tables of T entries."""

    kind = "hash"

    def __init__(self, dim: int = 3, levels: int = 16, features: int = 2, log2_table: int = 19,
                 n_min: int = 16, n_max: int = 2048, init_range: float = 1e-4):
        super().__init__()
        self.check_dim(dim)
        if levels < 1 or features < 1:
            raise ValueError(f"hash grid needs levels >= 1 and features >= 1 (got {levels}, {features})")
        if not 1 <= n_min <= n_max:
            raise ValueError(f"hash grid needs 1 <= n_min <= n_max (coarsest <= finest resolution); "
                             f"got n_min={n_min}, n_max={n_max}")
        if not 1 <= log2_table <= 32:
            raise ValueError(f"log2_table={log2_table}: the table holds 2^1 .. 2^32 rows (uint32 hash)")
        self.dim, self.levels, self.features = dim, levels, features
        self.table_size = 2 ** log2_table
        self.growth = hash_growth(n_min, n_max, levels)
        res = [int(math.floor(n_min * self.growth ** l + 1e-6)) for l in range(levels)]
        sizes = [min(self.table_size, (r + 1) ** dim) for r in res]
        self.hashed = [(r + 1) ** dim > self.table_size for r in res]
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        self.num_lods = levels
        self.output_dim = levels * features
        self.register_buffer("res", torch.tensor(res, dtype=torch.int64), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets[:-1], dtype=torch.int64), persistent=False)
        self.register_buffer("is_hashed", torch.tensor(self.hashed), persistent=False)
        self.register_buffer("corner_offsets", corner_offsets(dim), persistent=False)
        strides = torch.stack([(torch.tensor(res) + 1) ** i for i in range(dim)], dim=-1)  # (L, d)
        self.register_buffer("strides", strides.to(torch.int64), persistent=False)
        self.table = nn.Parameter(torch.empty(offsets[-1], features).uniform_(-init_range, init_range))

    def level_index(self, corners: torch.Tensor, levels: slice) -> torch.Tensor:
        """Row of the table for integer corners (N, L', 2^d, d) of levels `levels` (reference form)."""
        direct = (corners * self.strides[levels][None, :, None, :]).sum(-1)
        hashed = spatial_hash(corners, self.table_size)
        idx = torch.where(self.is_hashed[levels][None, :, None], hashed, direct)
        return idx + self.offsets[levels][None, :, None]

    def encode(self, points: torch.Tensor, lod: int) -> torch.Tensor:
        lv = slice(0, lod + 1)
        base, _, w = separable_corners(to_unit(points), self.res[lv])         # (N, L', d), (N, L', 2^d)
        strides = self.strides[lv]
        direct = _expand_corners([(base[..., i] * strides[:, i], (base[..., i] + 1) * strides[:, i])
                                  for i in range(self.dim)], torch.add)
        hashed = _expand_corners([(base[..., i] * PRIMES[i], (base[..., i] + 1) * PRIMES[i])
                                  for i in range(self.dim)], torch.bitwise_xor) & (self.table_size - 1)
        idx = torch.where(self.is_hashed[lv][None, :, None], hashed, direct) + self.offsets[lv][None, :, None]
        feats = self.table[idx.reshape(-1)].view(*idx.shape, self.features)   # (N, L', 2^d, F)
        out = (feats * w[..., None]).sum(2).reshape(points.shape[0], -1)
        return F.pad(out, (0, self.output_dim - out.shape[1]))

    def lod_params(self, lod: int) -> float:
        return float(self.sizes[: lod + 1].sum().item() * self.features)


# ------------------------------------------------------------------------------------------------
def _keys(cells: torch.Tensor, side: int) -> torch.Tensor:
    """Linear key of integer cells/corners on a grid with `side` entries per axis."""
    key = torch.zeros(cells.shape[:-1], dtype=torch.int64, device=cells.device)
    for i in range(cells.shape[-1] - 1, -1, -1):
        key = key * side + cells[..., i]
    return key


def _unique_cells(cells: torch.Tensor, side: int) -> torch.Tensor:
    """Distinct integer cells (n, d), sorted by key (a 1-D unique is much faster than unique(dim=0))."""
    k = torch.unique(_keys(cells, side))
    return torch.stack([(k // side ** a) % side for a in range(cells.shape[1])], -1)


def _lookup(sorted_keys: torch.Tensor, query: torch.Tensor):
    """Positions of `query` in `sorted_keys` and whether each is present."""
    if sorted_keys.numel() == 0:
        z = torch.zeros_like(query)
        return z, torch.zeros(query.shape, dtype=torch.bool, device=query.device)
    pos = torch.searchsorted(sorted_keys, query).clamp(max=sorted_keys.numel() - 1)
    return pos, sorted_keys[pos] == query


class OctreeGrid(FeatureGrid):
    """NGLOD-style sparse octree (quadtree in 2-D) with features at the corners of occupied cells.

    Octree level l has 2^l cells per side; LOD i is level base_level + i. A cell is stored only if an
    input point falls in it (levels <= dense_level store every cell). Features of a point are summed
    over LODs 0..lod; a level whose cell at the point is empty contributes zero."""

    kind = "octree"

    def __init__(self, dim: int, cells: List[torch.Tensor], base_level: int, features: int = 16,
                 init_std: float = 0.01):
        super().__init__()
        self.check_dim(dim)
        if not cells:
            raise ValueError("an octree needs at least one LOD of cells")
        self.dim, self.features, self.base_level = dim, features, base_level
        self.num_lods = len(cells)
        self.output_dim = features
        self.register_buffer("corner_offsets", corner_offsets(dim), persistent=False)
        offset = 0
        self.level_offsets, self.level_corners = [], []
        for i, c in enumerate(cells):
            side = 2 ** (base_level + i)
            ckeys = torch.unique(_keys(c, side))
            corner_keys = torch.unique(_keys(c[:, None, :] + corner_offsets(dim, c.device)[None], side + 1))
            self.register_buffer(f"cell_keys_{i}", ckeys, persistent=True)
            self.register_buffer(f"corner_keys_{i}", corner_keys, persistent=True)
            self.level_offsets.append(offset)
            self.level_corners.append(int(corner_keys.numel()))
            offset += int(corner_keys.numel())
        self.features_table = nn.Parameter(torch.randn(offset, features) * init_std)

    @classmethod
    def from_points(cls, points: torch.Tensor, base_level: int = 2, num_lods: int = 5, features: int = 16,
                    dense_level: Optional[int] = None, dilate: int = 0, init_std: float = 0.01) -> "OctreeGrid":
        """Build the tree from a point set in [-1, 1]^dim: a cell is occupied if a point falls in it
        (or, with dilate=k, if it is within k cells of one: a narrow band around a surface)."""
        if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[0] == 0:
            shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
            raise ValueError(f"an octree is built from a non-empty point set of shape (N, dim); got {shape}")
        if not points.is_floating_point() or not bool(torch.isfinite(points).all()):
            raise ValueError("octree points must be finite floating-point coordinates in [-1, 1]")
        dim = points.shape[1]
        u = to_unit(points.detach().float())
        cells = []
        for i in range(num_lods):
            level = base_level + i
            side = 2 ** level
            if dense_level is not None and level <= dense_level:
                axes = [torch.arange(side, device=points.device)] * dim
                c = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, dim)
            else:
                c = _unique_cells((u * side).floor().clamp(max=side - 1).long(), side)
                if dilate:
                    r = torch.arange(-dilate, dilate + 1, device=points.device)
                    nb = torch.stack(torch.meshgrid(*[r] * dim, indexing="ij"), -1).reshape(-1, dim)
                    c = (c[:, None, :] + nb[None]).reshape(-1, dim)
                    c = _unique_cells(c[((c >= 0) & (c < side)).all(1)], side)
            cells.append(c)
        return cls(dim, cells, base_level, features, init_std)


    def cell_keys(self, i: int) -> torch.Tensor:
        return getattr(self, f"cell_keys_{i}")

    def corner_keys(self, i: int) -> torch.Tensor:
        return getattr(self, f"corner_keys_{i}")

    def occupied_cells(self, i: int) -> torch.Tensor:
        """Integer coordinates (n, dim) of the occupied cells of LOD i."""
        side = 2 ** (self.base_level + i)
        k = self.cell_keys(i)
        return torch.stack([(k // side ** a) % side for a in range(self.dim)], -1)

    def occupancy(self, points: torch.Tensor, lod: Optional[int] = None) -> torch.Tensor:
        """Whether each point lies in an occupied cell of LOD `lod`."""
        lod = self.check_lod(lod)
        points = self.check_points(points)
        side = 2 ** (self.base_level + lod)
        c = (to_unit(points) * side).floor().clamp(max=side - 1).long()
        return _lookup(self.cell_keys(lod), _keys(c, side))[1]

    def encode(self, points: torch.Tensor, lod: int) -> torch.Tensor:
        u = to_unit(points)
        out = points.new_zeros(points.shape[0], self.features)
        for i in range(lod + 1):
            side = 2 ** (self.base_level + i)
            base, _, w = separable_corners(u, torch.tensor([side], device=points.device))
            base, w = base[:, 0], w[:, 0]                                       # (N, d), (N, 2^d)
            _, occ = _lookup(self.cell_keys(i), _keys(base, side))
            ck = _expand_corners([(base[:, a] * (side + 1) ** a, (base[:, a] + 1) * (side + 1) ** a)
                                  for a in range(self.dim)], torch.add)          # corner keys (N, 2^d)
            pos, _ = _lookup(self.corner_keys(i), ck)
            feats = self.features_table[pos + self.level_offsets[i]]            # (N, 2^d, F)
            out = out + (feats * (w * occ[:, None].to(w.dtype))[..., None]).sum(1)
        return out

    def lod_params(self, lod: int) -> float:
        return float(sum(self.level_corners[: lod + 1]) * self.features)


# ------------------------------------------------------------------------------------------------
class TriplaneGrid(FeatureGrid):
    """Triplanes at several LODs: a point is projected onto the xy, xz and yz planes of each LOD.

    planes="sum": the three plane features are added (EG3D, Chan et al. 2022: F features per LOD);
    planes="concat": they are concatenated (Kaolin Wisp's TriplanarGrid, 3F features per LOD).
    lods="concat": the LODs' features are concatenated (our default, like our dense and codebook grids);
    lods="sum": they are added (Wisp's default multiscale_type). In 2-D there is one plane, so this
    becomes a multi-LOD 2-D grid."""

    kind = "triplane"
    dims = (2, 3)

    def __init__(self, dim: int = 3, resolutions: Sequence[int] = (32, 64, 128), features: int = 8,
                 init_std: float = 0.1, planes: str = "sum", lods: str = "concat"):
        super().__init__()
        self.check_dim(dim)
        for name, value in (("planes", planes), ("lods", lods)):
            if value not in ("sum", "concat"):
                raise ValueError(f"triplane grid: {name}={value!r}; choose 'sum' or 'concat'")
        self.dim, self.resolutions, self.features = dim, check_resolutions(resolutions, self.kind), features
        self.plane_agg, self.lod_agg = planes, lods
        self.planes_axes = [(0, 1), (0, 2), (1, 2)] if dim == 3 else [(0, 1)]
        self.num_lods = len(self.resolutions)
        self.lod_dim = features * (len(self.planes_axes) if planes == "concat" else 1)
        self.output_dim = self.lod_dim * (self.num_lods if lods == "concat" else 1)
        self.planes = nn.ParameterList([
            nn.Parameter(torch.randn(len(self.planes_axes), features, r + 1, r + 1) * init_std)
            for r in self.resolutions])

    def combine(self, f: torch.Tensor) -> torch.Tensor:
        """Plane samples (P, F, N, 1) -> (N, lod_dim): EG3D's sum or Wisp's concatenation."""
        if self.plane_agg == "sum":
            return f.sum(0).reshape(self.features, -1).t()
        return f.reshape(f.shape[0] * self.features, -1).t()            # plane-major: [xy | xz | yz]

    def encode(self, points: torch.Tensor, lod: int) -> torch.Tensor:
        n, p = points.shape[0], len(self.planes_axes)
        x = points.clamp(-1, 1)
        g = torch.stack([x[:, list(a)] for a in self.planes_axes], 0).view(p, n, 1, 2)  # (P, N, 1, 2)
        outs = []
        for i in range(lod + 1):
            f = F.grid_sample(self.planes[i], g, mode="bilinear", padding_mode="border", align_corners=True)
            outs.append(self.combine(f))
        if self.lod_agg == "sum":
            return torch.stack(outs).sum(0)
        out = torch.cat(outs, dim=1)
        return F.pad(out, (0, self.output_dim - out.shape[1]))

    def lod_params(self, lod: int) -> float:
        return float(sum(self.planes[i].numel() for i in range(lod + 1)))


# ------------------------------------------------------------------------------------------------
class CodebookGrid(FeatureGrid):
    """Learned-index codebook grid (VQAD, Takikawa et al. 2022) on multi-LOD *dense* regular grids.

    VQAD stores its indices at the corners of a sparse octree's occupied cells; here every corner of
    a regular grid holds one, so the codebook idea is kept but not VQAD's sparsity.

    Each corner of LOD i holds K logits; its feature is codebook_i[argmax] in the forward pass and
    the softmax-weighted codeword in the backward pass (straight-through). Stored for inference:
    log2(K) bits per corner plus K x F codewords per LOD."""

    kind = "codebook"

    def __init__(self, dim: int = 3, resolutions: Sequence[int] = (16, 32, 64), features: int = 8,
                 codebook_bits: int = 4, init_std: float = 0.1, hard: bool = True):
        super().__init__()
        self.check_dim(dim)
        if codebook_bits < 1:
            raise ValueError(f"codebook_bits={codebook_bits}: a codebook needs at least 2 codewords (1 bit)")
        self.dim, self.resolutions, self.features = dim, check_resolutions(resolutions, self.kind), features
        self.codebook_size = 2 ** codebook_bits
        self.bits = codebook_bits
        self.hard = hard
        self.num_lods = len(self.resolutions)
        self.output_dim = features * self.num_lods
        self.register_buffer("corner_offsets", corner_offsets(dim), persistent=False)
        self.logits = nn.ParameterList([nn.Parameter(torch.randn((r + 1) ** dim, self.codebook_size) * 0.01)
                                        for r in self.resolutions])
        self.codebooks = nn.ParameterList([nn.Parameter(torch.randn(self.codebook_size, features) * init_std)
                                           for _ in self.resolutions])

    def corner_features(self, i: int, idx: torch.Tensor) -> torch.Tensor:
        logits = self.logits[i][idx]                                  # (..., K)
        soft = logits.softmax(-1)
        if self.hard:
            one_hot = F.one_hot(logits.argmax(-1), self.codebook_size).to(soft.dtype)
            weights = one_hot + soft - soft.detach()                  # straight-through estimator
        else:
            weights = soft
        return weights @ self.codebooks[i]

    def encode(self, points: torch.Tensor, lod: int) -> torch.Tensor:
        u = to_unit(points)
        outs = []
        for i in range(lod + 1):
            r = self.resolutions[i]
            base, _, w = separable_corners(u, torch.tensor([r], device=points.device))
            idx = _expand_corners([(base[:, 0, a] * (r + 1) ** a, (base[:, 0, a] + 1) * (r + 1) ** a)
                                   for a in range(self.dim)], torch.add)          # (N, 2^d)
            feats = self.corner_features(i, idx)                                 # (N, 2^d, F)
            outs.append((feats * w[:, 0, :, None]).sum(1))
        out = torch.cat(outs, dim=1)
        return F.pad(out, (0, self.output_dim - out.shape[1]))

    def stored_params(self) -> float:
        return self.lod_params(self.num_lods - 1)

    def lod_params(self, lod: int) -> float:
        total = 0.0
        for i in range(lod + 1):
            total += self.logits[i].shape[0] * self.bits / 32 + self.codebooks[i].numel()
        return total


# ------------------------------------------------------------------------------------------------
GRID_TYPES = {"dense": DenseGrid, "hash": HashGrid, "octree": OctreeGrid, "triplane": TriplaneGrid,
              "codebook": CodebookGrid}


def make_grid(kind: str, dim: int, points: Optional[torch.Tensor] = None, **kw) -> FeatureGrid:
    """Build a grid by name; the octree needs `points` (where the signal lives) to know its cells."""
    if kind not in GRID_TYPES:
        raise ValueError(f"unknown grid kind {kind!r}; choose from {', '.join(GRID_TYPES)}")
    if kind == "octree":
        if points is None:
            raise ValueError("an octree grid is built from points: make_grid('octree', dim, points=...)")
        return OctreeGrid.from_points(points, **kw)
    return GRID_TYPES[kind](dim=dim, **kw)
