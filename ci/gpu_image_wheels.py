"""Wheels that make a bare GPU image run our notebooks with papermill (standard library only).

Some GPU machines come as an image with CUDA builds of torch and JAX but no Jupyter and no Keras, no
registry reachable, and no way to install the full requirements/lock-gpu.txt (this project's GPU
machines: Python 3.12, see ../shared/GPU_MACHINES.md in the workspace). This downloads, here, the wheels
of what such an image lacks to execute a notebook: the papermill/Jupyter execution stack and Keras 3,
at requirements/lock.txt's versions, for the image's Python. On the machine, `source ci/gpu_image_env.sh`
installs them into a temporary folder and points PYTHONPATH there; then `python3 ci/run_notebooks.py
--profile full --device cuda` runs exactly as on a CPU machine (same runner, timeouts, failure report).

    python3 ci/gpu_image_wheels.py [--python 3.12] [--dest .whl] [--only jupyter|keras]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import freeze_lock  # noqa: E402  (the lock's parser, one place)

ROOT = Path(__file__).resolve().parents[1]
# What papermill needs that an image with torch/JAX/numpy/pyyaml/requests/tqdm/psutil/pygments/aiohttp
# usually lacks (read from the wheels' Requires-Dist), and Keras 3 for the Keras topics' JAX backend.
GROUPS = {
    "jupyter": ["papermill", "nbclient", "nbformat", "jupyter_client", "jupyter_core", "ipykernel", "ipython",
                "traitlets", "pyzmq", "tornado", "comm", "debugpy", "matplotlib-inline", "nest-asyncio2",
                "fastjsonschema", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",
                "entrypoints", "tenacity", "jedi", "parso", "pexpect", "ptyprocess", "prompt_toolkit", "wcwidth",
                "stack-data", "executing", "asttokens", "pure_eval", "ipython_pygments_lexers", "platformdirs",
                "ipywidgets", "widgetsnbextension", "jupyterlab_widgets"],
    "keras": ["keras", "namex", "optree"],
}
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (28, 27, 26, 17, 12, 5)] + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default="3.12", help="the image's Python version")
    ap.add_argument("--dest", default=str(ROOT / ".whl"))
    ap.add_argument("--only", choices=sorted(GROUPS), action="append")
    args = ap.parse_args(argv)
    pins = freeze_lock.pins(ROOT / "requirements" / "lock.txt")
    names = [n for g in (args.only or sorted(GROUPS)) for n in GROUPS[g]]
    missing = [n for n in names if freeze_lock.name(n) not in pins]
    if missing:
        raise SystemExit(f"not pinned in requirements/lock.txt: {missing}")
    reqs = [f"{n}=={pins[freeze_lock.name(n)]}" for n in names]
    abi = "cp" + args.python.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", args.dest,
           "--python-version", args.python, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for p in PLATFORMS + ["any"]:
        cmd += ["--platform", p]
    subprocess.run(cmd + reqs, check=True)
    print(f"{len(reqs)} wheels for Python {args.python} in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
