"""Make sure Debian's `chromium` is installed for the browser tests; idempotent (standard library only).

    python ci/install_browser.py          # installs with apt-get when /usr/bin/chromium is missing
    python ci/install_browser.py --check  # only report; exit 1 when it is missing
    python ci/install_browser.py --tools  # the Debian command-line tools that tests run (TOOLS below)

Playwright drives this system browser (`executable_path=/usr/bin/chromium`); it never downloads
its own (`playwright install` is not used). The launch settings live here too, so the tests and
anything else that opens the site share one definition: see `launch_args()`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

CHROMIUM = Path(os.environ.get("LABKIT_CHROMIUM", "/usr/bin/chromium"))
PACKAGE = "chromium"
# command the tests run -> Debian package that provides it
TOOLS = {"dciodvfy": "dicom3tools"}  # 05_monai: DICOM's own validator for the MR series and the SEG we write

# Headless, no sandbox (CI containers run as root), no GPU, and no traffic of the browser's own
# (updates, sync, QUIC probing) so that every request a page makes is one the page asked for.
BASE_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def launch_args(user_data_dir: str | os.PathLike | None = None) -> list:
    """Chromium command-line flags for one run, with a fresh profile folder `user_data_dir`.

    Playwright refuses `--user-data-dir` among the args: with Playwright call
    `launch_persistent_context(user_data_dir, executable_path=..., args=launch_args())` instead.
    """
    args = list(BASE_ARGS)
    if user_data_dir is not None:
        args.append(f"--user-data-dir={user_data_dir}")
    return args


def chromium_version(path: Path = CHROMIUM) -> str | None:
    """'Chromium 1xx...' when the browser runs, else None."""
    if not path.exists():
        return None
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _sudo_prefix() -> list:
    """[] as root; ['sudo', '-n'] where password-less sudo works (CI runners); else a clear error."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    raise SystemExit(f"{CHROMIUM} is missing. Install it as root once: "
                     f"`sudo apt-get update && sudo apt-get install -y {PACKAGE}` "
                     f"(or run `sudo python3 ci/install_browser.py`).")


def _apt(prefix: list, *args: str) -> None:
    cmd = [*prefix, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _apt_install(prefix: list, *packages: str) -> None:
    """Try straight away (the package lists may be fresh); on failure refresh them and retry once."""
    try:
        _apt(prefix, "install", "-y", "--no-install-recommends", *packages)
    except subprocess.CalledProcessError:
        _apt(prefix, "update")
        _apt(prefix, "install", "-y", "--no-install-recommends", *packages)


def install_tools() -> int:
    missing = sorted({pkg for cmd, pkg in TOOLS.items() if shutil.which(cmd) is None})
    if missing:
        if shutil.which("apt-get") is None:
            raise SystemExit(f"missing {missing} and no apt-get here: install them with your package manager")
        _apt_install(_sudo_prefix(), *missing)
    still = [cmd for cmd in TOOLS if shutil.which(cmd) is None]
    if still:
        raise SystemExit(f"[tools] still missing after apt-get: {still}")
    print("[tools] " + ", ".join(f"{cmd} ({pkg})" for cmd, pkg in TOOLS.items()) + ": present")
    return 0


def install() -> None:
    if shutil.which("apt-get") is None:
        raise SystemExit(f"{CHROMIUM} is missing and this system has no apt-get: install Chromium with "
                         f"your package manager and point LABKIT_CHROMIUM at the binary.")
    try:
        _apt_install(_sudo_prefix(), PACKAGE)
    except subprocess.CalledProcessError:
        raise SystemExit(f"`apt-get install {PACKAGE}` failed (on Ubuntu the package is a snap "
                         f"wrapper): install Chrome or Chromium another way and set LABKIT_CHROMIUM "
                         f"to its binary (e.g. /usr/bin/google-chrome).") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check, never install")
    ap.add_argument("--tools", action="store_true", help="install the Debian tools the tests run, not the browser")
    args = ap.parse_args(argv)
    if args.tools:
        return install_tools()
    version = chromium_version()
    if version:
        print(f"[browser] {CHROMIUM}: {version}")
        return 0
    if args.check:
        print(f"[browser] {CHROMIUM} is missing or does not run; run `python ci/install_browser.py`",
              file=sys.stderr)
        return 1
    install()
    version = chromium_version()
    if not version:
        raise SystemExit(f"[browser] installed {PACKAGE}, but `{CHROMIUM} --version` still fails")
    print(f"[browser] {CHROMIUM}: {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
