"""Real Linux networking, measured: kernel IP forwarding versus a user-space forwarder.

Topology (three network namespaces this module creates and always deletes; nothing touches the host's
own namespace, and every address lives inside them):

    [ns A: sender 10.201.1.1] --veth-- [ns R: 10.201.1.2 | 10.201.2.2] --veth-- [ns B: receiver 10.201.2.1]

The two end namespaces play two VMs; R plays the host between them. In "kernel" mode R forwards with
net.ipv4.ip_forward=1 (the data path stays in the kernel's softirq). In "user" mode forwarding is off
and a Python process in R moves every frame itself over AF_PACKET sockets: receive, rewrite the MAC
addresses, decrement the TTL, patch the IP checksum, send. That is the shape of a software vSwitch
datapath in user space without DPDK, and it costs a core per packet stream.

A bounded UDP stream (time and packet caps) goes from A to B; B counts what arrives. Each helper process
reports its own CPU time (getrusage), and the machine's softirq time is read from /proc/stat over the
window (machine-wide: other jobs on the machine add to it).

Run as a script it is one of the helper roles: `python vq_netns.py send|recv|forward ...`.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Tuple

SUBNET_A, SUBNET_B = "10.201.1", "10.201.2"
MAC = {"a0": "02:06:00:00:01:01", "r1": "02:06:00:00:01:02", "r2": "02:06:00:00:02:02", "b0": "02:06:00:00:02:01"}
PREFIX = "vq6-"
UDP_PORT = 9099
ETH_P_IP = 0x0800


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be created here (not root, no `ip`, or a sandbox forbids it)."""


def _ip(*args, check=True, timeout=20) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=timeout)


def netns_available() -> Tuple[bool, str]:
    """Can this machine create (and delete) a network namespace? Returns (ok, reason)."""
    if shutil.which("ip") is None:
        return False, "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return False, "creating network namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    name = f"{PREFIX}probe-{os.getpid()}"
    try:
        r = _ip("netns", "add", name, check=False)
        if r.returncode != 0:
            return False, f"`ip netns add` failed: {r.stderr.strip()}"
        r = _ip("netns", "exec", name, "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False)
        if r.returncode != 0:
            return False, f"veth pairs cannot be created: {r.stderr.strip()}"
        return True, "ok"
    finally:
        _ip("netns", "del", name, check=False)


def our_namespaces() -> List[str]:
    if shutil.which("ip") is None:  # no iproute2 (e.g. a GPU container): none can exist, none were made
        return []
    r = _ip("netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.startswith(PREFIX)]


class Topology:
    """Create A, R, B and two veth pairs; `close()` (or leaving the `with`) deletes all three namespaces."""

    def __init__(self, tag: Optional[str] = None, mtu: int = 1500):
        tag = tag or uuid.uuid4().hex[:6]
        self.ns = {k: f"{PREFIX}{tag}-{k}" for k in ("a", "r", "b")}
        self.mtu = mtu
        self.created: List[str] = []

    def sh(self, ns: str, *cmd: str) -> None:
        _ip("netns", "exec", self.ns[ns], *cmd)

    def up(self) -> "Topology":
        try:
            for k in ("a", "r", "b"):
                _ip("netns", "add", self.ns[k])
                self.created.append(self.ns[k])
                self.sh(k, "ip", "link", "set", "lo", "up")
            # veth pairs created inside the namespaces (peer moved straight into R): the host is untouched
            self.sh("a", "ip", "link", "add", "a0", "address", MAC["a0"], "mtu", str(self.mtu), "type", "veth",
                    "peer", "name", "r1", "address", MAC["r1"], "mtu", str(self.mtu), "netns", self.ns["r"])
            self.sh("b", "ip", "link", "add", "b0", "address", MAC["b0"], "mtu", str(self.mtu), "type", "veth",
                    "peer", "name", "r2", "address", MAC["r2"], "mtu", str(self.mtu), "netns", self.ns["r"])
            self.sh("a", "ip", "addr", "add", f"{SUBNET_A}.1/24", "dev", "a0")
            self.sh("r", "ip", "addr", "add", f"{SUBNET_A}.2/24", "dev", "r1")
            self.sh("r", "ip", "addr", "add", f"{SUBNET_B}.2/24", "dev", "r2")
            self.sh("b", "ip", "addr", "add", f"{SUBNET_B}.1/24", "dev", "b0")
            for k, dev in (("a", "a0"), ("r", "r1"), ("r", "r2"), ("b", "b0")):
                self.sh(k, "ip", "link", "set", dev, "up")
            self.sh("a", "ip", "route", "add", "default", "via", f"{SUBNET_A}.2")
            self.sh("b", "ip", "route", "add", "default", "via", f"{SUBNET_B}.2")
            # static neighbours: no ARP in the measurement
            self.sh("a", "ip", "neigh", "replace", f"{SUBNET_A}.2", "lladdr", MAC["r1"], "dev", "a0", "nud", "permanent")
            self.sh("r", "ip", "neigh", "replace", f"{SUBNET_B}.1", "lladdr", MAC["b0"], "dev", "r2", "nud", "permanent")
            self.sh("r", "ip", "neigh", "replace", f"{SUBNET_A}.1", "lladdr", MAC["a0"], "dev", "r1", "nud", "permanent")
            self.sh("b", "ip", "neigh", "replace", f"{SUBNET_B}.2", "lladdr", MAC["r2"], "dev", "b0", "nud", "permanent")
        except BaseException:
            self.close()
            raise
        return self

    def set_forwarding(self, on: bool) -> None:
        self.sh("r", "sysctl", "-q", "-w", f"net.ipv4.ip_forward={1 if on else 0}")

    def close(self) -> None:
        for name in reversed(self.created):
            _ip("netns", "del", name, check=False)
        self.created = []

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.close()
        return False


def cleanup_stale() -> List[str]:
    """Delete namespaces left by a crashed earlier run of this module (only ours: prefix vq6-)."""
    gone = our_namespaces()
    for name in gone:
        _ip("netns", "del", name, check=False)
    return gone


def softirq_seconds() -> float:
    """Machine-wide time spent in softirq (all CPUs) from /proc/stat, in seconds."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[7]) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------
# frame rewriting for the user-space forwarder (a pure function, tested on its own)
def _mac(s: str) -> bytes:
    return bytes(int(x, 16) for x in s.split(":"))


def forward_frame(frame: bytes, src_mac: bytes, dst_mac: bytes) -> Optional[bytes]:
    """Route one Ethernet/IPv4 frame: new MACs, TTL - 1, checksum patched (RFC 1624). None = drop."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ttl = frame[22]
    if ttl <= 1:
        return None
    csum = struct.unpack_from("!H", frame, 24)[0]
    # TTL is the high byte of the 16-bit word at offset 22: it drops by 0x0100, so the one's-complement
    # checksum rises by 0x0100 (with end-around carry)
    c = csum + 0x0100
    c = (c & 0xFFFF) + (c >> 16)
    return b"".join((dst_mac, src_mac, frame[12:22], bytes((ttl - 1,)), frame[23:24], struct.pack("!H", c), frame[26:]))


def _usage() -> Dict[str, float]:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": r.ru_utime, "sys_s": r.ru_stime}


# ------------------------------------------------------------------------------------------------
# helper roles (run inside a namespace with `ip netns exec NS python vq_netns.py ROLE ...`)
def role_recv(out: str, seconds: float, idle: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("0.0.0.0", UDP_PORT))
    s.settimeout(0.2)
    Path(out + ".ready").write_text("ready")
    n = nbytes = 0
    t_first = t_last = None
    deadline = time.monotonic() + seconds
    buf = bytearray(65536)
    while time.monotonic() < deadline:
        try:
            k = s.recv_into(buf)
        except socket.timeout:
            if t_last is not None and time.monotonic() - t_last > idle:
                break
            continue
        t_last = time.monotonic()
        if t_first is None:
            t_first = t_last
        n += 1
        nbytes += k
    res = {"packets": n, "bytes": nbytes, "seconds": (t_last - t_first) if n > 1 else 0.0, **_usage()}
    Path(out).write_text(json.dumps(res))


def role_send(out: str, dst: str, size: int, seconds: float, max_packets: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 11, 1)   # SO_NO_CHECK: no UDP checksum, so raw forwarding stays valid
    s.connect((dst, UDP_PORT))
    payload = bytes(size)
    n = 0
    t0 = time.monotonic()
    deadline = t0 + seconds
    send = s.send
    while n < max_packets:
        for _ in range(256):
            try:
                send(payload)
                n += 1
            except (ConnectionRefusedError, BlockingIOError):
                pass
        if time.monotonic() > deadline:
            break
    res = {"packets": n, "bytes": n * size, "seconds": time.monotonic() - t0, **_usage()}
    Path(out).write_text(json.dumps(res))


def role_forward(out: str, iface_in: str, iface_out: str, src_mac: str, dst_mac: str, seconds: float, idle: float) -> None:
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind((iface_in, ETH_P_IP))
    rx.settimeout(0.2)
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    tx.bind((iface_out, 0))
    smac, dmac = _mac(src_mac), _mac(dst_mac)
    dst_prefix = socket.inet_aton(SUBNET_B + ".0")[:3]
    Path(out + ".ready").write_text("ready")
    n = dropped = 0
    t_last = None
    deadline = time.monotonic() + seconds
    recv, send = rx.recvfrom, tx.send
    while time.monotonic() < deadline:
        try:
            frame, addr = recv(65536)
        except socket.timeout:
            if t_last is not None and time.monotonic() - t_last > idle:
                break
            continue
        t_last = time.monotonic()
        if addr[2] == socket.PACKET_OUTGOING or frame[30:33] != dst_prefix:
            continue
        new = forward_frame(frame, smac, dmac)
        if new is None:
            dropped += 1
            continue
        try:
            send(new)
            n += 1
        except OSError:
            dropped += 1
    Path(out).write_text(json.dumps({"forwarded": n, "dropped": dropped, **_usage()}))


# ------------------------------------------------------------------------------------------------
def _wait_file(path: Path, proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def measure(topo: Topology, mode: str, size: int = 1472, seconds: float = 3.0, max_packets: int = 2_000_000,
            workdir: Optional[Path] = None) -> Dict[str, float]:
    """One bounded UDP run A -> B through R with `mode` "kernel" or "user". Returns numbers."""
    from labkit.procs import ManagedProcess
    if mode not in ("kernel", "user"):
        raise ValueError("mode is 'kernel' or 'user'")
    if size + 28 > topo.mtu:
        raise ValueError(f"payload {size} + 28 header bytes exceeds the MTU {topo.mtu}")
    workdir = Path(workdir or Path("/tmp") / f"vq6-{uuid.uuid4().hex[:8]}")
    workdir.mkdir(parents=True, exist_ok=True)
    me, py = str(Path(__file__).resolve()), sys.executable
    exe = lambda ns: ["ip", "netns", "exec", topo.ns[ns], py, me]  # noqa: E731
    topo.set_forwarding(mode == "kernel")
    files = {k: workdir / f"{mode}-{size}-{k}.json" for k in ("recv", "send", "fwd")}
    for f in files.values():
        for p in (f, Path(str(f) + ".ready")):
            p.unlink(missing_ok=True)
    limit = seconds + 10
    recv = ManagedProcess(exe("b") + ["recv", "--out", str(files["recv"]), "--seconds", str(limit), "--idle", "1.0"],
                          name="netns-recv", start_timeout=limit)
    fwd = None
    if mode == "user":
        fwd = ManagedProcess(exe("r") + ["forward", "--out", str(files["fwd"]), "--iface-in", "r1", "--iface-out", "r2",
                                         "--src-mac", MAC["r2"], "--dst-mac", MAC["b0"], "--seconds", str(limit),
                                         "--idle", "1.0"], name="netns-forward", start_timeout=limit)
    try:
        recv.start()
        _wait_file(Path(str(files["recv"]) + ".ready"), recv, 20)
        if fwd is not None:
            fwd.start()
            _wait_file(Path(str(files["fwd"]) + ".ready"), fwd, 20)
        soft0 = softirq_seconds()
        t0 = time.monotonic()
        subprocess.run(exe("a") + ["send", "--out", str(files["send"]), "--dst", f"{SUBNET_B}.1", "--size", str(size),
                                   "--seconds", str(seconds), "--max-packets", str(max_packets)],
                       check=True, timeout=seconds + 30, capture_output=True)
        for p in (recv, fwd):
            if p is not None:
                p.proc.wait(timeout=limit + 5)
        wall = time.monotonic() - t0
        soft = softirq_seconds() - soft0
        r = json.loads(files["recv"].read_text())
        s = json.loads(files["send"].read_text())
        f = json.loads(files["fwd"].read_text()) if fwd is not None else {"user_s": 0.0, "sys_s": 0.0, "forwarded": 0}
    finally:
        recv.stop()
        if fwd is not None:
            fwd.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    secs = max(r["seconds"], 1e-9)
    gbps = r["bytes"] * 8 / secs / 1e9
    fwd_cpu = f["user_s"] + f["sys_s"]
    total_cpu = s["user_s"] + s["sys_s"] + r["user_s"] + r["sys_s"] + fwd_cpu + soft
    return {
        "mode": mode, "payload_bytes": size, "sent": s["packets"], "received": r["packets"],
        "loss_pct": 100.0 * (1 - r["packets"] / max(1, s["packets"])),
        "gbps": gbps, "kpps": r["packets"] / secs / 1e3, "seconds": secs, "wall_s": wall,
        "sender_cpu_s": s["user_s"] + s["sys_s"], "receiver_cpu_s": r["user_s"] + r["sys_s"],
        "forwarder_cpu_s": fwd_cpu, "softirq_s": soft,
        "forwarding_cpu_s": fwd_cpu if mode == "user" else soft,
        "cpu_s_per_gbit": total_cpu / max(1e-9, r["bytes"] * 8 / 1e9),
        "send_gbps": s["bytes"] * 8 / max(1e-9, s["seconds"]) / 1e9,
    }


def run_comparison(sizes=(1472,), seconds: float = 3.0, max_packets: int = 2_000_000, progress=None) -> List[Dict]:
    """Both modes for each payload size, in one topology that is always removed afterwards."""
    rows = []
    jobs = [(size, mode) for size in sizes for mode in ("kernel", "user")]
    if progress is not None:
        jobs = progress(jobs, desc="netns runs")
    with Topology() as topo:
        for size, mode in jobs:
            rows.append(measure(topo, mode, size=size, seconds=seconds, max_packets=max_packets))
    return rows


def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="role", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--out", required=True)
    r.add_argument("--seconds", type=float, default=10)
    r.add_argument("--idle", type=float, default=1.0)
    s = sub.add_parser("send")
    s.add_argument("--out", required=True)
    s.add_argument("--dst", required=True)
    s.add_argument("--size", type=int, default=1472)
    s.add_argument("--seconds", type=float, default=3)
    s.add_argument("--max-packets", type=int, default=2_000_000)
    f = sub.add_parser("forward")
    f.add_argument("--out", required=True)
    f.add_argument("--iface-in", required=True)
    f.add_argument("--iface-out", required=True)
    f.add_argument("--src-mac", required=True)
    f.add_argument("--dst-mac", required=True)
    f.add_argument("--seconds", type=float, default=10)
    f.add_argument("--idle", type=float, default=1.0)
    a = ap.parse_args(argv)
    if a.role == "recv":
        role_recv(a.out, a.seconds, a.idle)
    elif a.role == "send":
        if not a.dst.startswith("10.201."):
            raise SystemExit("the sender only sends to the namespace addresses 10.201.x.x")
        role_send(a.out, a.dst, a.size, a.seconds, a.max_packets)
    else:
        role_forward(a.out, a.iface_in, a.iface_out, a.src_mac, a.dst_mac, a.seconds, a.idle)


if __name__ == "__main__":
    main()
