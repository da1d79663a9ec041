"""Pytest checks of the workflow files and the thresholds checker (run by `make test`)."""
from pathlib import Path

import pytest
import yaml

import check_thresholds
from notebooks import ROOT, metadata

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def load(path):
    doc = yaml.safe_load(path.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_valid(path):
    doc = load(path)
    assert doc.get("name") and doc.get("on") and doc.get("jobs"), "needs name, on and jobs"
    for job_name, job in doc["jobs"].items():
        assert "runs-on" in job, job_name
        steps = job.get("steps")
        assert steps, f"{job_name} has no steps"
        for step in steps:
            assert ("uses" in step) != ("run" in step), f"{job_name}: a step needs exactly one of uses/run: {step}"


def test_cpu_workflow_runs_make_test():
    doc = load(ROOT / ".github" / "workflows" / "cpu.yml")
    assert "pull_request" in doc["on"]
    assert any(s.get("run") == "make test" for job in doc["jobs"].values() for s in job["steps"])


def test_gpu_matrix_covers_every_notebook_and_checks_thresholds():
    doc = load(ROOT / ".github" / "workflows" / "gpu.yml")
    job = doc["jobs"]["full"]
    assert "gpu" in job["runs-on"] and "self-hosted" in job["runs-on"]
    assert set(job["strategy"]["matrix"]["nb"]) == set(metadata())
    runs = " ".join(s.get("run", "") for s in job["steps"])
    assert "PROFILE=full" in runs and "check_thresholds.py" in runs
    assert any("upload-artifact" in s.get("uses", "") for s in job["steps"])


def test_ci_run_calls_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_thresholds_catch_a_bad_value():
    th = {"psnr": {"min": 28.0}, "ms": {"max": 5.0}}
    assert check_thresholds.violations({"psnr": 30.0, "ms": 4.0}, th) == []
    assert len(check_thresholds.violations({"psnr": 20.0, "ms": 9.0}, th)) == 2
    assert check_thresholds.violations({}, th) == ["psnr: not recorded", "ms: not recorded"]


def test_every_threshold_names_min_or_max():
    for folder, meta in metadata().items():
        for name, bound in (meta.get("thresholds") or {}).items():
            assert set(bound) <= {"min", "max"} and bound, f"{folder}.{name}"


def test_readme_tables_match_metadata():
    import readme_tables
    text = readme_tables.README.read_text()
    assert readme_tables.render(text, metadata()) == text, "run: python ci/readme_tables.py"
    assert "make run" in text and "make test" in text
