import numpy as np
import pytest
import torch

import nf_bench
import nf_compress
import nf_data as D
import nf_fields as Fd
import nf_grids as G
import nf_tracers as T
import nf_train
import nf_viewer as V


def test_pixel_coords_are_centres_in_the_unit_square():
    xy = nf_train.pixel_coords(2, 4)
    assert xy.shape == (8, 2)
    assert torch.allclose(xy[0], torch.tensor([-0.75, -0.5])) and torch.allclose(xy[-1], torch.tensor([0.75, 0.5]))


def test_fit_image_raises_psnr_and_records_time_to_target():
    torch.manual_seed(0)
    img = torch.rand(1, 3, 4, 4)
    img = torch.nn.functional.interpolate(img, size=(16, 16), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    f = Fd.ImageField(G.HashGrid(2, levels=4, features=2, log2_table=10, n_min=4, n_max=16))
    run = nf_train.fit_image(f, img.contiguous(), max_steps=80, time_budget=60, batch=256, eval_every=20,
                             target_psnr=20.0, show_progress=False)
    assert run["psnr"][-1] > run["psnr"][0] + 5
    assert run["steps_done"] == 80 and run["steps"][-1] == 80
    assert run["time_to_target"] is None or run["time_to_target"] <= run["train_seconds"]


def test_fit_stops_at_the_time_budget():
    f = Fd.ImageField(G.DenseGrid(2, (8,), 2))
    run = nf_train.fit_image(f, torch.rand(8, 8, 3), max_steps=10**9, time_budget=0.3, batch=64,
                             eval_every=10**9, show_progress=False)
    assert 0.3 <= run["train_seconds"] < 5 and run["steps_done"] > 0


def test_chamfer_distance():
    side = torch.arange(5.0) * 0.5                             # a lattice of spacing 0.5
    a = torch.stack(torch.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3)
    assert nf_train.chamfer_distance(a, a) == 0.0
    # shifted by 0.1 < spacing / 2: every nearest neighbour is the shifted copy, 0.1 each way
    assert nf_train.chamfer_distance(a, a + torch.tensor([0.1, 0.0, 0.0])) == pytest.approx(0.2, abs=1e-5)


def test_sdf_training_and_marching_cubes_recover_a_sphere():
    torch.manual_seed(0)
    pts = torch.rand(4000, 3) * 2 - 1
    sdf = pts.norm(dim=1) - 0.5
    f = Fd.SDFField(G.DenseGrid(3, (8,), 8), hidden=32)
    nf_train.fit_sdf(f, pts, sdf, max_steps=300, time_budget=60, batch=1024, show_progress=False)
    m = nf_train.extract_mesh(f, 24)
    assert m is not None
    r = m.verts.norm(dim=1)
    assert abs(r.mean().item() - 0.5) < 0.05


def _tiny_viewer():
    torch.manual_seed(0)
    nerf = Fd.Pipeline(Fd.RadianceField(G.HashGrid(3, levels=4, features=2, log2_table=10, n_min=4, n_max=32)),
                       T.VolumeTracer(16, T.OccupancyGrid(8)))
    pts = torch.rand(500, 3) - 0.5
    sdf = Fd.Pipeline(Fd.SDFField(G.OctreeGrid.from_points(pts, base_level=1, num_lods=2, features=4)),
                      T.SphereTracer(steps=8))
    calls = []
    v = V.Viewer({"nerf": nerf, "sdf": sdf}, trainers={"nerf": calls.append},
                 cameras={"nerf": D.sphere_cameras(3, 2.7)}, size=24)
    return v, calls


def test_viewer_renders_every_channel_and_overlays_change_pixels():
    v, _ = _tiny_viewer()
    for ch in V.CHANNELS:
        img = v.render_frame("nerf", channel=ch, size=20)
        assert img.shape == (20, 20, 3) and img.min() >= 0 and img.max() <= 1
    assert v.last_frame_ms > 0
    plain = v.render_frame("nerf", zoom=0.5, size=40)
    over = v.render_frame("nerf", zoom=0.5, size=40, frustums=True, occupancy=True)
    assert not np.allclose(plain, over)
    assert V.occupied_centers(v.pipelines["sdf"], 1).shape[1] == 3
    with pytest.raises(ValueError, match="channel"):
        v.render_frame("nerf", channel="albedo")


def test_frame_png_times_what_the_learner_waits_for():
    import io
    from PIL import Image
    v, _ = _tiny_viewer()
    png = v.frame_png("nerf", zoom=0.5, size=24, frustums=True, occupancy=True)
    whole = v.last_frame_ms
    assert 0 < v.last_render_ms <= whole                                # encoding is part of the frame's time
    frame = v.render_frame("nerf", zoom=0.5, size=24, frustums=True, occupancy=True)
    decoded = np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32) / 255
    assert decoded.shape == (24, 24, 3) and np.abs(decoded - frame).max() <= 0.5 / 255 + 1e-6
    assert whole > 0 and v.last_frame_ms > 0


def test_projection_inverts_camera_rays():
    c2w = D.orbit_camera(40, 15, 3.0)
    o, d = D.camera_rays(c2w, 10, 8, 40.0)
    pts = o + 2.0 * d
    uv, z = V.project(pts, c2w, 10, 8, 40.0)
    j, i = torch.meshgrid(torch.arange(8.0), torch.arange(10.0), indexing="ij")
    assert torch.allclose(uv, torch.stack([i, j], -1).reshape(-1, 2), atol=1e-3)
    assert (z > 0).all()


def test_show_draws_a_turntable_without_a_front_end_and_the_widget_trains():
    v, calls = _tiny_viewer()
    assert V.live_frontend() is False                        # pytest is not a person at a front end
    fig = v.show("nerf", views=3, size=16)
    assert fig is not None and len(fig.axes) == 3
    box = v.widget()                                         # builds the live widget (no front end needed)
    controls = box.children[1].children
    button = [c for c in controls if getattr(c, "description", "").startswith("train")][0]
    button.click()
    assert calls == [v.train_steps]
    v._widgets["channel"].value = "depth"                    # a control change redraws
    assert box.children[0].value[:4] == b"\x89PNG"


def test_encoding_throughput_reports_positive_rates():
    g = G.HashGrid(3, levels=4, features=2, log2_table=10, n_min=4, n_max=32)
    r = nf_bench.encoding_throughput(g, 1024, repeat=2)
    assert r["forward_pts_s"] > 0 and r["backward_pts_s"] > 0
    table = nf_bench.bench_grids({"hash": g, "dense": G.DenseGrid(3, (8,), 2)}, 512, repeat=2, show_progress=False)
    assert list(table.index) == ["hash", "dense"] and (table["forward Mpts/s"] > 0).all()


def _tiny_nerf_data():
    torch.manual_seed(0)
    views = D.render_dataset(D.Scene(), 4, 1, 12, supersample=1)
    pipe = Fd.Pipeline(Fd.RadianceField(G.HashGrid(3, levels=4, features=2, log2_table=10, n_min=4, n_max=32), hidden=16),
                       T.VolumeTracer(16, T.OccupancyGrid(8)))
    return views, pipe


def test_fit_nerf_with_a_fixed_sample_buffer_learns_and_reports_speed():
    views, pipe = _tiny_nerf_data()
    before, _ = nf_train.evaluate_views(pipe, views["test"])
    run = nf_train.fit_nerf(pipe, views["train"], views["test"], 30, 60, batch_rays=128, lr=3e-2, eval_every=15,
                            warmup=8, occupancy_every=8, max_samples=1024, show_progress=False, target_psnr=0.0)
    assert run["steps_done"] == 30 and run["steps"] == [15, 30] and run["psnr"][-1] > before + 1.5
    assert 0 < run["rays_used"] <= 30 * 128 and run["rays_per_s"] > 0 and run["steps_per_s"] > 0
    assert run["time_to_target"] == run["seconds"][0]                   # 0 dB: reached at the first evaluation
    scores = nf_train.view_scores(nf_train.evaluate_views(pipe, views["test"])[1], views["test"])
    assert set(scores) == {"psnr", "ssim", "psnr_object", "ssim_object"}


def test_the_fixed_buffer_nerf_step_is_one_graph_without_host_syncs():
    """torch.compile(fullgraph=True) refuses graph breaks: a .item(), nonzero() or Python branch on a
    tensor in sampling, the field or compositing would fail here. The 'eager' backend only traces."""
    views, pipe = _tiny_nerf_data()
    o, d, c = views["train"].rays()
    torch._dynamo.reset()
    step = torch.compile(lambda a, b, cc: nf_train.nerf_loss(pipe, a, b, cc, 512), backend="eager", fullgraph=True)
    loss, used, samples = step(o[:64], d[:64], c[:64])
    loss.backward()
    assert torch.isfinite(loss) and 0 < used <= 64 and samples > 0
    assert pipe.field.grid.table.grad.abs().sum() > 0


def test_grids_sized_to_a_budget_stay_within_it_and_the_hash_hashes_its_fine_levels():
    img = torch.rand(32, 32, 3)
    edges = nf_compress.edge_ranked_points(img)
    budget = img.numel() / 4
    for kind in G.GRID_TYPES:
        f = nf_compress.field_for_budget(kind, budget, 32, hidden=8, layers=1, edge_points=edges, hash_levels=6,
                                         hash_n_min=4)
        assert 0.3 * budget < nf_compress.stored_params(f) <= budget, kind
    h = nf_compress.field_for_budget("hash", budget, 32, hidden=8, layers=1, hash_levels=6, hash_n_min=4).grid
    assert h.hashed[-1] and not h.hashed[0]
    with pytest.raises(ValueError, match="no dense grid fits.*smallest candidate"):
        nf_compress.field_for_budget("dense", 10, 32, hidden=8, layers=1)
