import os
import socket
import sys
import time

import pytest

from labkit import procs

# A server that also starts a grandchild: stopping must take the whole group, leaving no orphan.
SERVER = r'''
import http.server, subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
'''


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except OSError:
        return False


def group_members(pgid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry))
    return out


def test_server_runs_in_own_group_and_leaves_no_orphans(tmp_path):
    port = procs.free_port()
    with procs.ManagedProcess([sys.executable, "-c", SERVER, str(port)],
                              ready=procs.http_ready(f"http://127.0.0.1:{port}/"), name="demo",
                              start_timeout=30) as server:
        pgid = server.pid
        assert os.getpgid(server.pid) == server.pid != os.getpgid(0)
        deadline = time.time() + 10
        while len(group_members(pgid)) < 2 and time.time() < deadline:
            time.sleep(0.1)
        assert len(group_members(pgid)) >= 2  # server + grandchild
    assert group_members(pgid) == []
    assert not alive(pgid)


def test_stop_happens_even_when_the_body_raises():
    port = procs.free_port()
    with pytest.raises(KeyError):
        with procs.ManagedProcess([sys.executable, "-c", SERVER, str(port)],
                                  ready=procs.port_ready(port), start_timeout=30) as server:
            pgid = server.pid
            raise KeyError("boom")
    assert group_members(pgid) == []


def test_a_server_that_dies_at_start_reports_its_log():
    with pytest.raises(procs.ServerError, match=r"(?s)exited with code 3.*bad config"):
        procs.ManagedProcess([sys.executable, "-c", "print('bad config'); raise SystemExit(3)"],
                             ready=lambda: False, name="broken", start_timeout=20).start()


def test_a_server_never_ready_times_out_and_is_stopped():
    p = procs.ManagedProcess([sys.executable, "-c", "import time; time.sleep(60)"],
                             ready=lambda: False, name="slow", start_timeout=1)
    with pytest.raises(procs.ServerError, match="not ready after"):
        p.start()
    assert not p.alive()


# A leader that drains on SIGTERM: it checks its worker is still running, stops it itself, then exits 0.
DRAINING = r'''
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
def drain(*_):
    time.sleep(0.3)  # in-flight work
    open(sys.argv[1], "w").write("worker alive during drain" if child.poll() is None else "worker already dead")
    child.terminate(); child.wait(); sys.exit(0)
signal.signal(signal.SIGTERM, drain)
open(sys.argv[1] + ".ready", "w").write("1")
while True:
    time.sleep(0.1)
'''


def test_drain_timeout_signals_the_leader_first(tmp_path):
    out = tmp_path / "drain.txt"
    server = procs.ManagedProcess([sys.executable, "-c", DRAINING, str(out)],
                                  ready=lambda: (tmp_path / "drain.txt.ready").exists(), start_timeout=30,
                                  drain_timeout=10)
    with server:
        pgid = server.pid
    assert out.read_text() == "worker alive during drain"
    assert server.proc.returncode == 0
    assert group_members(pgid) == []


def test_free_port_is_bindable_and_outside_the_ephemeral_range():
    # outgoing connections take ephemeral ports: a server port from that range could be taken before the server binds
    low, high = procs._ephemeral_range()
    for _ in range(20):
        port = procs.free_port()
        assert not low <= port <= high
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_free_port_skips_a_taken_port(monkeypatch):
    import random
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as spare:
            spare.bind(("127.0.0.1", 0))
            other = spare.getsockname()[1]   # free again once closed (bound only: no TIME_WAIT)
        offers = iter([taken, other])
        monkeypatch.setattr(random.SystemRandom, "randrange", lambda self, a, b: next(offers))
        monkeypatch.setattr(procs, "_ephemeral_range", lambda: (65000, 65535))
        assert procs.free_port() == other


def test_free_port_lets_the_kernel_pick_without_room_below_the_range(monkeypatch):
    monkeypatch.setattr(procs, "_ephemeral_range", lambda: (1024, 65535))
    port = procs.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


# An owner that starts a server (with a grandchild) and registers a file, prints the server's pid, then either
# exits without stopping it ("exit") or waits to be killed ("wait").
OWNER = r'''
import sys, time
sys.path[:0] = [sys.argv[3]]
from labkit import procs
server = procs.ManagedProcess([sys.executable, "-c", sys.argv[2], str(procs.free_port())], name="demo",
                              start_timeout=30).start()
procs.remove_if_owner_dies(sys.argv[4])
if sys.argv[1] == "fork":   # a forked child (as a fork-start DataLoader worker) that outlives its parent
    import os
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    print(child, flush=True)
print(server.pid, flush=True)
if sys.argv[1] in ("wait", "fork"):
    time.sleep(600)
'''


def _owner(mode, tmp_path):
    import subprocess
    from pathlib import Path
    leftover = tmp_path / "region-1"
    leftover.write_text("x")
    labkit_parent = str(Path(procs.__file__).resolve().parents[1])
    owner = subprocess.Popen([sys.executable, "-c", OWNER, mode, SERVER, labkit_parent, str(tmp_path / "region-*")],
                             stdout=subprocess.PIPE, text=True)
    child = int(owner.stdout.readline()) if mode == "fork" else None
    pgid = int(owner.stdout.readline())
    deadline = time.time() + 10
    while mode != "exit" and len(group_members(pgid)) < 2 and time.time() < deadline:
        time.sleep(0.1)
    return (owner, pgid, leftover) if child is None else (owner, pgid, leftover, child)


def _running(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _gone(pgid, seconds=20):
    deadline = time.time() + seconds
    while group_members(pgid) and time.time() < deadline:
        time.sleep(0.1)
    return group_members(pgid) == []


def test_a_killed_owner_leaves_no_server_and_no_registered_files(tmp_path):
    """A notebook kernel killed before its stop cell: the reaper ends the server's group and removes the files."""
    import signal
    owner, pgid, leftover = _owner("wait", tmp_path)
    try:
        assert leftover.exists() and len(group_members(pgid)) >= 2   # server + grandchild
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        assert _gone(pgid)
        deadline = time.time() + 5
        while leftover.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert not leftover.exists()
    finally:
        owner.kill()
        for pid in group_members(pgid):
            os.kill(pid, 9)


def test_a_forked_child_that_outlives_its_killed_owner_does_not_delay_the_reaper(tmp_path):
    """A forked child inherits the owner's pipe to the reaper; it closes its copy at fork, so the owner's death
    alone is the reaper's EOF and the server is ended while the child still runs."""
    import signal
    owner, pgid, leftover, child = _owner("fork", tmp_path)
    try:
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        assert _gone(pgid)
        assert _running(child)   # the child is still there: it did not hold the reaper back
    finally:
        owner.kill()
        for pid in group_members(pgid):
            os.kill(pid, 9)
        try:
            os.kill(child, 9)
        except ProcessLookupError:
            pass


def test_an_owner_that_exits_without_stopping_its_server_stops_it(tmp_path):
    """The kernel restarted (a clean exit) before the stop cell: the server is stopped at exit."""
    owner, pgid, _ = _owner("exit", tmp_path)
    try:
        assert owner.wait(timeout=60) == 0
        assert group_members(pgid) == []   # stopped by atexit, before the owner finished exiting
    finally:
        for pid in group_members(pgid):
            os.kill(pid, 9)


def test_a_command_that_cannot_start_goes_through_stop(tmp_path):
    """Popen itself failing (no such program) still calls stop(): a subclass stops what it started beside it."""
    stopped = []

    class WithHelper(procs.ManagedProcess):
        def stop(self):
            stopped.append(True)
            super().stop()

    with pytest.raises(FileNotFoundError):
        WithHelper([str(tmp_path / "no-such-program")], name="missing").start()
    assert stopped == [True]
