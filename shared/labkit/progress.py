"""Progress bars that work in JupyterLab, under papermill and in a terminal."""
from __future__ import annotations

import os


def progress(iterable=None, desc: str = "", total=None, **kw):
    """tqdm with one look everywhere; LABKIT_NO_PROGRESS=1 turns bars off (CI logs)."""
    from tqdm.auto import tqdm
    disable = os.environ.get("LABKIT_NO_PROGRESS") == "1"
    return tqdm(iterable, desc=desc, total=total, disable=disable, mininterval=1.0, **kw)
