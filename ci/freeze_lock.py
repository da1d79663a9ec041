"""Write requirements/lock.txt from the current venv (after `pip install -r requirements.in`)."""
import datetime
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                        capture_output=True, text=True, check=True).stdout.splitlines()
lines = [l for l in frozen if l and not l.lower().startswith("labkit")]
header = [f"# Exact pins resolved from requirements.in with 'make lock' on Python "
          f"{sys.version_info.major}.{sys.version_info.minor} ({datetime.date.today().isoformat()}).",
          "# Every installer reads this file: the Makefile's venv, CI and environment.yml."]
tmp = ROOT / "requirements" / ".lock.txt.tmp"
tmp.write_text("\n".join(header + lines) + "\n")
tmp.replace(ROOT / "requirements" / "lock.txt")
print(f"wrote requirements/lock.txt ({len(lines)} pins)")
