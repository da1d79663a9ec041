"""Executed full-profile notebooks for tests, made the way the GPU run makes them: papermill's
injected-parameters cell and metadata, the run's id and machine under metadata.labkit, and a results
file with the same run id. Nothing here is committed: tests write into temp folders."""
from __future__ import annotations

import base64
import copy
import io
import json
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

MACHINE = {"cpu": "Intel(R) Xeon(R) Processor (16 cores)", "gpu": "NVIDIA H200", "gpu_count": 1,
           "python": "3.12.3", "versions": {"torch": "2.11.0"}}


def png_b64(w: int, h: int, noisy: bool = False, seed: int = 0) -> str:
    """A w x h RGB PNG: a smooth gradient (plot-like) or random noise (does not compress)."""
    import numpy as np
    from PIL import Image

    if noisy:
        pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
        y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
        pixels = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                                 np.full((h, w, 1), 90, np.float32)], axis=2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def as_full_run(nb, run_id: str, root: str = "/home/runner/work/repo", folder: str = "98_synthetic",
                created: str = "2026-11-30T15:04:05+00:00", machine: dict | None = None):
    """A copy of `nb` marked up as papermill's execution of it with profile=full on a GPU machine."""
    nb = copy.deepcopy(nb)
    params = {"profile": "full", "device": "cuda"}
    injected = new_code_cell('# Parameters\nprofile = "full"\ndevice = "cuda"\n', execution_count=2,
                             metadata={"tags": ["injected-parameters"]})
    at = next((i + 1 for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), 0)
    nb.cells.insert(at, injected)
    nb.metadata["papermill"] = {"parameters": params, "input_path": f"{root}/notebooks/{folder}/{folder}.ipynb",
                                "output_path": f"{root}/build/executed/{folder}.ipynb", "duration": 612.5,
                                "start_time": created, "exception": None}
    nb.metadata["labkit"] = {"run_id": run_id, "profile": "full", "created": created,
                             "machine": machine or MACHINE}
    return nb


def synthetic_executed(run_id: str = "run-2026-11-30-a", root: str = "/home/runner/work/repo",
                       figures: list | None = None, error: bool = False):
    """A small executed full run of topic 98_synthetic whose outputs carry paths and secrets."""
    figures = figures if figures is not None else [png_b64(320, 240)]
    cells = [new_markdown_cell("# 98 · A synthetic topic\n\nUsed by the tests of ci/full_runs.py."),
             new_code_cell('profile = "smoke"\ndevice = "auto"\nseed = 0\n', execution_count=1,
                           metadata={"tags": ["parameters"]}),
             new_code_cell("print(paths)", execution_count=3, outputs=[new_output(
                 "stream", name="stdout",
                 text=(f"results written to {root}/build/results/98_synthetic.full.json\n"
                       "checkpoint in /tmp/tmpa1b2c3/model.bin, cache /root/.cache/x, home /home/alice/data\n"
                       "open http://127.0.0.1:8888/lab?token=0123456789abcdef0123456789abcdef\n"
                       "HF_TOKEN=hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789\n"
                       "GPT-J 4.79 ms/token: 64 tokens\n"))])]
    for i, fig in enumerate(figures):
        cells.append(new_code_cell(f"show({i})", execution_count=4 + i, outputs=[
            new_output("display_data", data={"image/png": fig, "text/plain": "<Figure size 640x480 with 1 Axes>"})]))
    if error:
        cells.append(new_code_cell("1/0", execution_count=9, outputs=[new_output(
            "error", ename="ZeroDivisionError", evalue="division by zero", traceback=["ZeroDivisionError"])]))
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    return as_full_run(nb, run_id, root)


def make_topic(notebooks: Path, folder: str = "98_synthetic") -> Path:
    """notebooks/<folder>/<folder>.ipynb (the smoke notebook) in a temp notebooks folder."""
    topic = notebooks / folder
    topic.mkdir(parents=True, exist_ok=True)
    nbformat.write(new_notebook(cells=[new_markdown_cell("# 98 · A synthetic topic")]), topic / f"{folder}.ipynb")
    return topic


def results_file(path: Path, run_id: str, folder: str = "98_synthetic", metrics: dict | None = None,
                 profile: str = "full", machine: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"notebook": folder, "profile": profile, "created": "2026-11-30",
                                "machine": machine or MACHINE, "metrics": metrics or {"psnr_db": 31.5},
                                "run_id": run_id}, indent=2) + "\n")
    return path
