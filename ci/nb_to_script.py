"""Turn a notebook into a plain Python script with its parameters overridden (standard library only).

For machines that have the topic's libraries but no Jupyter stack (the GPU machines here):
    python3 ci/nb_to_script.py notebooks/04_neural_fields/04_neural_fields.ipynb \
        -p profile=full -p device=cuda > /tmp/nb.py
    (cd notebooks/04_neural_fields && MPLBACKEND=Agg python3 /tmp/nb.py)
Code cells run in order; the parameters cell gets the overrides; `display` falls back to print;
IPython magics and shell escapes are dropped (notebooks here do not rely on them).
"""
from __future__ import annotations

import argparse
import ast
import json
import sys

PRELUDE = '''\
import sys as _sys, os as _os
_sys.path.insert(0, _os.getcwd())
# Like a notebook kernel, __main__ has no file: multiprocessing's "spawn" children then import what they need
# instead of re-running this whole script (which would start the notebook again inside every child).
import __main__ as _main
if hasattr(_main, "__file__"):
    del _main.__file__
try:
    from IPython.display import display, Markdown, HTML  # noqa: F401
except ImportError:  # no Jupyter here: show what would be displayed as text
    def display(*objs, **kw):
        for o in objs:
            print(o)
    Markdown = HTML = str
'''


def convert(path: str, overrides: dict) -> str:
    nb = json.load(open(path))
    parts = [PRELUDE]
    for i, cell in enumerate(nb["cells"]):
        tags = cell.get("metadata", {}).get("tags", [])
        if cell["cell_type"] != "code" or "injected-parameters" in tags:
            continue  # papermill's injected cell would undo the overrides below
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        lines = [l for l in src.splitlines() if not l.lstrip().startswith(("%", "!"))]
        parts.append(f"# ---- cell {i}")
        parts.append("\n".join(lines))
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            parts.append("# ---- overrides")
            parts += [f"{k} = {v!r}" for k, v in overrides.items()]
    return "\n".join(parts) + "\n"


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook")
    ap.add_argument("-p", "--param", action="append", default=[], help="NAME=VALUE")
    args = ap.parse_args()
    overrides = {}
    for kv in args.param:
        k, _, v = kv.partition("=")
        overrides[k] = parse_value(v)
    sys.stdout.write(convert(args.notebook, overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
