"""ci/gpu_job.py: a detached job outlives the call that started it, `wait` reports its exit status or 75
while it runs, and bad names or a second start of a running job are refused."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = [sys.executable, str(ROOT / "ci" / "gpu_job.py")]


def _run(args, tmp_path, **kw):
    env = dict(os.environ, LABKIT_JOB_DIR=str(tmp_path))
    return subprocess.run(TOOL + args, env=env, capture_output=True, text=True, timeout=60, **kw)


def test_job_survives_its_starter_and_reports_its_status(tmp_path):
    # start from a shell in its own process group, then kill that whole group, as a device call's end does
    env = dict(os.environ, LABKIT_JOB_DIR=str(tmp_path))
    cmd = " ".join(TOOL) + " start j1 -- sh -c 'sleep 2; echo done-here; exit 3'; sleep 30"
    starter = subprocess.Popen(["sh", "-c", cmd], env=env, start_new_session=True)
    for _ in range(100):
        if (tmp_path / "j1.pid").exists():
            break
        time.sleep(0.1)
    os.killpg(starter.pid, signal.SIGKILL)
    starter.wait()
    early = _run(["wait", "j1", "0"], tmp_path)
    assert early.returncode == 75, early.stdout + early.stderr
    done = _run(["wait", "j1", "20"], tmp_path)
    assert done.returncode == 3
    assert "done-here" in done.stdout and "exit status 3" in done.stdout


def test_second_start_of_a_running_job_is_refused(tmp_path):
    assert _run(["start", "j2", "--", "sleep", "5"], tmp_path).returncode == 0
    again = _run(["start", "j2", "--", "true"], tmp_path)
    assert again.returncode != 0 and "already running" in again.stderr
    os.kill(int((tmp_path / "j2.pid").read_text()), signal.SIGKILL)


@pytest.mark.parametrize("args, message", [
    (["start", "../x", "--", "true"], "job name"),
    (["start", "j3"], "give the command"),
    (["wait", "nosuch", "1"], "no job 'nosuch'"),
    (["wait", "j3", "-1"], "must be >= 0"),
])
def test_bad_input_is_refused_with_a_clear_message(tmp_path, args, message):
    r = _run(args, tmp_path)
    assert r.returncode != 0 and message in r.stderr


def test_a_killed_job_is_reported_not_waited_for(tmp_path):
    assert _run(["start", "j4", "--", "sleep", "30"], tmp_path).returncode == 0
    os.killpg(int((tmp_path / "j4.pid").read_text()), signal.SIGKILL)
    r = _run(["wait", "j4", "20"], tmp_path)
    assert r.returncode == 1 and "without an exit status" in r.stdout
