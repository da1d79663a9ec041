"""Managed server processes: own process group, readiness poll, stop in `finally`, no orphans.

    with ManagedProcess(["tritonserver", ...], ready=http_ready("http://127.0.0.1:8000/v2/health/ready"),
                        name="triton") as server:
        ...  # talk to it
    # here the whole process group is gone, even if the body raised

A server that drains on SIGTERM (finishes in-flight work, then stops its own workers) gets `drain_timeout`:
stop() then signals the leader alone first and only afterwards the rest of the group.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
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
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.cwd, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        try:
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
        for sig, wait in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)):
            if not _group_alive(pgid):
                break
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pgid):
                self.proc.poll()  # reap the leader so the group can empty
                time.sleep(0.1)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
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
