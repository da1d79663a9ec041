"""Write requirements/lock.txt from the current venv (after `pip install -r requirements.in`)."""
import datetime
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                        capture_output=True, text=True, check=True).stdout.splitlines()


def name(line):
    return line.split("==")[0].split(" @ ")[0].strip().lower().replace("_", "-")


# requirements/nodeps.txt is installed apart, with --no-deps: keep those out of the lock
nodeps = {name(l) for l in (ROOT / "requirements" / "nodeps.txt").read_text().splitlines()
          if l.strip() and not l.startswith("#")}
lines = [l for l in frozen if l and name(l) != "labkit" and name(l) not in nodeps]
header = [f"# Exact pins resolved from requirements.in with 'make lock' on Python "
          f"{sys.version_info.major}.{sys.version_info.minor} ({datetime.date.today().isoformat()}).",
          "# Every installer reads this file: the Makefile's venv, CI and environment.yml."]
tmp = ROOT / "requirements" / ".lock.txt.tmp"
tmp.write_text("\n".join(header + lines) + "\n")
tmp.replace(ROOT / "requirements" / "lock.txt")
print(f"wrote requirements/lock.txt ({len(lines)} pins)")
