"""Every bad input named in issue 20 gets a clear error or a defined result."""
import math

import pytest
import torch

import nf_data as D
import nf_grids as G
import nf_tracers as T
import nf_train
from test_grids import KINDS, small_grid
from test_tracers import BallDensity, SphereSDF


@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_points_give_nan_features_and_leave_the_others_alone(kind):
    g = small_grid(kind, 3)
    good = torch.rand(5, 3) * 2 - 1
    bad = torch.tensor([[float("nan"), 0.0, 0.0], [0.0, float("inf"), 0.0], [0.0, 0.0, -float("inf")]])
    with torch.no_grad():
        out = g(torch.cat([good[:2], bad, good[2:]]))
        alone = g(good)
    assert torch.isnan(out[2:5]).all()                                 # no crash, no finite garbage
    assert torch.equal(torch.cat([out[:2], out[5:]]), alone)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch_gives_an_empty_feature_matrix(kind):
    g = small_grid(kind, 2)
    out = g(torch.zeros(0, 2))
    assert out.shape == (0, g.output_dim)


def test_tracers_take_an_empty_ray_batch():
    from nf_fields import Pipeline, RadianceField
    pipe = Pipeline(RadianceField(small_grid("hash", 3)), T.VolumeTracer(8, T.OccupancyGrid(4)))
    z = torch.zeros(0, 3)
    for kw in ({}, {"max_samples": 16}):
        assert pipe(z, z, **kw)["rgb"].shape == (0, 3)
    assert T.SphereTracer()(SphereSDF(), z, z)["depth"].shape == (0,)


def test_integer_points_are_refused_and_float64_points_use_the_grid_dtype():
    g = small_grid("hash", 3)
    with pytest.raises(TypeError, match="floating-point"):
        g(torch.zeros(4, 3, dtype=torch.int64))
    x = torch.rand(6, 3) * 2 - 1
    out64 = g(x.double())
    assert out64.dtype == torch.float32 and torch.equal(out64, g(x))


def test_hash_grid_refuses_n_min_above_n_max():
    with pytest.raises(ValueError, match="n_min <= n_max"):
        G.HashGrid(3, levels=4, n_min=64, n_max=16)


@pytest.mark.parametrize("lod", [1.5, 1.0, True])
def test_fractional_lod_is_refused_not_truncated(lod):
    g = small_grid("dense", 3)
    with pytest.raises(TypeError, match="integer level of detail"):
        g(torch.zeros(2, 3), lod=lod)
    assert torch.equal(g(torch.zeros(2, 3), lod=torch.tensor(1)), g(torch.zeros(2, 3), lod=1))


@pytest.mark.parametrize("cls", [G.TriplaneGrid, G.DenseGrid])
def test_four_dimensional_planes_and_dense_grids_are_refused(cls):
    with pytest.raises(ValueError, match="dim=4 is not supported"):
        cls(dim=4)


def test_octree_from_no_points_is_an_error():
    with pytest.raises(ValueError, match="non-empty point set"):
        G.OctreeGrid.from_points(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="finite"):
        G.OctreeGrid.from_points(torch.tensor([[0.0, float("nan"), 0.0]]))


def test_tracers_normalise_ray_directions():
    o = torch.tensor([[0.0, 0.0, 3.0], [0.2, 0.1, 3.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    vol = T.VolumeTracer(128)
    unit, scaled = vol(BallDensity(0.5, 0.5), o, d), vol(BallDensity(0.5, 0.5), o, 2.5 * d)
    assert torch.allclose(unit["alpha"], scaled["alpha"]) and torch.allclose(unit["depth"], scaled["depth"])
    assert abs(unit["alpha"][0].item() - (1 - math.exp(-0.5))) < 0.02
    sph = T.SphereTracer(steps=64, eps=1e-4)
    assert torch.allclose(sph(SphereSDF(0.5), o, 0.3 * d)["depth"], sph(SphereSDF(0.5), o, d)["depth"])


def test_a_camera_inside_an_sdf_object_hits_at_its_own_position():
    o = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]])              # inside the sphere / outside
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    out = T.SphereTracer(steps=64, eps=1e-4)(SphereSDF(0.5), o, d)
    assert out["hit"].tolist() == [True, True] and out["inside"].tolist() == [True, False]
    assert out["depth"][0].item() == 0.0 and abs(out["depth"][1].item() - 2.5) < 1e-3
    assert (out["depth"] >= 0).all()


def test_camera_rays_take_a_homogeneous_4x4_pose():
    c2w = D.orbit_camera(30, 20, 3.0)
    h = torch.cat([c2w, torch.tensor([[0.0, 0.0, 0.0, 1.0]])])
    for a, b in zip(D.camera_rays(h, 5, 4, 40.0), D.camera_rays(c2w, 5, 4, 40.0)):
        assert torch.equal(a, b)
    h[3, 0] = 0.5
    with pytest.raises(ValueError, match=r"\(0, 0, 0, 1\)"):
        D.camera_rays(h, 5, 4, 40.0)
    with pytest.raises(ValueError, match=r"\(3, 4\) or \(4, 4\)"):
        D.camera_rays(c2w[:2], 5, 4, 40.0)


def test_fit_sdf_takes_column_targets_without_broadcasting():
    from nf_fields import SDFField
    pts = torch.rand(256, 3) * 2 - 1
    sdf = pts.norm(dim=1) - 0.5
    runs = []
    for target in (sdf, sdf[:, None]):
        torch.manual_seed(0)
        f = SDFField(G.DenseGrid(3, (4,), 2), hidden=8)
        runs.append(nf_train.fit_sdf(f, pts, target, max_steps=11, time_budget=60, batch=64, show_progress=False)["loss"])
    # the same fit (a broadcast [N, N] target would give a different loss from the first step); equal up to float
    # rounding, which on some hosts differs in the 8th digit between the two memory layouts
    assert runs[0] == pytest.approx(runs[1], rel=1e-6)
    with pytest.raises(ValueError, match="fit_sdf expects"):
        nf_train.fit_sdf(f, pts, sdf[:100], max_steps=1, time_budget=1, show_progress=False)


def test_psnr_refuses_mismatched_shapes_and_0_255_images():
    a = torch.rand(4, 4, 3)
    with pytest.raises(ValueError, match="differ in shape"):
        D.psnr(a, a[:3])
    with pytest.raises(ValueError, match="divide 0..255 images by 255"):
        D.psnr(a * 255, a * 255)
    with pytest.raises(TypeError, match="uint8"):
        D.psnr(a, (a * 255).to(torch.uint8))
    assert D.psnr(a + 0.001, a) > 50                                    # a little over 1 is clipped, not refused


def test_a_nan_density_update_does_not_empty_the_occupancy_grid():
    occ = T.OccupancyGrid(8)
    nan_field = lambda x: torch.full((x.shape[0],), float("nan"))
    occ.update(nan_field)
    assert occ.fraction() == 1.0                                        # nothing known yet: all stays occupied
    occ.update(BallDensity(0.4, 50.0).density)
    before = occ.mask.clone()
    assert 0 < occ.fraction() < 0.5
    occ.update(nan_field)
    assert torch.equal(occ.mask, before) and torch.isfinite(occ.density).all()
