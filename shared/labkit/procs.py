"""Managed server processes: own process group, readiness poll, stop in `finally`, no orphans.

    with ManagedProcess(["tritonserver", ...], ready=http_ready("http://127.0.0.1:8000/v2/health/ready"),
                        name="triton") as server:
        ...  # talk to it
    # here the whole process group is gone, even if the body raised

A server that drains on SIGTERM (finishes in-flight work, then stops its own workers) gets `drain_timeout`:
stop() then signals the leader alone first and only afterwards the rest of the group.

A server must not outlive the Python process that started it (a notebook kernel restarted before its stop
cell ran, or killed): servers still running at interpreter exit are stopped (atexit), and one small reaper
process per owner, started with the first server, holds a pipe from the owner; when the owner is gone
however it died (EOF on the pipe), the reaper ends every group still registered and removes the files
registered with it (e.g. a server's /dev/shm regions).
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import weakref
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence


class ServerError(RuntimeError):
    """The server did not start, or died; the message carries the tail of its log."""


def _ephemeral_range() -> tuple:
    """The ports the kernel hands to outgoing connections (Linux; the usual default elsewhere)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host`, chosen below the ephemeral range.

    A server is started on it a moment later (Triton only binds once its models load). bind(0) would hand out an
    ephemeral port, which any outgoing connection made meanwhile (clients, the server's own ranks) may take: CI
    saw EADDRINUSE that way. Ports below the range are only ever taken by an explicit bind."""
    import random
    low = _ephemeral_range()[0]
    pick = random.SystemRandom()   # not the seeded `random`: two seeded processes would try the same ports
    tries = 64 if low > 11024 else 0   # no room below the range: let the kernel choose
    for _ in range(tries):
        port = pick.randrange(10000, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_ready(url: str, timeout: float = 1.0) -> Callable[[], bool]:
    """A readiness check: the URL answers 200."""
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status == 200
        except Exception:
            return False
    return check


def port_ready(port: int, host: str = "127.0.0.1") -> Callable[[], bool]:
    """A readiness check: something accepts TCP connections on host:port."""
    def check() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex((host, port)) == 0
    return check


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


_reaper: Optional[subprocess.Popen] = None   # this process's own: a forked child drops its parent's (at fork)
_reaper_lock = threading.Lock()
_live: "weakref.WeakSet[ManagedProcess]" = weakref.WeakSet()


def _leader_start(pid: int) -> Optional[str]:
    """When process `pid` started (field 22 of /proc/<pid>/stat), None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _end_group(pgid: int, waits, reap: Optional[Callable] = None) -> None:
    """Signal the group with each (signal, seconds) of `waits` in turn while it has members, waiting up to that
    long for it to empty; `reap` (the leader's poll) lets a leader we started leave the group."""
    for sig, wait in waits:
        if not _group_alive(pgid):
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(pgid):
            if reap is not None:
                reap()
            time.sleep(0.1)


def _reap(lines) -> None:
    """The reaper's work (this file run as a script): read "add <pgid> <leader start time>", "del <pgid>",
    "files <glob>", "unfiles <glob>" lines until EOF (the owner exited or was killed), then end the groups left
    and remove the files."""
    import glob
    groups, files = {}, set()
    for line in lines:
        op, _, arg = line.strip().partition(" ")
        if op == "add":
            pgid, start = arg.split()
            groups[int(pgid)] = start
        elif op == "del":
            groups.pop(int(arg), None)
        elif op == "files":
            files.add(arg)
        elif op == "unfiles":
            files.discard(arg)
    for pgid, start in groups.items():
        now = _leader_start(pgid)
        if now is not None and now != start:   # that number leads another group now: not ours
            continue
        try:
            _end_group(pgid, ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)))
        except PermissionError:
            pass
    for pattern in files:
        for path in glob.glob(pattern):
            try:
                os.unlink(path)
            except OSError:
                pass


def _tell_reaper(line: str) -> None:
    """Send one line to this process's reaper, starting it first if needed (Linux; elsewhere a no-op)."""
    global _reaper
    if not sys.platform.startswith("linux"):
        return
    with _reaper_lock:
        if _reaper is None or _reaper.poll() is not None:
            if line.startswith(("del", "unfiles")):
                return
            # its own session: a Ctrl-C or a group signal aimed at the owner's group does not reach it
            # this file as a script; -I: only the standard library on its path (not labkit's folder, whose
            # profile.py would shadow the standard one)
            _reaper = subprocess.Popen([sys.executable, "-I", str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                                       text=True, start_new_session=True, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        try:
            _reaper.stdin.write(line + "\n")
            _reaper.stdin.flush()
        except (BrokenPipeError, OSError):
            pass


def _drop_reaper_in_child() -> None:
    """After a fork (a fork-start DataLoader worker): the child holds a copy of the pipe to its parent's reaper,
    which would keep the reaper from seeing EOF until the child exits too. Point the copy at /dev/null (closing
    the number outright would let the file object close a reused one later); a lock a parent thread held at the
    fork is replaced."""
    global _reaper, _reaper_lock
    _reaper_lock = threading.Lock()
    if _reaper is not None and _reaper.stdin is not None:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, _reaper.stdin.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass
    _reaper = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_reaper_in_child)


def remove_if_owner_dies(pattern: str, remove: bool = True) -> None:
    """Files (a glob) to delete should this process die before cleaning them up itself; remove=False withdraws it."""
    _tell_reaper(f"{'files' if remove else 'unfiles'} {pattern}")


@atexit.register
def _stop_all() -> None:
    for p in list(_live):
        if p._owner != os.getpid():   # a forked child exiting: the servers are its parent's
            continue
        try:
            p.stop()
        except Exception:
            pass


class ManagedProcess:
    """Start `cmd` in its own process group, wait until `ready()` is true, stop the group on exit."""

    def __init__(self, cmd: Sequence[str], ready: Optional[Callable[[], bool]] = None,
                 name: str = "server", env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[str] = None, start_timeout: float = 120.0,
                 stop_timeout: float = 15.0, log_path: Optional[Path] = None,
                 drain_timeout: Optional[float] = None):
        self.cmd = [str(c) for c in cmd]
        self.ready = ready
        self.name = name
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.drain_timeout = drain_timeout
        self._own_log = log_path is None  # a temp log we created: removed after a clean stop
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self._failed = False
        self.proc: Optional[subprocess.Popen] = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> "ManagedProcess":
        self._log = open(self.log_path, "ab" if self.proc is not None else "wb")  # a restart appends
        try:   # any failure, the Popen's too, goes through stop() (a subclass may have started more to stop)
            self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=self.cwd, start_new_session=True)
            self._owner = os.getpid()
            _live.add(self)
            _tell_reaper(f"add {self.proc.pid} {_leader_start(self.proc.pid) or '?'}")
            deadline = time.monotonic() + self.start_timeout
            while True:
                if self.proc.poll() is not None:
                    raise ServerError(f"{self.name} exited with code {self.proc.returncode} before it was "
                                      f"ready. Last lines of {self.log_path}:\n{self.log_tail()}")
                if self.ready is None or self.ready():
                    return self
                if time.monotonic() > deadline:
                    raise ServerError(f"{self.name} was not ready after {self.start_timeout:.0f} s. "
                                      f"Last lines of {self.log_path}:\n{self.log_tail()}")
                time.sleep(0.2)
        except BaseException:
            self._failed = True  # keep the log: the error message points at it
            self.stop()
            raise

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the whole group, wait, then SIGKILL whatever is left. Safe to call twice.
        With `drain_timeout`: first SIGTERM the leader alone and give it that long to exit on its own."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session=True: the group id is the leader's pid
        if self.drain_timeout and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.drain_timeout)
            except subprocess.TimeoutExpired:
                pass
        _end_group(pgid, ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)), reap=self.proc.poll)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if not _group_alive(pgid):
            _tell_reaper(f"del {pgid}")
            _live.discard(self)
        if not self._log.closed:
            self._log.close()
        if self._own_log and not self._failed:
            self.log_path.unlink(missing_ok=True)

    def restart(self) -> "ManagedProcess":
        """Stop the group and start the same command again (same ports, log appended)."""
        self.stop()
        return self.start()

    def __enter__(self) -> "ManagedProcess":
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False


if __name__ == "__main__":   # the reaper (see _tell_reaper)
    _reap(sys.stdin)
