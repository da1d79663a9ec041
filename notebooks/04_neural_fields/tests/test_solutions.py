import torch

import nf_data as D
import nf_fields as Fd
import nf_grids as G
import nf_tracers as T
import solutions
from test_tracers import SphereSDF


def test_hash_collision_rate_is_zero_for_direct_levels_and_matches_a_count():
    g = G.HashGrid(2, levels=3, features=2, log2_table=8, n_min=8, n_max=64)   # 81, 1089, 4225 corners vs 256
    rates = solutions.hash_collision_rate(g)
    assert rates[0] == 0.0                                     # 9x9 corners fit the table: direct index
    assert 0.9 < rates[2] <= 1.0                               # 4225 corners in 256 rows: nearly all collide
    assert rates[1] <= rates[2]


def test_depth_to_points_lands_on_the_surface():
    pipe = Fd.Pipeline(SphereSDF(0.5), T.SphereTracer(steps=64, eps=1e-4))
    pts = solutions.depth_to_points(pipe, D.orbit_camera(20, 10, 2.5), 24, 40.0)
    assert pts.shape[0] > 50
    assert (pts.norm(dim=1) - 0.5).abs().max() < 2e-3


def test_product_triplane_multiplies_planes_and_trains():
    g = solutions.ProductTriplaneGrid(3, resolutions=(4, 8), features=2)
    x = torch.rand(64, 3) * 2 - 1
    y = g(x)
    assert y.shape == (64, 4)
    with torch.no_grad():
        g.planes[0][0].zero_()                                 # the xy plane switches LOD 0 off everywhere
    assert torch.allclose(g(x)[:, :2], torch.zeros(64, 2))
    g(x).sum().backward()
    assert g.planes[1].grad.abs().sum() > 0
