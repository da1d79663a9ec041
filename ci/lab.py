"""Start JupyterLab on the notebooks, the way a learner uses this repository (`make lab`).

    python ci/lab.py                      # http://127.0.0.1:8888/lab?token=...  (loopback only)
    python ci/lab.py --port 9999
    python ci/lab.py --ip 0.0.0.0         # reachable from other machines: a room, a remote GPU box

The server listens on loopback unless told otherwise, always with a token (printed below; a fresh
random one each time unless JUPYTER_TOKEN is set), serves notebooks/, and runs every notebook in the
project's kernel "Python 3 (labkit)" (installed into .venv by ci/bootstrap.py). Ctrl-C stops it
cleanly: the server and its kernels shut down, nothing is left running.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def free_port(host: str, start: int) -> int:
    """`start` if it is free on `host`, else the next free one (as Jupyter itself would pick)."""
    import socket
    for port in range(start, start + 50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host if host not in ("0.0.0.0", "") else "", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"no free port in {start}..{start + 49} on {host}")


def lab_command(ip: str, port: int, token: str, root_dir: Path, open_browser: bool) -> list:
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.ip={ip}", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root_dir}"]
    if not open_browser:
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI machines often run as root
    return cmd


def lab_env() -> dict:
    env = dict(os.environ)
    # A batch environment (CI, a container image) may export MPLBACKEND=Agg; in JupyterLab plots must show inline.
    if env.get("MPLBACKEND", "").lower() == "agg":
        del env["MPLBACKEND"]
    env.setdefault("LABKIT_DATA_ROOT", str(ROOT / "data"))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except Exception:
            time.sleep(0.5)
    return False


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGINT-like clean stop of the server's process group (kernels included), then harder."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    # Kernels run in the server's group: make sure none outlives it.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return proc.returncode if proc.returncode is not None else -9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ip", default=os.environ.get("LAB_IP", "127.0.0.1"),
                    help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("LAB_PORT", "8888")),
                    help="port (default 8888, or the next free one)")
    ap.add_argument("--root-dir", default=str(NOTEBOOKS), help="folder shown in JupyterLab (default notebooks/)")
    ap.add_argument("--open-browser", action="store_true", help="open a browser window on this machine")
    args = ap.parse_args(argv)

    root_dir = Path(args.root_dir).resolve()
    if not root_dir.is_dir():
        raise SystemExit(f"{root_dir} does not exist")
    token = os.environ.get("JUPYTER_TOKEN") or secrets.token_hex(24)
    port = free_port(args.ip, args.port)
    cmd = lab_command(args.ip, port, token, root_dir, args.open_browser)
    host = "127.0.0.1" if args.ip in ("0.0.0.0", "", "*") else args.ip
    url_host = f"[{host}]" if ":" in host else host
    base = f"http://{url_host}:{port}"

    # A terminal closing or `kill` ends this script like Ctrl-C does: through the `finally` below.
    def ask_to_stop(signum, frame):
        raise KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, ask_to_stop)
    # Ctrl-C too, set explicitly: a background job (`nohup make lab &`, some CI runners) starts with
    # SIGINT ignored, Python then keeps it ignored, and Ctrl-C would never stop the server.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    # Own process group: Ctrl-C reaches only this script, which then stops the whole group in order.
    proc = subprocess.Popen(cmd, env=lab_env(), cwd=str(root_dir), start_new_session=True)
    try:
        if not wait_ready(f"{base}/api/status?token={token}", proc):
            code = proc.poll()
            print(f"[lab] JupyterLab did not come up (exit code {code}); see its messages above.",
                  file=sys.stderr)
            return 1
        shown = base if args.ip not in ("0.0.0.0", "", "*") else f"http://<this machine's address>:{port}"
        print("\n" + "=" * 72, flush=True)
        print(f"[lab] JupyterLab is running on {args.ip}:{port}, serving {root_dir}")
        print(f"[lab] open:  {shown}/lab?token={token}")
        print(f"[lab] token: {token}")
        print("[lab] notebooks run in the kernel 'Python 3 (labkit)' (this project's .venv)")
        if args.ip not in ("127.0.0.1", "localhost", "::1"):
            print(f"[lab] listening on {args.ip}: anyone who can reach this port and has the token can run code")
        print("[lab] press Ctrl-C to stop")
        print("=" * 72 + "\n", flush=True)
        while proc.poll() is None:
            time.sleep(0.5)
        return proc.returncode or 0
    except KeyboardInterrupt:
        print("\n[lab] stopping JupyterLab and its kernels ...", flush=True)
        return 0
    finally:
        if proc.poll() is None:
            stop(proc)
            print("[lab] stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
