"""The rendered site, opened in headless Chromium: every page loads clean, shows its figures and no
failed cell; and the check itself fails on a page that shows an error (negative tests)."""
from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

import build_site
import site_check
from site_check import ROOT, SCREENSHOTS, committed_notebooks, shown_images

FOLDERS = [p.parent.name for p in committed_notebooks()]
# Published full-scale runs (ci/full_runs.py) have pages of their own: <folder>.full.html.
FULL_RUNS = [f for f in FOLDERS if (ROOT / "notebooks" / f / "results" / "full.ipynb").is_file()]
PAGES = ["index"] + FOLDERS + [f"{f}.full" for f in FULL_RUNS]
PHONE = 390  # CSS px: a phone held upright
# Every page at 1280 px; at phone width the index, the first notebook and every full-scale run
# (test_gallery.py opens a smoke and a full page of one topic at both widths too).
CHECKS = [(p, 1280) for p in PAGES] + [(p, PHONE) for p in PAGES if p in ("index", FOLDERS[0]) or p.endswith(".full")]


def tiny_png(w: int = 4, h: int = 3) -> bytes:
    """A valid w x h RGB PNG, made by hand (no plotting library needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + bytes([200, 30, 30]) * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def assert_clean(report: site_check.PageReport):
    problems = report.problems()
    assert not problems, f"{report.url}:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------- the real site


def test_index_lists_every_topic(site_dir):
    index = (site_dir / "index.html").read_text()
    for folder in FOLDERS:
        assert f'href="{folder}.html"' in index, f"index does not link {folder}"
        assert (site_dir / f"{folder}.html").is_file(), f"{folder}.html was not rendered"
    for folder, meta in build_site.metadata().items():
        assert f'id="topic-{folder}"' in index, f"metadata topic {folder} is missing from the index"
        if folder not in FOLDERS:
            assert "not built" in index
    for folder in FULL_RUNS:
        assert f'href="{folder}.full.html"' in index, f"index does not link the full run of {folder}"
        assert (site_dir / f"{folder}.full.html").is_file()


@pytest.mark.parametrize("page, width", CHECKS, ids=[f"{p}-{w}" for p, w in CHECKS])
def test_page_loads_clean_in_chromium(page, width, site_dir, site_url, site_source, browser):
    name = f"{page}.html"
    # Screenshots kept as build artefacts: the index at both widths (whole page), the first screen
    # of the first notebook and of each full-scale run.
    shot = SCREENSHOTS / f"{page}-{width}.png" if page in ("index", FOLDERS[0]) or page.endswith(".full") else None
    report = site_check.check_page(browser, site_url + name, site_url, screenshot=shot,
                                   full_page=(page == "index"), width=width)
    assert_clean(report)
    assert report.width == width
    if shot is not None:
        assert shot.stat().st_size > 1000
    if page == "index":
        assert report.images == len(list((site_dir / "img").glob("*.png"))) > 0  # one figure per card that has one
    else:
        folder = page.removesuffix(".full")
        src = (ROOT / "notebooks" / folder / "results" / "full.ipynb" if page.endswith(".full")
               else build_site.find_notebook(site_source, folder))
        if src is not None:
            expected = shown_images(nbformat.read(src, as_version=4))
            assert report.images >= expected, (f"{name} shows {report.images} images but the notebook "
                                               f"has {expected} image outputs")


# ---------------------------------------------------------------- the checks can fail


def synthetic_notebook(error: bool, expected_error: bool = False):
    png = base64.b64encode(tiny_png()).decode()
    cells = [new_markdown_cell("# 98 · A synthetic page\n\nUsed by the tests of the site check."),
             new_code_cell("print('hello')", execution_count=1,
                           outputs=[new_output("stream", name="stdout", text="hello\n")]),
             new_code_cell("show(img)", execution_count=2,
                           outputs=[new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})]),
             new_code_cell("import warnings; warnings.warn('just a warning')", execution_count=3,
                           outputs=[new_output("stream", name="stderr", text="UserWarning: just a warning\n")])]
    tb = ["\x1b[0;31m---------------------------------------------------------------------------\x1b[0m",
          "\x1b[0;31mZeroDivisionError\x1b[0m                         Traceback (most recent call last)",
          "Cell \x1b[0;32mIn[4], line 1\x1b[0m\n\x1b[0;32m----> 1\x1b[0m \x1b[38;5;241m1\x1b[39m\x1b[38;5;241m/\x1b[39m\x1b[38;5;241m0\x1b[39m",
          "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero"]
    err = new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=tb)
    if error:
        cells.append(new_code_cell("1/0", execution_count=4, outputs=[err]))
    if expected_error:
        cells.append(new_code_cell("1/0  # shown on purpose", execution_count=5, outputs=[err],
                                   metadata={"tags": ["raises-exception"]}))
    return new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                              "language": "python"}})


def build_synthetic(tmp_path: Path, **kw) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(synthetic_notebook(**kw), src / "98_synthetic.ipynb")
    out = tmp_path / "site"
    build_site.build(src, out, summary_path=tmp_path / "no-summary.json", quiet=True)
    return out


def test_check_fails_on_a_page_with_an_error_output(tmp_path, browser):
    site = build_synthetic(tmp_path, error=True)
    assert "1 error output(s)" in (site / "index.html").read_text()
    with site_check.serve(site) as url:
        report = site_check.check_page(browser, url + "98_synthetic.html", url)
    assert report.error_outputs, "an error output in the page went unnoticed"
    assert any("ZeroDivisionError" in e for e in report.error_outputs)
    assert any("cell error shown" in p for p in report.problems())
    with pytest.raises(AssertionError, match="cell error shown"):
        assert_clean(report)


def test_check_passes_the_same_page_without_the_error(tmp_path, browser):
    # The control: warnings on stderr and an error shown on purpose (tag raises-exception) are fine,
    # and the synthetic figure is displayed.
    site = build_synthetic(tmp_path, error=False, expected_error=True)
    with site_check.serve(site) as url:
        report = site_check.check_page(browser, url + "98_synthetic.html", url)
    assert_clean(report)
    assert report.images == 1


def test_check_catches_console_errors_broken_images_and_outside_requests(tmp_path, browser):
    (tmp_path / "bad.html").write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"><title>bad</title>'
        '<script src="https://cdn.invalid.example/lib.js"></script></head><body>'
        '<img src="missing.png" alt="missing"><script>console.error("boom from the page")</script>'
        '</body></html>')
    with site_check.serve(tmp_path) as url:
        report = site_check.check_page(browser, url + "bad.html", url)
    assert any("cdn.invalid.example" in u for u in report.outside_requests)
    assert any("boom from the page" in m for m in report.console_errors)
    assert any("missing.png" in i for i in report.broken_images)
    with site_check.serve(tmp_path) as url:
        assert site_check.check_page(browser, url + "absent.html", url).status == 404


# ---------------------------------------------------------------- the index's content, without a browser


def test_missing_notebooks_are_listed_as_not_built(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"profile": "smoke", "notebooks": [
        {"notebook": "00_environment_check", "status": "FAILED", "wall_s": 12.3,
         "error": "cell 3 ('x') raised ValueError: nope"}]}))
    entries = build_site.build(empty, tmp_path / "site", summary_path=summary, quiet=True)
    index = (tmp_path / "site" / "index.html").read_text()
    assert entries and all(e["page"] is None for e in entries)
    assert index.count("lk-not-built") == len(entries)
    assert "FAILED" in index and "ValueError: nope" in index and "12 s" in index
    # no smoke page is made; a topic's committed full run (results/full.ipynb) still gets its own page
    with_full = {p.parents[1].name for p in (build_site.ROOT / "notebooks").glob("*/results/full.ipynb")}
    pages = sorted(p.name for p in (tmp_path / "site").glob("*.html"))
    assert pages == sorted(["index.html"] + [f"{f}.full.html" for f in with_full])


def test_notebook_found_in_a_topic_folder_and_stale_pages_removed(tmp_path):
    src = tmp_path / "src" / "98_synthetic"
    src.mkdir(parents=True)
    nbformat.write(synthetic_notebook(error=False), src / "98_synthetic.ipynb")
    out = tmp_path / "site"
    out.mkdir()
    (out / "97_gone.html").write_text("old")
    entries = build_site.build(tmp_path / "src", out, summary_path=tmp_path / "none.json", quiet=True)
    assert {e["folder"]: e["page"] for e in entries}["98_synthetic"] == "98_synthetic.html"
    page = (out / "98_synthetic.html").read_text()
    assert "A synthetic page" in page and "data:image/png;base64," in page
    assert not (out / "97_gone.html").exists()
    assert not list(out.glob(".*tmp*")), "a temporary file was left behind"


def test_reference_results_block_shows_machine_and_thresholds():
    ref = {"notebook": "98_synthetic", "profile": "full", "created": "2026-01-01T00:00:00",
           "machine": {"cpu": "x86", "gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 1,
                       "versions": {"torch": "2.11"}},
           "metrics": {"accuracy": 0.93, "loss": 0.5}}
    block = build_site.reference_block("98_synthetic", ref, {"thresholds": {"accuracy": {"min": 0.9},
                                                                            "loss": {"max": 0.2}}})
    assert "NVIDIA H100 80GB HBM3" in block and "torch 2.11" in block
    assert "0.93" in block and "meets" in block and "misses" in block
    assert build_site.reference_block("98_synthetic", None, {}) == ""
    stated = build_site.reference_block("98_synthetic", ref, {"thresholds": {
        "loss": {"max": 0.2, "accept": 0.6, "why": "one seed & <b>small</b> data"}}})
    assert "misses" in stated and "stated shortfall (accepted to 0.6): one seed &amp; &lt;b&gt;small&lt;/b&gt; data" in stated
    assert "lk-warn" in stated and "fails make test" not in stated
    ref["metrics"]["loss"] = 0.7          # past the accepted bound: a failure, not a stated shortfall
    past = build_site.reference_block("98_synthetic", ref, {"thresholds": {
        "loss": {"max": 0.2, "accept": 0.6, "why": "one seed"}}})
    assert "stated shortfall" not in past and "(past the accepted 0.6: fails make test)" in past


def test_math_is_rendered_as_mathml_without_any_script(tmp_path, browser):
    pytest.importorskip("latex2mathml", reason="latex2mathml (requirements.in) turns TeX into MathML")
    src = tmp_path / "src"
    src.mkdir()
    md = ("# 98 · Math\n\nThe loss $\\mathcal{L}(\\theta) = \\sum_i \\ell_i$ costs $5 and $10, "
          "code `$x$` stays code.\n\n$$\n\\nabla_\\theta \\mathcal{L} = \\frac{1}{N}\\sum_{i=1}^N g_i\n$$\n")
    nbformat.write(new_notebook(cells=[new_markdown_cell(md)]), src / "98_math.ipynb")
    build_site.build(src, tmp_path / "site", summary_path=tmp_path / "none.json", quiet=True)
    with site_check.serve(tmp_path / "site") as url:
        report = site_check.check_page(browser, url + "98_math.html", url)
        assert_clean(report)
        page = browser.new_page()
        try:
            page.goto(url + "98_math.html")
            maths = page.evaluate("""() => Array.from(document.querySelectorAll('math')).map(m => ({
                display: m.getAttribute('display'), w: m.getBoundingClientRect().width,
                h: m.getBoundingClientRect().height}))""")
            text = page.inner_text("main")
            code = page.inner_text("main code")
        finally:
            page.close()
    assert [m["display"] for m in maths] == ["inline", "block"]
    assert all(m["w"] > 10 and m["h"] > 5 for m in maths), maths  # laid out, i.e. rendered
    assert "\\mathcal" not in text and "\\frac" not in text
    assert "$5 and $10" in text and code == "$x$"


def test_an_unreadable_notebook_is_reported_not_fatal(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "97_broken.ipynb").write_text("{ this is not json")
    nbformat.write(synthetic_notebook(error=False), src / "98_synthetic.ipynb")
    rc = build_site.main(["--from", str(src), "--out", str(tmp_path / "site"),
                          "--summary", str(tmp_path / "none.json")])
    assert rc == 1
    index = (tmp_path / "site" / "index.html").read_text()
    assert "could not be rendered" in index and "98_synthetic.html" in index
    assert (tmp_path / "site" / "98_synthetic.html").is_file()
