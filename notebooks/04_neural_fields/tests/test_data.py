import math
from pathlib import Path

import numpy as np
import pytest
import torch

import labkit
import nf_data as D

MESHES = labkit.data_root() / "meshes"                  # $LABKIT_DATA_ROOT, else <repo>/data


def cube():
    v = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], dtype=np.float64)
    # 12 outward-oriented triangles of the unit cube (vertex index = 4x + 2y + z)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return v, f


@pytest.mark.parametrize("binary", [True, False])
def test_ply_round_trip_ascii_and_binary(tmp_path, binary):
    v, f = cube()
    path = tmp_path / "cube.ply"
    D.write_ply(path, v, f, binary=binary)
    v2, f2 = D.read_ply(path)
    assert np.allclose(v2, v) and np.array_equal(f2, f)


def test_ply_quads_are_fanned_and_big_endian_is_read(tmp_path):
    import struct
    head = ("ply\nformat binary_big_endian 1.0\nelement vertex 4\nproperty double x\nproperty double y\n"
            "property double z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n").encode()
    body = b"".join(struct.pack(">3d", *p) for p in [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)])
    body += struct.pack(">B4i", 4, 0, 1, 2, 3)
    (tmp_path / "q.ply").write_bytes(head + body)
    v, f = D.read_ply(tmp_path / "q.ply")
    assert v.shape == (4, 3) and f.tolist() == [[0, 1, 2], [0, 2, 3]]
    (tmp_path / "bad.ply").write_bytes(b"not a ply")
    with pytest.raises(ValueError, match="PLY"):
        D.read_ply(tmp_path / "bad.ply")


@pytest.mark.skipif(not (MESHES / "ant.ply").exists(), reason="data not prepared (make data)")
def test_ant_mesh_is_read_and_watertight():
    v, f = D.read_ply(MESHES / "ant.ply")
    assert v.shape == (486, 3) and f.shape == (912, 3)
    m = D.Mesh.from_ply(MESHES / "ant.ply")
    assert m.is_watertight()
    assert m.verts.abs().max() <= 0.8 + 1e-5


def test_cube_sdf_is_exact():
    v, f = cube()
    m = D.Mesh(torch.tensor(v, dtype=torch.float32), torch.tensor(f))
    assert m.is_watertight()
    p = torch.rand(3000, 3) * 2 - 1
    q = p.abs() - 0.5                                                    # analytic box SDF
    exact = q.clamp_min(0).norm(dim=1) + q.max(1).values.clamp_max(0)
    assert torch.allclose(m.sdf(p), exact, atol=1e-5)
    w = D.winding_number(torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0]]), m.triangles)
    assert torch.allclose(w, torch.tensor([1.0, 0.0], dtype=w.dtype), atol=1e-6)


def test_surface_samples_lie_on_the_surface_and_sdf_samples_mix_near_and_far():
    v, f = cube()
    m = D.Mesh(torch.tensor(v, dtype=torch.float32), torch.tensor(f))
    s = m.sample_surface(500)
    assert m.sdf(s).abs().max() < 1e-5
    pts, sdf = m.sdf_samples(1000, near_sigma=(0.01,), uniform_frac=0.5)
    assert pts.shape == (1000, 3) and sdf.shape == (1000,)
    assert (sdf.abs() < 0.05).float().mean() > 0.4 and (sdf > 0.2).any()


def test_cameras_look_at_the_origin_and_rays_are_unit():
    c2w = D.orbit_camera(30, 20, 3.0)
    assert torch.allclose(c2w[:, 3].norm(), torch.tensor(3.0))
    o, d = D.camera_rays(c2w, 9, 9, 40.0)
    assert torch.allclose(d.norm(dim=1), torch.ones(81), atol=1e-6)
    centre = d[4 * 9 + 4]
    assert torch.allclose(centre, -c2w[:, 3] / 3.0, atol=1e-6)        # the middle pixel looks at the origin
    assert torch.allclose(c2w[:, :3].t() @ c2w[:, :3], torch.eye(3), atol=1e-6)
    cams = D.sphere_cameras(10, 2.7, seed=1)
    assert cams.shape == (10, 3, 4) and torch.allclose(cams[:, :, 3].norm(dim=1), torch.full((10,), 2.7), atol=1e-5)


def test_scene_renders_objects_and_a_white_background():
    sc = D.Scene()
    img, depth = sc.render(D.orbit_camera(0, 10, 2.7), 24, 24, 40.0, supersample=1)
    assert img.shape == (24, 24, 3) and (img >= 0).all() and (img <= 1).all()
    hit = torch.isfinite(depth)
    assert 0.1 < hit.float().mean() < 0.9
    assert torch.allclose(img[~hit], torch.ones_like(img[~hit]))
    ds = D.render_dataset(sc, 3, 2, 8, supersample=1)
    assert ds["train"].images.shape == (3, 8, 8, 3) and ds["test"].poses.shape == (2, 3, 4)
    m = ds["train"].masks                                               # object pixels: the centre ray hits
    assert m.shape == (3, 8, 8) and 0 < m.float().mean() < 1
    assert torch.allclose(ds["train"].images[~m], torch.ones(int((~m).sum()), 3))
    assert not torch.allclose(ds["train"].poses[0], ds["test"].poses[0])
    o, d, c = ds["train"].rays()
    assert o.shape == d.shape == c.shape == (3 * 64, 3)


def test_psnr():
    a = torch.zeros(4, 4, 3)
    assert D.psnr(a + 0.1, a) == pytest.approx(20.0)
    assert math.isinf(D.psnr(a, a))
    b = a.clone()
    b[0, 0] = 0.5                                                       # one pixel off by 0.5
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, :2] = True                                                  # it and one exact pixel
    assert D.psnr(b, a, mask) == pytest.approx(-10 * math.log10(0.25 / 2))
    assert math.isnan(D.psnr(b, a, torch.zeros(4, 4, dtype=torch.bool)))


def test_ssim_matches_scikit_image_and_masks_select_pixels():
    from skimage.metrics import structural_similarity
    g = torch.Generator().manual_seed(0)
    a = torch.rand(40, 36, 3, generator=g)
    b = (a + 0.1 * torch.randn(40, 36, 3, generator=g)).clamp(0, 1)
    ref = structural_similarity(b.numpy(), a.numpy(), channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=1.0)
    assert D.ssim(b, a) == pytest.approx(ref, abs=1e-6)
    assert D.ssim(a, a) == pytest.approx(1.0)
    left = torch.zeros(40, 36, dtype=torch.bool)
    left[:, :18] = True
    c = b.clone()
    c[:, 18:] = a[:, 18:]                                               # the right half exact
    assert D.ssim(c, a, ~left) > D.ssim(c, a) > D.ssim(c, a, left)
    with pytest.raises(ValueError, match="at least 11x11"):
        D.ssim(a[:8, :8], a[:8, :8])
