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
            assert check_thresholds.spec_problems(name, bound) == [], f"{folder}.{name}"
            assert set(bound) <= set(check_thresholds.SPEC_KEYS) and ("min" in bound or "max" in bound), f"{folder}.{name}"


def test_a_stated_shortfall_is_reported_and_a_regression_past_it_fails():
    th = {"ratio": {"min": 5.0, "accept": 2.5, "why": "measured reason"},
          "gap": {"max": 0.03, "accept": 0.04, "why": "one seed"}}
    assert check_thresholds.violations({"ratio": 6.0, "gap": 0.01}, th) == []
    assert check_thresholds.shortfalls({"ratio": 6.0, "gap": 0.01}, th) == []
    assert check_thresholds.violations({"ratio": 2.7, "gap": 0.035}, th) == []
    notes = check_thresholds.shortfalls({"ratio": 2.7, "gap": 0.035}, th)
    assert len(notes) == 2 and all("goal missed, stated" in n for n in notes)
    bad = check_thresholds.violations({"ratio": 2.4, "gap": 0.05}, th)
    assert len(bad) == 2 and all("past the accepted" in b for b in bad)
    v = check_thresholds.verdict     # the one judgement the site shows too
    assert [v(x, th["ratio"]) for x in (6.0, 5.0, 2.7, 2.5, 2.4)] == ["meets", "meets", "stated", "stated", "fails"]
    assert [v(x, {"max": 0.03}) for x in (0.01, 0.05)] == ["meets", "fails"]
    assert v(True, th["ratio"]) == v("6", th["ratio"]) == v(1.0, {"min": 5, "accept": 2}) == v(1.0, None) == ""


def test_accept_needs_a_reason_and_must_lie_past_the_goal():
    sp = check_thresholds.spec_problems
    assert sp("r", {"min": 5, "accept": 2}) != []                     # no why
    assert sp("r", {"min": 5, "why": "x"}) != []                      # no accept
    assert sp("r", {"min": 5, "accept": 6, "why": "x"}) != []         # on the goal's side: meaningless
    assert sp("r", {"min": 1, "max": 5, "accept": 0.5, "why": "x"}) != []
    assert sp("r", {"max": 0.03, "accept": 0.04, "why": "x"}) == []
    # a bad spec is a failure, never a silent pass
    assert check_thresholds.violations({"r": 2.0}, {"r": {"min": 5, "accept": 2}}) != []


def test_readme_tables_match_metadata():
    import readme_tables
    text = readme_tables.README.read_text()
    assert readme_tables.render(text, metadata()) == text, "run: python ci/readme_tables.py"
    assert "make run" in text and "make test" in text
