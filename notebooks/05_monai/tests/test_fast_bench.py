"""mo_fast_bench.py's time-to-Dice mode at CPU size: both recipes in one run, the JSON the GPU run will write."""
import json

import pytest

import mo_fast_bench


def test_time_to_dice_mode_writes_both_recipes_and_the_speedup(tmp_path):
    out = tmp_path / "ttd.json"
    assert mo_fast_bench.main(["--mode", "time_to_dice", "--tiny", "--target", "0.0", "--max-epochs", "2",
                               "--n-train", "2", "--data-root", str(tmp_path / "data"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["machine"]["cpu_count"] > 0 and r["device"] == "cpu"
    assert set(r["results"]) == {"regular", "fast"} and set(r["recipes"]) == {"regular", "fast"}
    for x in r["results"].values():     # target 0.0: reached at the first validation, cache fill included
        assert x["epochs_run"] == 1 and x["stopped_by"] == "target" and x["time_to_target_s"] >= x["setup_s"]
    expect = r["results"]["regular"]["time_to_target_s"] / r["results"]["fast"]["time_to_target_s"]
    assert r["fast_vs_regular_time_to_dice_speedup"] == expect
    assert r["config"]["fast"]["synth"] and r["config"]["regular"]["recipe"] == "regular"

    # the same measurement split over two commands (one recipe each) merges into one result
    parts = []
    for rec in ("fast", "regular"):
        part = {**r, "results": {rec: r["results"][rec]}, "config": {rec: r["config"][rec]}}
        parts.append(tmp_path / f"{rec}.json")
        parts[-1].write_text(json.dumps(part))
    merged = tmp_path / "merged.json"
    assert mo_fast_bench.main(["--mode", "merge", "--inputs", *map(str, parts), "--out", str(merged)]) == 0
    assert json.loads(merged.read_text())["fast_vs_regular_time_to_dice_speedup"] == expect
    other = json.loads(parts[1].read_text())
    other["target_val_mean_dice_gm_wm"] = 0.5
    parts[1].write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="cannot merge"):
        mo_fast_bench.main(["--mode", "merge", "--inputs", *map(str, parts), "--out", str(merged)])


def test_transforms_mode_times_each_transform_after_the_cache(tmp_path):
    """--mode transforms: every transform from the first random one on (the synthesis first) has a time per
    item, the cached part is named, and the per-epoch sum is the per-item times times the subjects."""
    out = tmp_path / "t.json"
    assert mo_fast_bench.main(["--mode", "transforms", "--tiny", "--epochs", "2", "--n-train", "2",
                               "--data-root", str(tmp_path / "data"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    names = list(r["ms_per_item"])
    assert names[0] == "RandSynthd" and "RandCropByLabelClassesd" in names and "RandAffined" in names
    assert "RandSynthd" not in r["cached_transforms"] and "Spacingd" in r["cached_transforms"]
    assert all(v > 0 for v in r["ms_per_item"].values())
    assert r["data_s_per_epoch"] == pytest.approx(sum(r["ms_per_item"].values()) * 2 / 1e3)


def test_steps_mode_times_the_training_step_of_each_recipe(tmp_path):
    """--mode steps: both recipes' training step alone (mo_train.train_step, as fit() runs it) on random batches of
    the recipe's shape; per-epoch seconds are the median step times the steps of an epoch."""
    out = tmp_path / "s.json"
    assert mo_fast_bench.main(["--mode", "steps", "--tiny", "--epochs", "1", "--n-train", "4",
                               "--data-root", str(tmp_path / "data"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["recipes"]) == {"fast", "regular"} and r["steps_per_epoch"] == 2 and r["rows_per_step"] == 4
    for x in r["recipes"].values():
        assert x["ms_per_step"] > 0 and x["s_per_epoch_of_steps"] == pytest.approx(x["ms_per_step"] * 2 / 1e3)
        assert x["amp"] is False    # CPU: no AMP, no channels_last


def test_profile_mode_writes_the_op_tables(tmp_path):
    out = tmp_path / "p.json"
    assert mo_fast_bench.main(["--mode", "profile", "--tiny", "--recipes", "fast", "--epochs", "1", "--n-train", "2",
                               "--data-root", str(tmp_path / "data"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())["recipes"]
    assert set(r) == {"fast"} and r["fast"]["epoch_seconds"] > 0
    assert "Self CPU" in r["fast"]["top_self_cpu"] and "aten::" in r["fast"]["top_self_cpu"]


def test_time_to_dice_on_the_notebooks_data_with_another_optimiser(tmp_path):
    """--notebook-data races on the notebook's own subjects and settings (mo_stages, tiny profile here: 6 mm,
    2 train + 1 validation subject); --optimizer/--lr replace the recipe's own and are recorded."""
    import mo_stages
    out = tmp_path / "ttd.json"
    assert mo_fast_bench.main(["--mode", "time_to_dice", "--tiny", "--notebook-data", "--recipes", "fast",
                               "--optimizer", "adam", "--lr", "0.002", "--target", "0.0", "--max-epochs", "1",
                               "--data-root", str(tmp_path / "data"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    K = mo_stages.params("tiny")
    cfg = r["config"]["fast"]
    assert (cfg["optimizer"], cfg["lr"], cfg["pixdim"], cfg["roi"]) == ("adam", 0.002, K["pixdim"], K["roi"])
    assert len(r["results"]["fast"]["val_threshold_baseline"]) == 2 and "fast_vs_regular_time_to_dice_speedup" not in r


@pytest.mark.parametrize("args, msg", [(["--mode", "steps", "--optimizer", "adam"], "are for --mode time_to_dice"),
                                       (["--mode", "epoch", "--notebook-data"], "are for --mode time_to_dice"),
                                       (["--lr", "0"], "--lr must be > 0"), (["--lr", "nan"], "--lr must be > 0")])
def test_bad_arguments_are_refused_by_name(args, msg, capsys):
    with pytest.raises(SystemExit):
        mo_fast_bench.main(args)
    assert msg in capsys.readouterr().err
