import json
import numpy as np
import pytest
import torch

import mo_train


def test_dice_per_class():
    a = torch.tensor([0, 1, 1, 2, 2, 2])
    b = torch.tensor([0, 1, 2, 2, 2, 0])
    d = mo_train.dice_per_class(a, b)
    assert d == pytest.approx([2 * 1 / 3, 2 * 2 / 6])
    assert mo_train.dice_per_class(a, a).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("kind", ["unet", "unetr"])
def test_networks_map_patch_to_three_class_logits(kind):
    net = mo_train.make_net(kind, "tiny", 32).eval()
    with torch.no_grad():
        y = net(torch.zeros(1, 1, 32, 32, 32))
    assert tuple(y.shape) == (1, 3, 32, 32, 32)


def test_unetr_rejects_bad_patch_size():
    with pytest.raises(ValueError, match="divisible by 16"):
        mo_train.make_net("unetr", "tiny", 24)


@pytest.mark.parametrize("recipe", ["regular", "fast"])
def test_fit_lowers_the_loss_and_validates(subjects, recipe, tmp_path):
    cfg = mo_train.Config(recipe=recipe, pixdim=6.0, roi=16, num_samples=4, batch_size=2, epochs=6, val_every=3,
                          num_workers=0, cache_workers=1, optimizer="adam", lr=3e-3)
    torch.manual_seed(0)
    net, h = mo_train.fit(cfg, subjects[:3], subjects[3:], "cpu", checkpoint=tmp_path / "ck.pt")
    assert len(h.epoch_seconds) == 6 and h.val_epochs == [3, 6]
    assert h.loss[-1] < h.loss[0]
    assert all(0.0 <= v <= 1.0 for d in h.val_dice for v in d)
    net2, cfg2 = mo_train.load_checkpoint(tmp_path / "ck.pt")
    assert cfg2.recipe == recipe
    x = torch.randn(1, 1, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), net2(x), atol=1e-5)


def test_history_targets():
    h = mo_train.History(val_epochs=[2, 4], val_dice=[[0.4, 0.6], [0.8, 0.9]], wall=[1.0, 2.0])
    assert h.time_to_target(0.5) == 1.0 and h.epochs_to_target(0.8) == 4 and h.time_to_target(0.95) is None
    # the regular run (budget-limited) peaks at mean 0.7: both are timed to 0.7, cache fill included
    fast = mo_train.History(val_epochs=[1, 2, 3], val_dice=[[0.5, 0.5], [0.7, 0.7], [0.9, 0.9]], wall=[1, 2, 3],
                            setup_seconds=1.0)
    reg = mo_train.History(val_epochs=[1, 2], val_dice=[[0.6, 0.6], [0.7, 0.7]], wall=[10, 20], setup_seconds=0.0)
    assert mo_train.matched_dice_speedup(fast, reg) == {"val_mean_dice": 0.7, "fast_s": 3.0, "regular_s": 20.0,
                                                        "speedup": 20.0 / 3.0}
    assert mo_train.matched_dice_speedup(fast, mo_train.History()) is None


def test_ddp_one_and_two_processes_same_global_batch(synth_subjects, tmp_path):
    import mo_ddp
    cfg = mo_train.Config(recipe="fast", pixdim=6.0, roi=16, num_samples=2, epochs=1, val_every=1, cache_workers=1,
                          synth=True)
    res = mo_ddp.compare_world_sizes(cfg, synth_subjects[:2], synth_subjects[2:], tmp_path, nprocs=(1, 2),
                                     global_batch=2, timeout=300, sync_bn_run=True, seed_run=True)
    # the SyncBatchNorm run needs CUDA: on a CPU its processes refuse it, and the failure is recorded, not raised
    assert "sync_bn needs CUDA" in res["sync_bn"]["error"]
    assert [r["world_size"] for r in res["runs"].values()] == [1, 2]
    assert [r["per_process_batch"] for r in res["runs"].values()] == [2, 1]
    assert all(len(r["epoch_seconds"]) == 1 and len(r["val_dice"]) == 2 for r in res["runs"].values())
    assert res["epoch_speedup"] > 0 and 0 <= res["val_mean_dice_difference"] <= 1
    assert (tmp_path / "np2" / "checkpoint.pt").exists()
    # the seed-to-seed scale: one process again, the whole global batch, the next seed
    noise = res["seed_noise"]
    assert noise["seed"] == 1 and noise["world_size"] == 1 and 0 <= noise["val_mean_dice_difference"] <= 1
    spec = json.loads((tmp_path / "np1_seed" / "spec.json").read_text())["config"]
    assert spec["seed"] == 1 and spec["batch_size"] == 2
    with pytest.raises(ValueError, match="does not split"):
        mo_ddp.compare_world_sizes(cfg, synth_subjects[:2], [], tmp_path, nprocs=(2,), global_batch=3)


def test_ddp_comparison_cut_short_resumes_with_its_finished_runs(tmp_path, monkeypatch):
    """A comparison stopped after some of its runs (here: the third fails): the next attempt launches only the
    runs not finished (and a run of another config again), through Stage.piece's kept work folder."""
    import shutil
    from pathlib import Path
    import mo_ddp
    import mo_stages
    launched, fail_at = [], {"n": 2}

    def fake_launch(cfg, train_items, val_items, out, nproc, timeout=None):
        if len(launched) == fail_at["n"]:
            raise RuntimeError("DDP training failed (exit -9): machine lost")
        Path(out).mkdir(parents=True, exist_ok=True)      # as launch() does: spec, checkpoint and history go there
        launched.append((Path(out).name, cfg.seed, cfg.batch_size))
        h = mo_train.History(epoch_seconds=[2.0 / nproc] * 3, val_epochs=[3], val_dice=[[0.8, 0.7 + cfg.seed / 100]],
                             world_size=nproc)
        return h, Path(out) / "checkpoint.pt", ""
    monkeypatch.setattr(mo_ddp, "launch", fake_launch)
    K = {**mo_stages.params("tiny"), "size": "full"}      # the GPU piece's run list: 1, 2, seed, SyncBatchNorm
    D = {"train": [{"id": "a"}, {"id": "b"}], "val": [{"id": "c"}]}
    st = mo_stages.Stage(tmp_path, log=lambda m: None)
    with pytest.raises(RuntimeError, match="machine lost"):
        st.piece("ddp_compare", mo_stages.ddp_piece(K, D, seed=0))
    assert [n for n, _, _ in launched] == ["np1", "np2"] and not st.done("ddp_compare")
    # the same kept runs, for another seed below
    shutil.copytree(tmp_path / ".ddp_compare.partial", tmp_path / "other" / ".ddp_compare.partial")
    fail_at["n"] = 10 ** 6
    res = st.piece("ddp_compare", mo_stages.ddp_piece(K, D, seed=0))
    assert [n for n, _, _ in launched] == ["np1", "np2", "np1_seed", "np2_sync_bn"]   # np1, np2 not run again
    assert res["epoch_speedup"] == pytest.approx(2.0)
    assert res["seed_noise"]["val_mean_dice_difference"] == pytest.approx(0.005)
    assert not (tmp_path / ".ddp_compare.partial").exists() and st.done("ddp_compare")
    # another seed is another config: its runs are launched, not taken from a kept record
    st2 = mo_stages.Stage(tmp_path / "other", log=lambda m: None)
    del launched[:]
    st2.piece("ddp_compare", mo_stages.ddp_piece(K, D, seed=1))
    assert [s for _, s, _ in launched] == [1, 1, 2, 1]


def test_race_stops_at_the_target_and_counts_the_cache_fill(synth_subjects):
    cfg = mo_train.Config(recipe="fast", pixdim=6.0, roi=16, num_samples=2, cache_workers=1, synth=True)
    res = mo_train.race({"easy": cfg}, synth_subjects[:2], synth_subjects[2:], "cpu",
                        target=0.0, max_epochs=2)
    easy = res["easy"]
    assert easy["epochs_run"] == 1 and easy["epochs_to_target"] == 1
    h = mo_train.History(**easy["history"])
    assert easy["time_to_target_s"] == pytest.approx(h.wall[0] + h.setup_seconds)
    assert len(easy["val_threshold_baseline"]) == 2
    never = mo_train.race({"x": cfg}, synth_subjects[:2], synth_subjects[2:], "cpu", target=1.01, max_epochs=2)["x"]
    assert never["epochs_run"] == 2 and never["time_to_target_s"] is None and never["stopped_by"] == "max_epochs"
    assert never["elapsed_s"] >= never["setup_s"] + sum(never["history"]["epoch_seconds"])
    short = mo_train.race({"x": cfg}, synth_subjects[:2], synth_subjects[2:], "cpu", target=1.01, max_epochs=5,
                          time_budget_s=0.0)["x"]
    assert short["epochs_run"] == 1 and short["stopped_by"] == "time_budget"
    assert mo_train.recipe_differences(mo_train.Config(recipe="regular"), cfg) == {
        "regular": "fp32, adam lr 0.001", "fast": "AMP (fp16 autocast + GradScaler), sgd lr 0.1, channels_last_3d, cudnn.benchmark"}


@pytest.mark.parametrize("case, words", [
    ("float", "is stored as float32 (file dtype float32); a label map holds integer classes 0..2, and this one has "
              "non-integer values [0.5]"),
    ("minus_one", "has values [-1] outside the label set 0..2"),
    ("shape", "has shape"),
    ("affine", "different voxel-to-mm affine"),
])
def test_fit_refuses_bad_label_maps_up_front_naming_the_file(subjects, tmp_path, case, words):
    import nibabel as nib
    import mo_data
    src = nib.load(subjects[1]["label"])
    lab = np.asarray(src.dataobj).astype(np.int16)
    affine = src.affine
    if case == "float":
        lab = lab.astype(np.float32) / 2          # 0 / 0.5 / 1: grey matter would become "0.5"
    elif case == "minus_one":
        lab[0, 0, 0] = -1
    elif case == "shape":
        lab = lab[:, :, :-2]
    else:
        affine = affine @ np.diag([1.0, 1.0, 2.0, 1.0])
    bad = tmp_path / f"{case}_label.nii.gz"
    nib.save(nib.Nifti1Image(lab, affine), str(bad))
    items = [subjects[0], {**subjects[1], "label": str(bad)}]
    cfg = mo_train.Config(recipe="fast", pixdim=6.0, roi=16, epochs=1, cache_workers=1)
    with pytest.raises(mo_data.LabelError) as err:
        mo_train.fit(cfg, items, [], "cpu", checkpoint=tmp_path / "ck.pt")
    assert str(bad) in str(err.value) and words in str(err.value), str(err.value)
    assert not (tmp_path / "ck.pt").exists()


def test_race_speedups_ratio_or_bound():
    """Regular over fast: a ratio when both reached the target; otherwise the run that stopped short bounds it."""
    run = lambda ttt, elapsed, epoch: {"time_to_target_s": ttt, "elapsed_s": elapsed, "epoch_s": epoch}
    both = mo_train.race_speedups({"regular": run(200.0, 200.0, 4.0), "fast": run(20.0, 20.0, 1.0)})
    assert both == {"fast_vs_regular_epoch_speedup": 4.0, "fast_vs_regular_time_to_dice_speedup": 10.0}
    reg_short = mo_train.race_speedups({"regular": run(None, 300.0, 4.0), "fast": run(20.0, 20.0, 1.0)})
    assert reg_short["fast_vs_regular_time_to_dice_speedup"] is None
    assert reg_short["fast_vs_regular_time_to_dice_speedup_lower_bound"] == 15.0
    assert "fast_vs_regular_time_to_dice_speedup_upper_bound" not in reg_short
    fast_short = mo_train.race_speedups({"regular": run(235.0, 235.0, 4.49), "fast": run(None, 154.0, 3.89)})
    assert fast_short["fast_vs_regular_time_to_dice_speedup_upper_bound"] == pytest.approx(235.0 / 154.0)
    assert "fast_vs_regular_time_to_dice_speedup_lower_bound" not in fast_short
    neither = mo_train.race_speedups({"regular": run(None, 300.0, 4.0), "fast": run(None, 300.0, 1.0)})
    assert set(neither) == {"fast_vs_regular_epoch_speedup", "fast_vs_regular_time_to_dice_speedup"}
