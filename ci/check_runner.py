"""Pytest checks of the papermill runner's contract (run by `make test`): a bad parameter stops the
notebook with a message naming the allowed values, and the runner names the notebook and the cell."""
import json
import re
import subprocess
import sys

from notebooks import ROOT

RUNNER = [sys.executable, str(ROOT / "ci" / "run_notebooks.py"), "--nb", "00_environment_check"]


def run(args, tmp_path):
    env = {"LABKIT_BUILD_DIR": str(tmp_path / "build"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    import os
    env = dict(os.environ, **env)
    return subprocess.run(RUNNER + args, capture_output=True, text=True, env=env, timeout=600)


def test_bad_profile_in_the_notebook_names_the_allowed_values(tmp_path):
    res = run(["-p", "profile=fast"], tmp_path)
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert re.search(r"FAILED: 00_environment_check: cell \d+ \('import labkit'\)", out), out[-1500:]
    assert "ParameterError" in out and "'smoke', 'full'" in out
    summary = json.loads((tmp_path / "build" / "summary.json").read_text())
    assert summary["notebooks"][0]["status"] == "FAILED"


def test_runner_refuses_unknown_profile_and_notebook(tmp_path):
    res = run(["--profile", "huge"], tmp_path)
    assert res.returncode != 0 and "'smoke', 'full'" in res.stderr
    res = subprocess.run([sys.executable, str(ROOT / "ci" / "run_notebooks.py"), "--nb", "99"],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "matches no notebook" in res.stderr


def test_runner_executes_and_records_results(tmp_path):
    res = run([], tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    doc = json.loads((tmp_path / "build" / "results" / "00_environment_check.smoke.json").read_text())
    assert doc["metrics"]["checks_passed"] == doc["metrics"]["checks_total"]
    executed = json.loads((tmp_path / "build" / "executed" / "00_environment_check.ipynb").read_text())
    assert "| 00_environment_check | ok |" in (tmp_path / "build" / "summary.md").read_text()
    # one run id ties the executed notebook to its results file (how results/full.* are matched)
    stamp = executed["metadata"]["labkit"]
    assert stamp["run_id"] and stamp["run_id"] == doc["run_id"]
    assert stamp["profile"] == "smoke" and stamp["machine"] == doc["machine"]
