"""The index as a gallery, and a topic's full-scale run page, on a temp copy of two topics: 06 with a
full run published by ci/full_runs.py from its own notebook (a fixture: no real full.ipynb needs to be
committed), and 00 without figure or full run. Opened in Chromium at 1280 px and at a 390 px phone."""
from __future__ import annotations

import base64
import html
import json
import shutil

import nbformat
import pytest
from full_run_fixture import MACHINE, as_full_run, png_b64
from nbformat.v4 import new_code_cell, new_notebook, new_output

import build_site
import full_runs
import site_check
from site_check import ROOT, SCREENSHOTS, shown_images

FULL, PLAIN = "06_virtio_offload", "00_environment_check"
RUN = "gallery-fixture-run"


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """(site folder, temp notebooks folder, build entries by folder)."""
    tmp = tmp_path_factory.mktemp("gallery")
    notebooks = tmp / "notebooks"
    for folder in (FULL, PLAIN):
        (notebooks / folder).mkdir(parents=True)
        shutil.copy(ROOT / "notebooks" / folder / f"{folder}.ipynb", notebooks / folder)
    smoke = nbformat.read(notebooks / FULL / f"{FULL}.ipynb", as_version=4)
    executed = tmp / "executed.ipynb"
    nbformat.write(as_full_run(smoke, RUN, root="/home/gpu-runner/repo", folder=FULL), executed)
    ref = json.loads((ROOT / "notebooks" / FULL / "results" / "full.json").read_text())
    results = tmp / "results.json"
    results.write_text(json.dumps(dict(ref, run_id=RUN, machine=MACHINE, created="2026-11-30")))
    full_runs.publish(executed, FULL, results, notebooks=notebooks)
    site = tmp / "site"
    entries = build_site.build(notebooks, site, summary_path=tmp / "no-summary.json", quiet=True, notebooks=notebooks)
    return site, notebooks, {e["folder"]: e for e in entries}


def card_html(index: str, folder: str) -> str:
    start = index.index(f'id="topic-{folder}"')
    return index[start:index.index("</div></div></li>", start)]


def test_a_card_links_both_runs_with_the_full_runs_machine_and_date(gallery):
    site, notebooks, entries = gallery
    index = (site / "index.html").read_text()
    card = card_html(index, FULL)
    assert f'href="{FULL}.html"' in card and f'href="{FULL}.full.html"' in card
    assert "Full run &middot; NVIDIA H200 &middot; 2026-11-30" in card  # machine_label of the fixture's machine
    assert "Full results: NVIDIA H200, 2026-11-30 (profile full)" in card  # its full.json, the same run
    assert "(the published run: 10.2 min, papermill)" in card  # papermill's duration, 612.5 s
    assert (site / f"{FULL}.full.html").is_file()
    full_page = html.unescape((site / f"{FULL}.full.html").read_text())
    assert "full-scale run · NVIDIA H200 · 2026-11-30 15:04 UTC · profile full" in full_page
    assert f"(run {RUN})" in full_page and "injected-parameters" in full_page
    # The card figure comes from the full run, scaled for a card.
    assert f'src="img/{FULL}.png"' in card
    assert build_site.png_size((site / "img" / f"{FULL}.png").read_bytes())[0] <= build_site.CARD_IMAGE_WIDTH
    plain = card_html(index, PLAIN)
    assert "no full run yet" in plain and "<img" not in plain and "no metric thresholds" in plain


def test_a_card_shows_the_metrics_the_topic_is_judged_by(gallery):
    site, notebooks, entries = gallery
    card = card_html((site / "index.html").read_text(), FULL)
    thresholds = list(build_site.metadata()[FULL]["thresholds"])
    shown = [name for name in thresholds if f"<code>{name}</code>" in card]
    assert shown == thresholds[:build_site.HEADLINE_METRICS]  # in metadata order, not alphabetical
    smoke = build_site.recorded_metrics(nbformat.read(notebooks / FULL / f"{FULL}.ipynb", as_version=4))
    full = json.loads((notebooks / FULL / "results" / "full.json").read_text())["metrics"]
    name = thresholds[0]
    assert f"smoke <b>{build_site.fmt_num(smoke[name])}</b>" in card
    assert f"full <b>{build_site.fmt_num(full[name])}</b>" in card
    more = len(thresholds) - build_site.HEADLINE_METRICS
    assert (f"and {more} more on the page" in card) == (more > 0)


PAGES = [("index", 1280), ("index", 390), (f"{FULL}.full", 1280), (f"{FULL}.full", 390)]


@pytest.mark.parametrize("page, width", PAGES, ids=[f"{p}-{w}" for p, w in PAGES])
def test_gallery_pages_in_chromium(gallery, browser, page, width):
    site, notebooks, _ = gallery
    shot = SCREENSHOTS / f"gallery-{page}-{width}.png"
    with site_check.serve(site) as url:
        report = site_check.check_page(browser, f"{url}{page}.html", url, screenshot=shot,
                                       full_page=(page == "index"), width=width)
    problems = report.problems()
    assert not problems, f"{report.url}:\n  " + "\n  ".join(problems)
    assert report.width == width and shot.stat().st_size > 1000
    nb = (notebooks / FULL / "results" / "full.ipynb") if page.endswith(".full") else notebooks / FULL / f"{FULL}.ipynb"
    expected = 1 if page == "index" else shown_images(nbformat.read(nb, as_version=4))
    assert report.images >= expected > 0


def test_a_page_wider_than_a_phone_is_caught(tmp_path, browser):
    # The negative control of the sideways-scroll check.
    (tmp_path / "wide.html").write_text('<!DOCTYPE html><html><head><meta name="viewport" content="width=device-width">'
                                        '<link rel="icon" href="data:,"></head><body><div style="width:900px">x</div>'
                                        '</body></html>')
    with site_check.serve(tmp_path) as url:
        report = site_check.check_page(browser, url + "wide.html", url, width=390)
    assert report.overflow_x > 400 and any("scrolls sideways" in p for p in report.problems())


# ---------------------------------------------------------------- without a browser


def test_recorded_metrics_reads_labkits_compare_table():
    from labkit.results import compare_table

    table = compare_table({"psnr_db": 31.23456, "ms": 4.0}, {"metrics": {"psnr_db": 30.0}, "created": "x"},
                          {"psnr_db": "paper: 32"})
    nb = new_notebook(cells=[new_code_cell("show(table)", outputs=[new_output(
        "display_data", data={"text/html": table._repr_html_(), "text/plain": str(table)})])])
    assert build_site.recorded_metrics(nb) == {"psnr_db": 31.235, "ms": 4.0}  # as shown: 3 decimals
    assert build_site.recorded_metrics(new_notebook()) == {}


def figure_cell(b64: str, tags=()):
    return new_code_cell("plot()", metadata={"tags": list(tags)},
                         outputs=[new_output("display_data", data={"image/png": b64, "text/plain": "<Figure>"})])


def test_card_figure_prefers_the_tagged_cell_then_a_real_plot():
    strip, small, plot, tagged = png_b64(900, 100), png_b64(120, 90), png_b64(640, 360), png_b64(500, 400)
    nb = new_notebook(cells=[figure_cell(strip), figure_cell(small), figure_cell(plot)])
    assert build_site.card_figure(nb) == base64.b64decode(plot)  # not the thin strip, not the thumbnail
    nb.cells.append(figure_cell(tagged, tags=[build_site.FIGURE_TAG]))
    assert build_site.card_figure(nb) == base64.b64decode(tagged)
    assert build_site.card_figure(new_notebook(cells=[figure_cell(strip)])) == base64.b64decode(strip)
    assert build_site.card_figure(new_notebook(cells=[figure_cell("bm90IGEgcG5n")])) is None  # 'not a png'


def test_an_unreadable_full_run_is_reported_not_fatal(tmp_path):
    notebooks = tmp_path / "notebooks"
    (notebooks / PLAIN / "results").mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / PLAIN / f"{PLAIN}.ipynb", notebooks / PLAIN)
    (notebooks / PLAIN / "results" / "full.ipynb").write_text("{ not a notebook")
    entries = build_site.build(notebooks, tmp_path / "site", summary_path=tmp_path / "none.json", quiet=True,
                               notebooks=notebooks)
    entry = {e["folder"]: e for e in entries}[PLAIN]
    assert entry["page"] == f"{PLAIN}.html" and "results/full.ipynb" in entry["failed"]
    card = card_html((tmp_path / "site" / "index.html").read_text(), PLAIN)
    assert "could not be rendered" in card and f"{PLAIN}.full.html" not in card


def test_a_run_summary_gives_the_cards_exact_metrics_and_its_profile(tmp_path):
    # After `make run PROFILE=full`: build/summary.json's metrics (not rounded) and labels that say so.
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"profile": "full", "notebooks": [
        {"notebook": FULL, "status": "ok", "wall_s": 170.4, "metrics": {"model_sw_gbps": 5.0123456}}]}))
    empty = tmp_path / "executed"
    empty.mkdir()
    build_site.build(empty, tmp_path / "site", summary_path=summary, quiet=True)
    card = card_html((tmp_path / "site" / "index.html").read_text(), FULL)
    assert "full <b>5.012</b>" in card and "reference <b>" in card
    assert "Last run: <span class=\"lk-ok\">ok</span> &middot; 170 s" in card


def test_run_times_read_as_utc():
    assert build_site.fmt_when("2026-11-30T17:04:05+02:00") == "2026-11-30 15:04 UTC"
    assert build_site.fmt_when("2026-11-26") == "2026-11-26"
    assert build_site.fmt_when(None) == "?" and build_site.fmt_when("last <b>week</b>") == "last &lt;b&gt;week&lt;/b&gt;"


def test_a_full_run_without_figures_keeps_the_smoke_runs_figure(tmp_path):
    """A full run whose plots were not captured (as on 2026-11-30, MPLBACKEND=Agg) must not blank the card."""
    notebooks = tmp_path / "notebooks"
    (notebooks / FULL).mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / FULL / f"{FULL}.ipynb", notebooks / FULL)
    smoke = nbformat.read(notebooks / FULL / f"{FULL}.ipynb", as_version=4)
    assert build_site.card_figure(smoke) is not None
    bare = as_full_run(smoke, RUN, root="/home/gpu-runner/repo", folder=FULL)
    for cell in bare.cells:
        cell["outputs"] = [o for o in cell.get("outputs", []) if "image/png" not in o.get("data", {})]
    executed = tmp_path / "executed.ipynb"
    nbformat.write(bare, executed)
    ref = json.loads((ROOT / "notebooks" / FULL / "results" / "full.json").read_text())
    results = tmp_path / "results.json"
    results.write_text(json.dumps(dict(ref, run_id=RUN, machine=MACHINE, created="2026-11-30")))
    full_runs.publish(executed, FULL, results, notebooks=notebooks, allow_no_figures=True)
    entries = build_site.build(notebooks, tmp_path / "site", summary_path=tmp_path / "none.json", quiet=True,
                               notebooks=notebooks)
    entry = {e["folder"]: e for e in entries}[FULL]
    assert entry["full"] and entry["full"].get("page") and entry["figure"] == f"img/{FULL}.png"
