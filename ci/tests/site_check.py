"""Helpers of the browser tests: serve a folder on loopback, drive Debian's Chromium, check a page.

`check_page` is the one definition of "this page is fine": it loaded (HTTP 200), logged no console
error and threw no script error, asked for nothing outside the site, displayed every <img>, shows
no error output of a notebook cell, and does not scroll sideways at the width it was opened at.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "build" / "screenshots"
if str(ROOT / "ci") not in sys.path:
    sys.path.insert(0, str(ROOT / "ci"))
from install_browser import CHROMIUM, launch_args  # noqa: E402

# Generous: the CI machine has 2 cores shared with other jobs.
NAV_TIMEOUT_MS = 120_000

# What a failed cell looks like in a rendered page: the class ci/build_site.py gives error outputs,
# papermill's "execution stopped here" banner, the classic template's error class, and a Python
# traceback inside an output area (lab template) unless the cell is tagged raises-exception.
ERROR_OUTPUTS_JS = """
() => {
  const found = [];
  const describe = (el, why) => found.push(why + ': ' + (el.innerText || '').trim().slice(0, 300));
  document.querySelectorAll('.lk-error-output, .output_error').forEach(el => describe(el, 'error output'));
  document.querySelectorAll('#papermill-error-cell, .papermill-error-cell').forEach(
    el => describe(el, 'papermill stopped here'));
  document.querySelectorAll('.jp-OutputArea-output, .output_subarea').forEach(el => {
    if (el.closest('.lk-expected-error, .lk-error-output, .output_error')) return;
    const text = el.innerText || '';
    if (/Traceback \\(most recent call last\\)/.test(text)) describe(el, 'traceback in an output');
  });
  return found;
}
"""

IMAGES_JS = """
() => Array.from(document.images).map(img => ({
  src: (img.getAttribute('src') || '').slice(0, 80),
  complete: img.complete,
  width: img.naturalWidth,
}))
"""


IMAGE_MIMES = ("image/png", "image/jpeg", "image/gif")


def shown_images(nb) -> int:
    """Image outputs the lab template shows as <img> (it prefers HTML/SVG when an output has them)."""
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if any(m in data for m in IMAGE_MIMES) and not any(m in data for m in ("text/html", "image/svg+xml")):
                n += 1
    return n


def committed_notebooks() -> list:
    """notebooks/<folder>/<folder>.ipynb that exist now, in order."""
    return sorted(p for p in (ROOT / "notebooks").glob("*/*.ipynb") if p.stem == p.parent.name)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """Serve `directory` on 127.0.0.1 at a free port; yields the base URL ('http://127.0.0.1:N/')."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def browser_context(viewport=(1280, 900)):
    """A Playwright BrowserContext of /usr/bin/chromium with a fresh profile folder; closed on exit."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run `python ci/install_browser.py` (as root) first")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=launch_args(),
            viewport={"width": viewport[0], "height": viewport[1]}, timeout=NAV_TIMEOUT_MS,
            env=dict(os.environ, TZ=os.environ.get("TZ", "UTC")))
        try:
            ctx.set_default_timeout(NAV_TIMEOUT_MS)
            ctx.set_default_navigation_timeout(NAV_TIMEOUT_MS)
            yield ctx
        finally:
            ctx.close()


@dataclass
class PageReport:
    url: str
    status: int | None = None
    console_errors: list = field(default_factory=list)
    page_errors: list = field(default_factory=list)
    outside_requests: list = field(default_factory=list)
    failed_requests: list = field(default_factory=list)
    broken_images: list = field(default_factory=list)
    error_outputs: list = field(default_factory=list)
    images: int = 0
    width: int = 0  # the viewport's CSS width
    overflow_x: int = 0  # how far the page scrolls sideways (px); wide code scrolls in its own box

    def problems(self) -> list:
        out = []
        if self.status != 200:
            out.append(f"HTTP status {self.status}")
        out += [f"console error: {m}" for m in self.console_errors]
        out += [f"script error: {m}" for m in self.page_errors]
        out += [f"request outside the site: {u}" for u in self.outside_requests]
        out += [f"failed request: {u}" for u in self.failed_requests]
        out += [f"image not displayed: {i}" for i in self.broken_images]
        out += [f"cell error shown: {e}" for e in self.error_outputs]
        if self.overflow_x > 0:
            out.append(f"the page scrolls sideways by {self.overflow_x} px at {self.width} px wide")
        return out


OVERFLOW_JS = "() => [window.innerWidth, document.documentElement.scrollWidth - window.innerWidth]"


def check_page(ctx, url: str, base: str, screenshot: Path | None = None,
               full_page: bool = False, width: int | None = None) -> PageReport:
    """Open `url` in a new page of `ctx` (at `width` CSS px, else the context's) and collect
    everything wrong with it (see PageReport)."""
    report = PageReport(url)
    page = ctx.new_page()
    if width is not None:
        page.set_viewport_size({"width": width, "height": 900})

    def on_request(route):
        req_url = route.request.url
        if req_url.startswith(base) or req_url.startswith("data:") or req_url.startswith("blob:"):
            route.continue_()
        else:  # never reach the network: record it and refuse
            report.outside_requests.append(req_url)
            route.abort()

    page.route("**/*", on_request)
    page.on("console", lambda m: report.console_errors.append(f"{m.text} ({m.location.get('url', '')})")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: report.page_errors.append(str(e)))
    page.on("requestfailed", lambda r: report.failed_requests.append(f"{r.url} ({r.failure})")
            if not any(r.url == u for u in report.outside_requests) else None)
    try:
        response = page.goto(url, wait_until="load")
        report.status = response.status if response else None
        page.wait_for_load_state("networkidle")
        # Wait (not sleep) until every image has finished loading or failing.
        page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
        images = page.evaluate(IMAGES_JS)
        report.images = len(images)
        report.broken_images = [i["src"] for i in images if not (i["complete"] and i["width"] > 0)]
        report.error_outputs = page.evaluate(ERROR_OUTPUTS_JS)
        report.width, report.overflow_x = page.evaluate(OVERFLOW_JS)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=full_page)
    finally:
        page.close()
    return report
