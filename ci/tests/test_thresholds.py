"""ci/check_thresholds.py --committed: the committed reference runs (full.json) against ci/metadata.yml."""
from __future__ import annotations

import json
from pathlib import Path

import check_thresholds as ct

META = {"98_synthetic": {"thresholds": {"psnr_db": {"min": 30.0}, "ms": {"max": 5.0},
                                        "dice": {"min": 0.8, "required": True}}}}


def reference(tmp_path: Path, metrics: dict, folder: str = "98_synthetic", **extra) -> Path:
    path = tmp_path / folder / "results" / "full.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"notebook": folder, "profile": "full", "metrics": metrics, **extra}))
    return path


def test_a_reference_within_bounds_passes(tmp_path, capsys):
    reference(tmp_path, {"psnr_db": 31.0, "ms": 4.0, "dice": 0.9, "other": 1.0})
    assert ct.check_committed(tmp_path, META) == 0
    assert "98_synthetic: ok: committed full.json against 3 thresholds" in capsys.readouterr().out


def test_a_value_out_of_bounds_fails_and_is_named(tmp_path, capsys):
    reference(tmp_path, {"psnr_db": 29.0, "ms": 6.5, "dice": 0.9})
    assert ct.check_committed(tmp_path, META) == 1
    out = capsys.readouterr().out
    assert "FAIL psnr_db=29 is below the minimum 30.0" in out and "FAIL ms=6.5 is above the maximum 5.0" in out
    assert "98_synthetic: FAILED" in out


def test_a_missing_metric_is_reported_and_fails_only_when_required(tmp_path, capsys):
    reference(tmp_path, {"psnr_db": 31.0})
    assert ct.check_committed(tmp_path, META) == 1
    out = capsys.readouterr().out
    assert "note ms: not recorded in full.json (threshold not marked required" in out
    assert "FAIL dice: not recorded (its threshold is marked required)" in out
    assert "FAIL ms" not in out


def test_bad_inputs_are_named(tmp_path, capsys):
    bad_json = reference(tmp_path, {}, folder="97_broken")
    bad_json.write_text("{ not json")
    reference(tmp_path, {"psnr_db": "high"}, folder="98_synthetic", profile="smoke")
    reference(tmp_path, {}, folder="99_unlisted")
    meta = dict(META, **{"97_broken": {"thresholds": {}}})
    assert ct.check_committed(tmp_path, meta) == 3
    out = capsys.readouterr().out
    assert "97_broken: FAIL" in out and "cannot be read as JSON" in out
    assert "profile is 'smoke', not 'full'" in out and "psnr_db='high' is not a number" in out
    assert "99_unlisted: FAIL 99_unlisted is not listed in ci/metadata.yml" in out


def test_a_malformed_threshold_is_a_failure_naming_it():
    problems = ct.violations({"x": 1.0}, {"x": {"minimum": 3}, "y": {"min": "3"}, "z": [1]})
    assert "threshold x: unknown key 'minimum' (allowed: min, max, required, accept, why)" in problems
    assert "threshold x: has neither min nor max" in problems
    assert "threshold y: min='3' is not a number" in problems
    assert any(p.startswith("threshold z:") for p in problems)


def test_a_fresh_run_still_fails_on_any_missing_metric():
    # The GPU workflow's mode (--nb): a fresh full run must record every metric that has a threshold.
    assert ct.violations({"psnr_db": 31.0}, META["98_synthetic"]["thresholds"]) == [
        "ms: not recorded", "dice: not recorded"]

