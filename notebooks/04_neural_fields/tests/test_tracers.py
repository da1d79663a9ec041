import math

import torch
import torch.nn as nn

import nf_data as D
import nf_fields as Fd
import nf_grids as G
import nf_tracers as T


class SphereSDF(nn.Module):
    """An analytic SDF 'field' (radius r); a dummy parameter gives it a device."""

    def __init__(self, r=0.5):
        super().__init__()
        self.r = r
        self.w = nn.Parameter(torch.zeros(1))
        self.grid = G.DenseGrid(3, (2,), 1)

    @property
    def num_lods(self):
        return 1

    def forward(self, x, lod=None):
        return x.norm(dim=-1) - self.r


class BallDensity(nn.Module):
    """Density s inside a ball of radius r, zero outside; colour red."""

    def __init__(self, r=0.5, s=50.0):
        super().__init__()
        self.r, self.s = r, s
        self.w = nn.Parameter(torch.zeros(1))

    def density(self, x, lod=None):
        return (x.norm(dim=-1) < self.r).float() * self.s

    def forward(self, x, d, lod=None):
        return self.density(x), torch.tensor([1.0, 0.0, 0.0]).expand(x.shape[0], 3)


def test_ray_aabb():
    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 5.0, 3.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    tn, tf = T.ray_aabb(o, d)
    assert torch.allclose(tn[0], torch.tensor(2.0)) and torch.allclose(tf[0], torch.tensor(4.0))
    assert tf[1] < tn[1]                                                  # a miss


def test_sphere_tracer_hits_an_analytic_sphere_at_the_right_depth_with_radial_normals():
    o = torch.tensor([[0.0, 0.0, 3.0], [0.3, 0.1, 3.0], [0.9, 0.9, 3.0]])
    d = torch.tensor([[0.0, 0.0, -1.0]] * 3)
    out = T.SphereTracer(steps=64, eps=1e-4)(SphereSDF(0.5), o, d)
    assert out["hit"].tolist() == [True, True, False]
    assert abs(out["depth"][0].item() - 2.5) < 1e-3
    x = out["x"][1]
    assert abs(x.norm().item() - 0.5) < 1e-3
    assert torch.allclose(out["normal"][1], x / x.norm(), atol=1e-2)


def test_volume_tracer_opacity_and_colour_of_a_dense_ball():
    tracer = T.VolumeTracer(256)
    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.9, 3.0]])
    d = torch.tensor([[0.0, 0.0, -1.0]] * 2)
    out = tracer(BallDensity(0.5, 50.0), o, d)
    # through the centre: 1 unit of density 50 -> opacity ~1, red; the second ray misses: white
    assert out["alpha"][0] > 0.99 and torch.allclose(out["rgb"][0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-2)
    assert out["alpha"][1] < 1e-6 and torch.allclose(out["rgb"][1], torch.ones(3))
    assert abs(out["depth"][0].item() - 2.5) < 0.05
    thin = tracer(BallDensity(0.5, 0.5), o[:1], d[:1])["alpha"][0].item()
    assert abs(thin - (1 - math.exp(-0.5 * 1.0))) < 0.02                 # Beer-Lambert


def test_occupancy_grid_prunes_empty_space_and_the_tracer_skips_it():
    occ = T.OccupancyGrid(16, min_optical_thickness=0.01)
    tracer = T.VolumeTracer(64, occ)
    field = BallDensity(0.4, 50.0)
    o = torch.tensor([[0.0, 0.0, 3.0]])
    d = torch.tensor([[0.0, 0.0, -1.0]])
    before = tracer(field, o, d)["samples"]
    frac = occ.update(field.density)                                     # a tensor: no synchronization
    after = tracer(field, o, d)
    assert isinstance(frac, torch.Tensor) and frac < 0.1 and occ.fraction() == frac.item()
    assert after["samples"] < before / 2
    assert after["alpha"][0] > 0.99                                      # the ball is still there
    assert occ.occupied(torch.zeros(1, 3)).item() and not occ.occupied(torch.full((1, 3), 0.9)).item()
    # the moving maximum decays: a cell keeps its density for a while after the field empties
    field.s = 0.0
    occ.update(field.density)
    assert occ.occupied(torch.zeros(1, 3)).item()


def test_pipeline_renders_a_radiance_field_image_with_normals():
    pipe = Fd.Pipeline(Fd.RadianceField(G.HashGrid(3, levels=4, features=2, log2_table=10, n_min=4, n_max=32)),
                       T.VolumeTracer(16, T.OccupancyGrid(8)))
    out = T.render_image(pipe, D.orbit_camera(0, 0, 2.7), 8, 6, 40.0, normals=True, chunk=17)
    assert out["rgb"].shape == (6, 8, 3) and out["normal"].shape == (6, 8, 3) and out["depth"].shape == (6, 8)
    assert "Pipeline(field=RadianceField[hash grid" in repr(pipe)
    assert any(b is pipe.tracer.occupancy.mask for b in pipe.buffers())   # moves with .to(device)


def test_trunc_exp_gradient_is_bounded():
    x = torch.tensor([100.0], requires_grad=True)
    Fd.trunc_exp(x).backward()
    assert torch.isfinite(x.grad).all() and abs(x.grad.item() - math.exp(15)) < 1.0
    sh = Fd.sh_deg2(torch.tensor([[0.0, 0.0, 1.0]]))
    assert sh.shape == (1, 9) and abs(sh[0, 0].item() - 0.28209479) < 1e-7


def test_fixed_sample_buffer_matches_the_packed_samples_and_flags_rays_that_did_not_fit():
    torch.manual_seed(0)
    pipe = Fd.Pipeline(Fd.RadianceField(G.HashGrid(3, levels=4, features=2, log2_table=10, n_min=4, n_max=32)),
                       T.VolumeTracer(32, T.OccupancyGrid(8)))
    pipe.tracer.occupancy.update(BallDensity(0.5, 50.0).density)
    o, d = D.camera_rays(D.orbit_camera(20, 10, 2.7), 6, 5, 40.0)
    with torch.no_grad():
        packed = pipe(o, d)
        roomy = pipe(o, d, max_samples=4096)
        tight = pipe(o, d, max_samples=packed["samples"] // 2)
    assert roomy["ray_ok"].all() and int(roomy["samples"]) == packed["samples"]
    assert torch.allclose(roomy["rgb"], packed["rgb"], atol=1e-6)
    ok = tight["ray_ok"]
    assert 0 < ok.sum() < ok.numel() and torch.equal(ok, ok.sort(descending=True).values)   # a prefix of rays
    assert torch.allclose(tight["rgb"][ok], packed["rgb"][ok], atol=1e-6)
