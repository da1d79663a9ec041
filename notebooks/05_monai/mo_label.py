"""MONAI Label from Python: start the server (loopback, managed process), talk REST, simulate an annotator.

The server is the real `monailabel` 0.8.5 (`python -m monailabel.main start_server`), installed without its
declared dependencies (those would replace the pinned torch); see the notebook for the exact conflicts.
Its processes get `mo_label_app/compat` on PYTHONPATH: one module alias that lets pydicom-seg import under
pydicom 3 (explained in mo_label_app/compat/sitecustomize.py). Requests pass through `mo_label_guard` first
(monailabel's `--uvicorn_app` option), which answers bad input with a 4xx and one clear line.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
APP_DIR = HERE / "mo_label_app"


def available() -> Optional[str]:
    """None when monailabel can be imported here, else the reason (a short message)."""
    import importlib.util
    for mod in ("monailabel", "fastapi", "uvicorn", "pydicom_seg", "itk"):
        if importlib.util.find_spec(mod) is None:
            return f"module {mod!r} is not installed (see requirements/nodeps.txt)"
    return None


def prepare_model_dir(model_dir: Path, net, settings: dict) -> Path:
    """Write model.pt (state_dict) and settings.json for the app."""
    import torch
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, model_dir / "model.pt")
    (model_dir / "settings.json").write_text(json.dumps(settings))
    return model_dir


def prepare_studies(studies: Path, images: Dict[str, str]) -> Path:
    """A MONAI Label local datastore: a folder of images named <id>.nii.gz (no labels yet)."""
    studies = Path(studies)
    if studies.exists():
        shutil.rmtree(studies)
    studies.mkdir(parents=True)
    for sid, path in images.items():
        shutil.copyfile(path, studies / f"{sid}.nii.gz")
    return studies


def server(studies: Path, model_dir: Path, workdir: Path, epochs: int = 2, port: Optional[int] = None,
           start_timeout: float = 240.0):
    """A labkit ManagedProcess running the MONAI Label server on 127.0.0.1 (use it as a context manager)."""
    from labkit.procs import ManagedProcess, free_port, http_ready
    port = port or free_port()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # monailabel writes bin/, lib/, logs/ and model/ into the app folder: run a copy, keep the repo clean
    app_dir = workdir / "app"
    if app_dir.exists():
        shutil.rmtree(app_dir)
    shutil.copytree(APP_DIR, app_dir, ignore=shutil.ignore_patterns("__pycache__", "compat", "bin", "lib", "logs", "model"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APP_DIR / "compat"), str(HERE)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update({"MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false", "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
                "MONAI_LABEL_TASKS_BATCH_INFER": "false", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"})
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app_dir), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port), "--conf", "model_dir", str(model_dir),
           "--conf", "epochs", str(epochs), "--uvicorn_app", "mo_label_guard:app"]
    proc = ManagedProcess(cmd, ready=http_ready(f"http://127.0.0.1:{port}/info/", timeout=2.0), name="monailabel",
                          env=env, cwd=str(workdir), start_timeout=start_timeout, log_path=workdir / "server.log")
    proc.url = f"http://127.0.0.1:{port}"
    return proc


class Client:
    """The few REST calls a viewer (3D Slicer, OHIF) makes, with `requests`."""

    def __init__(self, url: str, timeout: float = 600.0):
        self.url, self.timeout = url.rstrip("/"), timeout

    def _check(self, r):
        if r.status_code >= 400:
            raise RuntimeError(f"{r.request.method} {r.url} -> {r.status_code}: {r.text[:500]}")
        return r

    def info(self) -> dict:
        import requests
        return self._check(requests.get(f"{self.url}/info/", timeout=self.timeout)).json()

    def datastore(self) -> dict:
        import requests
        return self._check(requests.get(f"{self.url}/datastore/", params={"output": "stats"}, timeout=self.timeout)).json()

    def infer(self, model: str, image_id: str) -> np.ndarray:
        """POST /infer/{model}?image=<id>: the label volume the server returns (NIfTI bytes -> array)."""
        import nibabel as nib
        import requests
        r = self._check(requests.post(f"{self.url}/infer/{model}", params={"image": image_id, "output": "image"},
                                      timeout=self.timeout))
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "label.nii.gz"
            p.write_bytes(r.content)
            return np.asarray(nib.load(str(p)).dataobj).astype(np.uint8)

    def save_label(self, image_id: str, label_path: str) -> dict:
        """PUT /datastore/label: the annotator's final (corrected) label for an image."""
        import requests
        with open(label_path, "rb") as f:
            r = requests.put(f"{self.url}/datastore/label", params={"image": image_id, "tag": "final"},
                             files={"label": (Path(label_path).name, f)}, data={"params": "{}"}, timeout=self.timeout)
        return self._check(r).json()

    def train(self, model: str, max_epochs: Optional[int] = None) -> dict:
        """POST /train/{model}?run_sync=true: the server runs the training task (in a subprocess) and answers.
        The JSON body's keys go straight into the task's request (monailabel's AsyncTask.run), so they are flat."""
        import requests
        params = {"max_epochs": int(max_epochs)} if max_epochs else None
        r = requests.post(f"{self.url}/train/{model}", params={"run_sync": "true"},
                          json=params, timeout=self.timeout)
        return self._check(r).json()

    def next_sample(self, strategy: str = "random") -> dict:
        import requests
        return self._check(requests.post(f"{self.url}/activelearning/{strategy}", json={},
                                         timeout=self.timeout)).json()


def active_learning(client: Client, pool: Dict[str, str], test: Dict[str, str], rounds: int, dice_fn,
                    model: str = "tissue", log=print) -> dict:
    """Simulated annotation loop.

    pool / test: {image id in the datastore: path of its true label}. Each round: infer every pool image
    through the server, score it against the truth (the simulated annotator's eye), "correct" the worst one
    by uploading its true label, then ask the server to retrain. Test images are never labelled; their mean
    GM/WM Dice (through the server's /infer) is measured before the first and after every round.
    """
    import nibabel as nib
    truth = {k: np.asarray(nib.load(v).dataobj).astype(np.uint8) for k, v in {**pool, **test}.items()}

    def test_dice():
        return float(np.mean([np.mean(dice_fn(client.infer(model, k), truth[k])) for k in test]))

    history = {"round": [0], "test_dice": [test_dice()], "corrected": [], "pool_dice": [], "train": []}
    log(f"round 0: held-out mean GM/WM Dice {history['test_dice'][0]:.3f}")
    remaining = dict(pool)
    for r in range(1, rounds + 1):
        if not remaining:
            break
        scores = {k: float(np.mean(dice_fn(client.infer(model, k), truth[k]))) for k in remaining}
        worst = min(scores, key=scores.get)
        client.save_label(worst, remaining.pop(worst))
        stats = client.train(model)
        history["pool_dice"].append(scores)
        history["corrected"].append(worst)
        history["train"].append(stats)
        history["round"].append(r)
        history["test_dice"].append(test_dice())
        log(f"round {r}: corrected {worst} (its Dice was {scores[worst]:.3f}); retrained; "
            f"held-out mean GM/WM Dice {history['test_dice'][-1]:.3f}")
    return history
