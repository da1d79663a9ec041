"""Fixtures of the learner-experience tests: the built site, a loopback server for it, a browser.

Environment (all optional):
  LABKIT_SITE_DIR   the site to test (default build/site); rebuilt when missing or older than a notebook
  LABKIT_SITE_FROM  where that site is built from when it must be (default notebooks: the committed ones)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT / "ci", ROOT / "ci" / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import build_site  # noqa: E402
import site_check  # noqa: E402


def _resolve(env: str, default: str) -> Path:
    p = Path(os.environ.get(env) or default)
    return p if p.is_absolute() else ROOT / p


def _site_inputs(src: Path) -> list:
    files = [ROOT / "ci" / "metadata.yml", ROOT / "ci" / "build_site.py", ROOT / "build" / "summary.json"]
    files += list(src.glob("*.ipynb")) + list(src.glob("*/*.ipynb"))
    files += list((ROOT / "notebooks").glob("*/results/full.json"))
    files += list((ROOT / "notebooks").glob("*/results/full.ipynb"))
    return [f for f in files if f.exists()]


@pytest.fixture(scope="session")
def site_source() -> Path:
    return _resolve("LABKIT_SITE_FROM", "notebooks")


@pytest.fixture(scope="session")
def site_dir(site_source) -> Path:
    """The built site; (re)built here when absent or older than what it is made from."""
    out = _resolve("LABKIT_SITE_DIR", "build/site")
    index = out / "index.html"
    stale = (not index.exists()) or any(f.stat().st_mtime > index.stat().st_mtime
                                         for f in _site_inputs(site_source))
    if stale:
        build_site.build(site_source, out, quiet=True)
    return out


@pytest.fixture(scope="session")
def site_url(site_dir):
    with site_check.serve(site_dir) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (Debian's /usr/bin/chromium) for the session, fresh profile."""
    with site_check.browser_context() as ctx:
        yield ctx
