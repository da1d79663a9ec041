"""Run a long command on the GPU machine so that it outlives one device call.

A device call ends (and everything it started is killed) after at most 10 minutes, but a process in its own
session keeps running while the machine stays warm. A full-profile notebook that needs 8-12 minutes is
started detached by one call and collected by the next:

    source ci/gpu_image_env.sh .whl || exit 1
    python3 ci/gpu_job.py start nb04 -- python3 ci/run_notebooks.py --nb 04 --profile full --device cuda
    python3 ci/gpu_job.py wait nb04 540      # exit 0/its rc when done; 75 while it still runs
    # next call (within the machine's idle window): python3 ci/gpu_job.py wait nb04 540 && cp ... "$OUT"/

`wait` prints the tail of the job's log. State (log, rc, pid) lives in $LABKIT_JOB_DIR, by default
<tmp>/labkit-jobs, which survives between calls on a warm machine. The job inherits the environment of
`start` (what gpu_image_env.sh exported).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STILL_RUNNING = 75   # EX_TEMPFAIL: try again later
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def job_dir() -> Path:
    d = Path(os.environ.get("LABKIT_JOB_DIR") or Path(tempfile.gettempdir()) / "labkit-jobs")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _paths(name: str) -> dict:
    if not NAME.match(name):
        raise SystemExit(f"gpu_job: job name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
    d = job_dir()
    return {k: d / f"{name}.{k}" for k in ("log", "rc", "pid")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a finished child of ours that nobody reaped is a zombie: not running
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def running_pid(name: str):
    p = _paths(name)
    if p["pid"].exists() and not p["rc"].exists():
        pid = int(p["pid"].read_text())
        if _alive(pid):
            return pid
    return None


def start(name: str, command: list) -> int:
    if not command:
        raise SystemExit("gpu_job start: give the command after --")
    p = _paths(name)
    pid = running_pid(name)
    if pid is not None:
        raise SystemExit(f"gpu_job: job {name!r} is already running (pid {pid}); `wait` for it")
    for f in p.values():
        f.unlink(missing_ok=True)
    # The shell writes the command's exit status when it ends, whoever waits (or nobody).
    script = '"$@"; echo $? > "$0.tmp" && mv "$0.tmp" "$0"'
    with open(p["log"], "wb") as log:
        proc = subprocess.Popen(["/bin/sh", "-c", script, str(p["rc"]), *command], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    p["pid"].write_text(str(proc.pid))
    print(f"gpu_job: started {name!r} (pid {proc.pid}); log {p['log']}", flush=True)
    return 0


def _tail(path: Path, n: int) -> str:
    if not path.exists():
        return ""
    data = path.read_bytes()[-n:].decode("utf-8", "replace")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in data.splitlines())   # progress bars: last state


def wait(name: str, seconds: float, tail: int = 3000) -> int:
    p = _paths(name)
    if not p["pid"].exists():
        raise SystemExit(f"gpu_job: no job {name!r} in {job_dir()} (start it first; a fresh machine has none)")
    deadline = time.monotonic() + seconds
    while not p["rc"].exists():
        pid = int(p["pid"].read_text())
        if not _alive(pid) and not p["rc"].exists():
            print(_tail(p["log"], tail))
            print(f"gpu_job: {name!r} ended without an exit status (killed?)", flush=True)
            return 1
        if time.monotonic() >= deadline:
            print(_tail(p["log"], tail))
            print(f"gpu_job: {name!r} still running after {seconds:.0f} s (pid {pid}); wait again", flush=True)
            return STILL_RUNNING
        time.sleep(1.0)
    rc = int(p["rc"].read_text().strip() or 1)
    print(_tail(p["log"], tail))
    print(f"gpu_job: {name!r} finished with exit status {rc}", flush=True)
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start NAME detached: start NAME -- command ...")
    s.add_argument("name")
    s.add_argument("command", nargs=argparse.REMAINDER)
    w = sub.add_parser("wait", help="wait up to SECONDS for NAME; exit with its status, 75 if still running")
    w.add_argument("name")
    w.add_argument("seconds", type=float)
    args = ap.parse_args(argv)
    if args.cmd == "start":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        return start(args.name, command)
    if args.seconds < 0:
        raise SystemExit("gpu_job wait: SECONDS must be >= 0")
    return wait(args.name, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
