import math

import pytest
import torch

import nf_grids as G


def small_grid(kind, dim, points=None):
    """Configs whose resolutions are powers of two, so corner coordinates are exact in float."""
    if kind == "dense":
        return G.DenseGrid(dim, resolutions=(8, 16), features=3)
    if kind == "hash":
        return G.HashGrid(dim, levels=4, features=2, log2_table=8, n_min=4, n_max=32)
    if kind == "octree":
        if points is None:
            points = torch.rand(400, dim) * 2 - 1
        return G.OctreeGrid.from_points(points, base_level=2, num_lods=3, features=3)
    if kind == "triplane":
        return G.TriplaneGrid(dim, resolutions=(8, 16), features=3)
    if kind == "codebook":
        return G.CodebookGrid(dim, resolutions=(8, 16), features=3, codebook_bits=3)
    raise KeyError(kind)


KINDS = list(G.GRID_TYPES)


# ---- corners and interpolation -------------------------------------------------------------------
def test_cell_corner_weights_are_one_hot_at_corners_and_sum_to_one():
    offsets = G.corner_offsets(3)
    res = torch.tensor([8, 16])
    corner = torch.tensor([[3 / 8, 5 / 8, 1.0]])                    # a corner of both levels (u = 1 too)
    _, w = G.cell_corners(corner, res, offsets)
    assert torch.equal((w == 1).sum(-1), torch.tensor([[1, 1]]))
    assert torch.equal((w == 0).sum(-1), torch.tensor([[7, 7]]))
    u = torch.rand(100, 3)
    _, w = G.cell_corners(u, res, offsets)
    assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(100, 2))


def test_dense_grid_reproduces_linear_functions_exactly():
    """d-linear interpolation is exact for affine functions: the grid's corners hold a*x+b."""
    g = G.DenseGrid(3, resolutions=(8,), features=2)
    a = torch.tensor([[0.3, -1.2, 0.7], [2.0, 0.1, -0.4]])
    b = torch.tensor([0.5, -0.25])
    side = torch.linspace(-1, 1, 9)
    z, y, x = torch.meshgrid(side, side, side, indexing="ij")        # stored (D, H, W) = (z, y, x)
    xyz = torch.stack([x, y, z], -1)
    with torch.no_grad():
        g.grids[0].copy_((xyz @ a.t() + b).permute(3, 0, 1, 2)[None])
    pts = torch.rand(500, 3) * 2 - 1
    assert torch.allclose(g(pts), pts @ a.t() + b, atol=1e-5)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("kind", ["dense", "hash", "octree", "triplane"])
def test_exact_at_corners_one_stored_vector_per_level(kind, dim):
    """At a point that is a corner of every level, each level reads exactly one stored corner
    (one per plane for triplanes) with weight 1: the gradient of sum(features) is 1 on those
    entries and 0 everywhere else."""
    corner = torch.tensor([[-0.5, 0.25, 0.75][:dim]])               # u = 1/4, 5/8, 7/8: a corner at res >= 8
    pts = torch.cat([corner, torch.rand(200, dim) * 2 - 1])
    g = small_grid(kind, dim, pts)
    if kind == "hash":
        g = G.HashGrid(dim, levels=3, features=2, log2_table=8, n_min=8, n_max=32)
    if kind == "octree":                                            # coarsest level res 8
        g = G.OctreeGrid.from_points(pts, base_level=3, num_lods=2, features=3)
    g.zero_grad()
    g(corner).sum().backward()
    grads = torch.cat([p.grad.reshape(-1) for p in g.parameters()])
    nz = grads[grads != 0]
    planes = 3 if (kind == "triplane" and dim == 3) else 1
    feats = g.features
    assert torch.allclose(nz, torch.ones_like(nz))
    assert nz.numel() == g.num_lods * feats * planes


def test_hash_grid_value_at_corner_is_the_table_row_at_the_published_hash():
    g = G.HashGrid(3, levels=3, features=2, log2_table=6, n_min=8, n_max=32)   # every level is hashed
    assert all(g.hashed)
    with torch.no_grad():
        g.table.normal_()
    c = [3, 5, 7]                                                     # corner at res 8 -> scale for others
    expected = []
    for lvl, r in enumerate(g.res.tolist()):
        k = r // 8
        x, y, z = c[0] * k, c[1] * k, c[2] * k
        h = ((x * 1) ^ (y * 2654435761) ^ (z * 805459861)) & 0xFFFFFFFF
        expected.append(g.table[g.offsets[lvl] + h % 64])
    pt = torch.tensor([[c[0] / 8 * 2 - 1, c[1] / 8 * 2 - 1, c[2] / 8 * 2 - 1]])
    assert torch.allclose(g(pt)[0], torch.cat(expected), atol=1e-6)


def test_codebook_grid_at_a_corner_returns_the_argmax_codeword():
    g = G.CodebookGrid(2, resolutions=(8,), features=3, codebook_bits=3)
    with torch.no_grad():
        g.logits[0].normal_()
    c = (2, 5)
    pt = torch.tensor([[c[0] / 8 * 2 - 1, c[1] / 8 * 2 - 1]])
    row = c[1] * 9 + c[0]                                             # key = x + (res+1) * y
    expected = g.codebooks[0][g.logits[0][row].argmax()]
    assert torch.allclose(g(pt)[0], expected, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_continuous_between_corners(kind):
    """Along a segment that crosses many cells, refining the step 10x shrinks the largest jump
    about 10x (a Lipschitz function); a discontinuity would keep its jump."""
    dim = 3
    side = torch.linspace(-1, 1, 65)
    ball = torch.stack(torch.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3)
    ball = ball[ball.norm(dim=1) < 0.9]                              # fills every cell of the ball
    g = small_grid(kind, dim, ball)
    with torch.no_grad():
        for p in g.parameters():
            p.normal_()
    a, b = torch.tensor([-0.45, -0.3, -0.2]), torch.tensor([0.4, 0.35, 0.3])   # inside the ball

    def max_jump(n):
        t = torch.linspace(0, 1, n)[:, None]
        with torch.no_grad():
            f = g(a + t * (b - a))
        return (f[1:] - f[:-1]).abs().max().item()

    coarse, fine = max_jump(2001), max_jump(20001)
    assert fine < 0.2 * coarse


# ---- the hash --------------------------------------------------------------------------------------
def test_hash_uses_the_published_primes():
    assert G.PRIMES == (1, 2654435761, 805459861)
    coords = torch.randint(0, 5000, (1000, 3))
    T = 2 ** 19
    got = G.spatial_hash(coords, T)
    ref = [((int(x) * 1) ^ (int(y) * 2654435761) ^ (int(z) * 805459861)) % (2 ** 32) % T for x, y, z in coords]
    assert got.tolist() == ref


def test_hash_growth_factor_and_level_resolutions():
    g = G.HashGrid(3, levels=16, features=2, log2_table=19, n_min=16, n_max=2048)
    b = math.exp((math.log(2048) - math.log(16)) / 15)
    assert g.growth == pytest.approx(b)
    assert g.res[0].item() == 16 and g.res[-1].item() == 2048
    assert g.res.tolist() == [math.floor(16 * b ** l + 1e-6) for l in range(16)]
    # coarse levels fit their table (direct indexing), fine ones are hashed
    assert g.hashed[0] is False and g.hashed[-1] is True
    assert g.table.shape[1] == 2 and g.output_dim == 32


# ---- gradients and LODs ------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_features_and_fitting_lowers_the_loss(kind, dim):
    pts = torch.rand(512, dim) * 2 - 1
    g = small_grid(kind, dim, pts)
    target = torch.sin(3 * pts).sum(1, keepdim=True)
    head = torch.nn.Linear(g.output_dim, 1)
    opt = torch.optim.Adam(list(g.parameters()) + list(head.parameters()), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = ((head(g(pts)) - target) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    g.zero_grad()
    ((head(g(pts)) - target) ** 2).mean().backward()
    feature_params = [p for p in g.parameters()]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in feature_params)
    assert any(p.grad.abs().sum() > 0 for p in feature_params)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kind", KINDS)
def test_lod_keeps_output_width_and_ignores_finer_levels(kind):
    pts = torch.rand(300, 3) * 2 - 1
    g = small_grid(kind, 3, pts)
    widths = {g(pts[:10], lod=l).shape[1] for l in range(g.num_lods)}
    assert widths == {g.output_dim}
    g.zero_grad()
    g(pts, lod=0).sum().backward()
    full = g(pts)
    assert not torch.allclose(g(pts, lod=0), full)
    with pytest.raises(ValueError, match="lod"):
        g(pts, lod=g.num_lods)
    with pytest.raises(ValueError, match="shape"):
        g(pts[:, :2])


def test_lod0_leaves_finer_hash_levels_without_gradient():
    g = G.HashGrid(3, levels=4, features=2, log2_table=10, n_min=4, n_max=32)
    g(torch.rand(100, 3) * 2 - 1, lod=1).sum().backward()
    per_level = [g.table.grad[o:o + s].abs().sum().item() for o, s in zip(g.offsets.tolist(), g.sizes.tolist())]
    assert per_level[0] > 0 and per_level[1] > 0 and per_level[2] == 0 and per_level[3] == 0


# ---- the octree -------------------------------------------------------------------------------------
def test_octree_holds_only_occupied_cells():
    # points on a sphere shell: most cells of fine levels are empty
    pts = torch.randn(3000, 3)
    pts = 0.7 * pts / pts.norm(dim=1, keepdim=True)
    g = G.OctreeGrid.from_points(pts, base_level=2, num_lods=4, features=2)
    u = G.to_unit(pts)
    for i in range(g.num_lods):
        side = 2 ** (g.base_level + i)
        cells = g.occupied_cells(i)
        point_cells = torch.unique((u * side).floor().clamp(max=side - 1).long(), dim=0)
        # stored cells == cells that contain a point (nothing more, nothing less)
        assert torch.equal(torch.unique(cells, dim=0), point_cells)
        if i > 0:
            parents = torch.unique(cells // 2, dim=0)
            coarser = torch.unique(g.occupied_cells(i - 1), dim=0)
            assert torch.equal(parents, coarser)                      # every child has an occupied parent
    assert g.occupied_cells(g.num_lods - 1).shape[0] < 0.5 * (2 ** 5) ** 3
    # features exist only for corners of occupied cells
    assert g.features_table.shape[0] == sum(g.level_corners)
    assert g.occupancy(pts).all()
    assert not g.occupancy(torch.zeros(1, 3)).any()                   # the sphere's centre is empty


def test_octree_point_in_empty_cell_gets_zero_features_from_that_level():
    pts = torch.rand(200, 3) * 0.5 + 0.4                               # only the +++ corner region
    g = G.OctreeGrid.from_points(pts, base_level=1, num_lods=3, features=4)
    with torch.no_grad():
        g.features_table.normal_()
    far = torch.tensor([[-0.9, -0.9, -0.9]])
    assert torch.equal(g(far), torch.zeros(1, 4))


def test_octree_dense_levels_store_every_cell():
    g = G.OctreeGrid.from_points(torch.zeros(1, 2), base_level=1, num_lods=3, features=2, dense_level=2)
    assert g.occupied_cells(0).shape[0] == 4 and g.occupied_cells(1).shape[0] == 16
    assert g.occupied_cells(2).shape[0] == 1


def test_codebook_stores_fewer_numbers_than_it_trains():
    g = G.CodebookGrid(3, resolutions=(16, 32), features=4, codebook_bits=4)
    assert g.stored_params() < g.num_params() / 10
    assert G.make_grid("dense", 2).dim == 2
    with pytest.raises(ValueError, match="octree"):
        G.make_grid("octree", 3)
    with pytest.raises(ValueError, match="unknown grid"):
        G.make_grid("voxel", 3)


def test_octree_dilation_adds_only_the_band_around_occupied_cells():
    pts = torch.tensor([[0.01, 0.01, 0.01]])
    g = G.OctreeGrid.from_points(pts, base_level=3, num_lods=1, features=2, dilate=1)
    cells = g.occupied_cells(0)
    centre = (G.to_unit(pts) * 8).floor().long()
    assert cells.shape[0] == 27 and ((cells - centre).abs().max(1).values <= 1).all()


def test_triplane_sums_planes_like_eg3d_or_concatenates_them_like_wisp():
    """Wisp's TriplanarGrid (wisp/models/grids/triplanar_grid.py) concatenates the three planes
    (feature_dim * 3) and sums the LODs by default (multiscale_type='sum'); EG3D sums the planes."""
    x = torch.rand(50, 3) * 2 - 1
    torch.manual_seed(0)
    cat = G.TriplaneGrid(3, resolutions=(4, 8), features=2, planes="concat", lods="sum")
    torch.manual_seed(0)
    ssum = G.TriplaneGrid(3, resolutions=(4, 8), features=2)
    assert cat.output_dim == 6 and ssum.output_dim == 4
    fc, fs = cat(x), ssum(x)
    per_lod = lambda f, i: f[:, 2 * i:2 * i + 2]
    planes = fc.view(50, 3, 2)                                          # [xy | xz | yz], LODs summed
    assert torch.allclose(planes.sum(1), per_lod(fs, 0) + per_lod(fs, 1), atol=1e-6)
    assert torch.allclose(cat(x, lod=0).view(50, 3, 2).sum(1), per_lod(fs, 0), atol=1e-6)
    with pytest.raises(ValueError, match="planes"):
        G.TriplaneGrid(3, planes="mean")
