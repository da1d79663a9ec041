"""Fill the README's topic table and workshop agenda from ci/metadata.yml (one place for durations).

    python ci/readme_tables.py          # rewrite README.md
    python ci/readme_tables.py --check  # exit 1 if README.md is out of date (run by make test)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks import ROOT, metadata  # noqa: E402

README = ROOT / "README.md"


def topic_table(meta: dict) -> str:
    rows = ["| notebook | topic | what you learn | CPU smoke | full profile | hardware |", "|---|---|---|---|---|---|"]
    for folder, m in meta.items():
        link = f"[{folder}](notebooks/{folder}/{folder}.ipynb)"
        rows.append(f"| {link} | {m['topic']} | {m['learn']} | ~{m['cpu_smoke_minutes']} min | "
                    f"~{m['gpu_full_minutes']} min | {m['hardware']} |")
    return "\n".join(rows)


def workshop(meta: dict) -> str:
    total = 0
    lines = ["A one-day agenda built from the metadata (teaching time = 30 min per topic plus its CPU smoke run):", "",
             "| slot | notebook | teach + run (min) | GPU full run to prepare beforehand (min) |", "|---|---|---|---|"]
    for i, (folder, m) in enumerate(meta.items(), 1):
        minutes = 30 + int(m["cpu_smoke_minutes"]) if i > 1 else 15
        total += minutes
        lines.append(f"| {i} | {folder} | {minutes} | {m['gpu_full_minutes']} |")
    lines += ["", f"About {total} minutes of teaching in all, plus breaks.", "",
              "Before the day:",
              "- On each learner machine (or one image): `make run` once, so `.venv` and `data/` exist; the room then",
              "  needs no internet. For a room with no internet at all, run `make data` on a connected machine and copy",
              "  `data/` and a pip wheel cache (`pip download -r requirements/lock.txt -d wheels/`) onto a USB drive; set",
              "  `LABKIT_DATA_ROOT` to the copied folder and install with `pip install --no-index --find-links wheels/ -r requirements/lock.txt`.",
              "- On GPU machines: `make run PROFILE=full NB=<folder>` for the topics you will demo, the day before, so",
              "  that `build/results/` and the executed notebooks are ready to show; compare with `results/full.json`.",
              "- Start JupyterLab with `make lab` (loopback and a token); open `00_environment_check` first with everyone.",
              "- Exercises close each notebook; their solutions are in each folder's `solutions.py`."]
    return "\n".join(lines)


def render(text: str, meta: dict) -> str:
    for name, body in (("TOPIC-TABLE", topic_table(meta)), ("WORKSHOP", workshop(meta))):
        text = re.sub(rf"(<!-- {name}:START -->\n).*?(<!-- {name}:END -->)",
                      lambda m: m.group(1) + body + "\n" + m.group(2), text, flags=re.S)
    return text


def main() -> int:
    meta = metadata()
    current = README.read_text()
    wanted = render(current, meta)
    if "--check" in sys.argv:
        if wanted != current:
            print("README.md is out of date with ci/metadata.yml: run `python ci/readme_tables.py`")
            return 1
        print("README.md tables match ci/metadata.yml")
        return 0
    README.write_text(wanted)
    print("README.md tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
