"""Build the static site: every notebook rendered to HTML, plus an index: a gallery of topic cards.

    python ci/build_site.py --from build/executed [--out build/html]
    python ci/build_site.py --from notebooks --out build/site     # the committed notebooks

A notebook is found as DIR/<folder>.ipynb or DIR/<folder>/<folder>.ipynb; a topic without one is
shown as "not built". A topic whose notebooks/<folder>/results/full.ipynb exists (its reference
full-scale run, published by ci/full_runs.py) also gets <folder>.full.html, labelled with the run's
machine, date and profile. The index has one card per topic: a representative figure (the image
output of a cell tagged `site-figure`, else the first figure that is not a thin strip; from the
full run when there is one), what you learn (ci/metadata.yml), the headline results the notebook
is judged by (its thresholds' metrics: this build's run, from build/summary.json or the notebook's
recorded-metrics table, and the full run's results/full.json with its machine), times, the last
run's status and links to both runs. Pages are self-contained: figures are embedded (card figures
are files under img/), the stylesheet is inline, and no script or font is loaded from anywhere (the
site works from a folder with no network): TeX math in markdown ($...$, $$...$$, \\(...\\), \\[...\\])
becomes MathML at build time with latex2mathml (it stays TeX when that package is missing), instead
of MathJax from a CDN. Every file is written atomically (temp file, then rename). Exit status 1 when
a notebook exists but cannot be rendered.
"""
from __future__ import annotations

import argparse
import base64
import copy
import io
import datetime as _dt
import html
import json
import re
import secrets
import sys
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import nbformat
from nbconvert import HTMLExporter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks import BUILD, NOTEBOOKS, ROOT, metadata  # noqa: E402
from check_thresholds import verdict as threshold_verdict  # noqa: E402  (make test's own judgement of a value)

try:
    from labkit.paths import atomic_write_bytes, atomic_write_text
except ImportError:  # labkit not installed: the same thing, locally
    import os

    def atomic_write_bytes(path: Path, payload: bytes) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(payload)
        os.replace(tmp, path)

    def atomic_write_text(path: Path, text: str) -> None:
        atomic_write_bytes(path, text.encode("utf-8"))

SITE_TITLE = "Tutorial notebooks"
TEMPLATE_NAME = "labkit_site.html.j2"
# Error outputs get a class of their own (nbconvert renders them like any stderr text), so the
# browser test can tell "this cell failed" from a warning; a cell tagged raises-exception shows
# an error on purpose and is marked as expected instead.
ERROR_CLASS = "lk-error-output"
EXPECTED_ERROR_CLASS = "lk-expected-error"

FIGURE_TAG = "site-figure"  # a code cell tagged so gives its topic's card figure
CARD_IMAGE_WIDTH = 720  # px: two device pixels per CSS pixel of a ~360 px wide card
HEADLINE_METRICS = 4  # results shown on a card (the page shows them all)

SITE_CSS = """
.lk-nav { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; font-size: 14px;
  padding: 8px 16px; border-bottom: 1px solid #ddd; background: #f7f7f7; line-height: 1.6; }
.lk-nav a { text-decoration: none; color: #1a5fb4; }
.lk-nav .lk-here { font-weight: 600; }
.lk-run-note { display: block; color: #555; }
.lk-ref { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px 16px;
  padding-top: 8px; border-top: 1px solid #ddd; }
.lk-ref table { border-collapse: collapse; font-size: 14px; display: block; max-width: 100%; overflow-x: auto; }
.lk-ref th, .lk-ref td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
.lk-ref th { background: #f0f0f0; }
.lk-ok { color: #26734d; font-weight: 600; }
.lk-bad { color: #b00020; font-weight: 600; }
.lk-warn { color: #8a5a00; font-weight: 600; }
.lk-muted { color: #666; }
.lk-error-output { border-left: 4px solid #b00020; }
/* Narrow screens: nothing wider than the screen; wide code, tables and outputs scroll in their box. */
.jp-Notebook img, .jp-OutputArea-output img { max-width: 100%; height: auto; }
.jp-RenderedHTMLCommon table { display: block; max-width: 100%; overflow-x: auto; }
.jp-OutputArea-output pre, .jp-InputArea-editor pre, .jp-RenderedHTMLCommon pre { overflow-x: auto; }
.jp-Cell, .jp-InputArea, .jp-OutputArea-child, .jp-InputArea-editor, .jp-OutputArea-output { min-width: 0; }
@media (max-width: 600px) {
  .jp-InputPrompt, .jp-OutputPrompt { display: none; }
  .jp-Notebook { padding: 4px; }
}
"""

GALLERY_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222;
  background: #f4f5f7; line-height: 1.45; }
.lk-page { max-width: 1240px; margin: 0 auto; padding: 16px; }
.lk-page > h1 { margin: 8px 0; font-size: 1.7rem; }
.lk-intro { max-width: 80ch; color: #444; margin-top: 0; }
.lk-gallery { display: grid; gap: 18px; grid-template-columns: repeat(auto-fill, minmax(min(100%, 340px), 1fr));
  padding: 0; margin: 16px 0; list-style: none; }
.lk-card { background: #fff; border: 1px solid #d8dbe0; border-radius: 10px; overflow: hidden;
  display: flex; flex-direction: column; min-width: 0; }
.lk-figure { display: block; background: #fff; border-bottom: 1px solid #eceef1; }
.lk-figure img { display: block; width: 100%; height: 190px; object-fit: contain; }
.lk-nofig { height: 190px; display: flex; align-items: center; justify-content: center;
  font-size: 3rem; color: #b8bec8; text-decoration: none; }
.lk-body { padding: 12px 16px 16px; display: flex; flex-direction: column; gap: 8px; flex: 1; }
.lk-body > * { margin: 0; }
.lk-folder { font-size: 12px; color: #666; font-family: ui-monospace, monospace; }
.lk-card h2 { font-size: 1.05rem; line-height: 1.3; overflow-wrap: anywhere; }
.lk-learn, .lk-covers p { overflow-wrap: anywhere; }
.lk-card h2 a { color: #1b1f24; text-decoration: none; }
.lk-card h2 a:hover { text-decoration: underline; }
.lk-learn { color: #333; }
.lk-covers summary { cursor: pointer; color: #1a5fb4; font-size: 14px; }
.lk-covers p { font-size: 14px; color: #444; margin: 4px 0 0; }
.lk-results { list-style: none; padding: 0; font-size: 14px; border-top: 1px solid #eceef1; }
.lk-results li { padding: 5px 0; border-bottom: 1px solid #eceef1; }
.lk-results code { display: block; font-size: 12.5px; color: #444; overflow-wrap: anywhere; }
.lk-results .lk-v { margin-right: 12px; white-space: nowrap; }
.lk-results .lk-th { color: #666; white-space: nowrap; }
.lk-fullon, .lk-times, .lk-status { font-size: 13.5px; color: #444; overflow-wrap: anywhere; }
.lk-links { display: flex; flex-wrap: wrap; gap: 8px; margin-top: auto; padding-top: 4px; }
.lk-btn { display: inline-block; padding: 6px 12px; border-radius: 6px; font-size: 14px; text-decoration: none;
  background: #1a5fb4; color: #fff; overflow-wrap: anywhere; }
.lk-btn.lk-full { background: #26734d; }
.lk-btn.lk-none { background: #eceef1; color: #666; }
"""

PAGE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{#- The lab template, minus everything it would fetch from a CDN (require.js, MathJax,
    mermaid, the widget manager): pages must render with no network. -#}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<link rel="icon" href="data:,">
<style type="text/css">{{ resources.lk_css }}</style>
{%- endblock extra_css -%}
{%- block body_header -%}
{{ super() }}
<nav class="lk-nav">{{ resources.lk_nav }}</nav>
{%- endblock body_header -%}
{% block body_footer %}
{{ resources.lk_footer }}
{{ super() }}
{% endblock body_footer %}
{% block error -%}
<div class="{{ resources.lk_expected_error_class if 'raises-exception' in cell.metadata.get('tags', []) else resources.lk_error_class }}">
{{ super() }}
</div>
{%- endblock error %}
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def find_notebook(src: Path, folder: str) -> Path | None:
    for p in (src / f"{folder}.ipynb", src / folder / f"{folder}.ipynb"):
        if p.is_file():
            return p
    return None


def discover(src: Path, meta: dict, notebooks: Path = NOTEBOOKS) -> list:
    """Topic folders: those in the metadata, in notebooks/, and in the source folder."""
    found = set(meta)
    found |= {p.parent.name for p in notebooks.glob("*/*.ipynb") if p.stem == p.parent.name}
    found |= {p.stem for p in src.glob("*.ipynb") if re.match(r"^\d\d_", p.stem)}
    found |= {p.parent.name for p in src.glob("*/*.ipynb") if p.stem == p.parent.name}
    return sorted(found)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def last_run(summary_path: Path) -> tuple:
    """(profile, {folder: row}) from the runner's summary.json; empty when absent or unreadable."""
    data = read_json(summary_path)
    if not isinstance(data, dict):
        return None, {}
    rows = {r.get("notebook"): r for r in data.get("notebooks", []) if isinstance(r, dict)}
    return data.get("profile"), rows


def fmt_num(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return esc(v)
    return f"{v:.4g}"


def fmt_minutes(v) -> str:
    return "&mdash;" if v is None else f"~{fmt_num(v)} min"


def threshold_text(spec) -> str:
    """'&ge; 0.9' from {min: x} / {max: y}; a stated shortfall's reason on hover."""
    if not isinstance(spec, dict):
        return ""
    parts = [f"&ge; {fmt_num(spec['min'])}"] if "min" in spec else []
    parts += [f"&le; {fmt_num(spec['max'])}"] if "max" in spec else []
    text = ", ".join(parts)
    if spec.get("accept") is not None and spec.get("why"):   # a missed goal with its measured reason
        text += f' <abbr title="{esc(spec["why"])}">(reason stated)</abbr>'
    return text


def machine_label(m) -> str:
    """'2 &times; NVIDIA H100 80GB HBM3' from a machine record (labkit's machine_info, or a plain string)."""
    if isinstance(m, str):
        return esc(m)
    m = m if isinstance(m, dict) else {}
    if not m.get("gpu"):
        return f"CPU only: {esc(m['cpu'])}" if m.get("cpu") else "CPU only (no GPU recorded)"
    gpu, count = m["gpu"], m.get("gpu_count")
    return f"{count} &times; {esc(gpu)}" if isinstance(count, int) and count > 1 else esc(gpu)


def machine_text(ref: dict) -> str:
    return machine_label(ref.get("machine"))


def reference_block(folder: str, ref: dict | None, meta_entry: dict, heading: str = "h2") -> str:
    """The reference GPU results of one topic, as an HTML fragment (empty when there are none)."""
    if not ref:
        return ""
    metrics = ref.get("metrics") or {}
    thresholds = (meta_entry or {}).get("thresholds") or {}
    rows = []
    for k, v in metrics.items():
        spec = thresholds.get(k)
        text, judged = threshold_text(spec), threshold_verdict(v, spec)
        verdict = {"meets": '<span class="lk-ok">meets</span>', "": "",
                   "stated": '<span class="lk-warn">misses</span>', "fails": '<span class="lk-bad">misses</span>'}[judged]
        if judged == "stated":   # the missed goal's measured reason, readable without hovering
            verdict += (f'<br><span class="lk-muted">stated shortfall (accepted to {fmt_num(spec["accept"])}):'
                        f' {esc(spec["why"])}</span>')
        elif judged == "fails" and "accept" in spec:
            verdict += f' <span class="lk-bad">(past the accepted {fmt_num(spec["accept"])}: fails make test)</span>'
        rows.append(f"<tr><td>{esc(k)}</td><td>{fmt_num(v)}</td><td>{text} {verdict}</td></tr>")
    m = ref.get("machine") or {}
    versions = m.get("versions") or {}
    vers = ", ".join(f"{esc(k)} {esc(v)}" for k, v in versions.items()) if isinstance(versions, dict) else esc(versions)
    return (
        f'<section class="lk-ref" id="ref-{esc(folder)}">'
        f"<{heading}>Reference results (full profile): {esc(folder)}</{heading}>"
        f"<p>Profile <b>{esc(ref.get('profile', '?'))}</b> on <b>{machine_text(ref)}</b>"
        f" (CPU: {esc(m.get('cpu', '?'))}), recorded {esc(ref.get('created', '?'))}."
        + (f'<br><span class="lk-muted">{vers}</span>' if vers else "")
        + "</p><table><tr><th>metric</th><th>value</th><th>threshold (ci/metadata.yml)</th></tr>"
        + "".join(rows) + "</table></section>")


# Math in markdown cells becomes MathML at build time (Chromium, Firefox and Safari render MathML
# natively), so no MathJax is fetched. Code (fenced blocks, inline code) is left alone, and so are
# dollar amounts ("$5 and $10": an opening $ must be followed, and a closing one preceded, by a
# non-space, and a closing $ is not followed by a digit, as in pandoc).
CODE_RE = re.compile(r"^(?P<fence>```|~~~)[^\n]*\n.*?^(?P=fence)[ \t]*$|(?P<ticks>`+).+?(?P=ticks)",
                     re.DOTALL | re.MULTILINE)
MATH_RE = re.compile(
    r"(?P<escaped>\\\$)"
    r"|\$\$(?P<display>.+?)\$\$"
    r"|\\\[(?P<display2>.+?)\\\]"
    r"|\\\((?P<inline2>.+?)\\\)"
    r"|(?<![\\$\w])\$(?P<inline>[^\s$](?:[^$\n]*?[^\s$\\])?)\$(?!\d)",
    re.DOTALL)


def _mathml_converter():
    try:
        from latex2mathml.converter import convert
        return convert
    except ImportError:
        return None


def math_placeholders(nb, token: str) -> dict:
    """Replace the TeX math of markdown cells by placeholders; returns {placeholder: MathML}.

    Placeholders (letters and digits) go through the markdown renderer untouched; the caller puts the
    MathML in their place in the rendered page. TeX that does not convert is left as it was."""
    convert = _mathml_converter()
    if convert is None:
        return {}
    table = {}

    def repl(m):
        if m.group("escaped"):
            return m.group(0)
        tex, block = next((m.group(g), g.startswith("display")) for g in ("display", "display2", "inline2", "inline")
                          if m.group(g) is not None)
        try:
            mathml = convert(tex.strip(), display="block" if block else "inline")
        except Exception:
            return m.group(0)
        key = f"LKMATH{token}X{len(table)}X"
        table[key] = mathml
        return key  # a display formula keeps display="block" wherever it sits (lists included)

    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        # Code first: a $ inside code is never math, wherever the math would start.
        codes = []

        def hide(m):
            codes.append(m.group(0))
            return f"LKCODE{token}X{len(codes) - 1}X"
        text = MATH_RE.sub(repl, CODE_RE.sub(hide, cell.source))
        cell.source = re.sub(f"LKCODE{token}X(\\d+)X", lambda m: codes[int(m.group(1))], text)
    return table


def make_exporter() -> HTMLExporter:
    exporter = HTMLExporter(template_name="lab", embed_images=True,
                            extra_loaders=[jinja2.DictLoader({TEMPLATE_NAME: PAGE_TEMPLATE})])
    exporter.template_file = TEMPLATE_NAME
    return exporter


def rewrite_links(page: str, folders: list) -> str:
    """Links between notebooks (../02_x/02_x.ipynb, 02_x.ipynb) point at the rendered pages."""
    names = "|".join(re.escape(f) for f in folders)
    if not names:
        return page
    pattern = re.compile(r'href="(?:\.\./|\./)?(?:(%s)/)?(%s)\.ipynb(#[^"]*)?"' % (names, names))
    return pattern.sub(lambda m: f'href="{m.group(2)}.html{m.group(3) or ""}"', page)


def error_count(nb) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code"
               and "raises-exception" not in c.metadata.get("tags", [])
               for o in c.get("outputs", []) if o.get("output_type") == "error")


def notebook_title(nb, default: str) -> str:
    return next((line[2:].strip() for c in nb.cells if c.cell_type == "markdown"
                 for line in c.source.splitlines() if line.startswith("# ")), default)


def render_notebook(exporter: HTMLExporter, path: Path, folder: str, folders: list,
                    footer: str, nav: str, img_dir: Path | None = None) -> tuple:
    """(html, notebook) of one notebook file; `nav` is the HTML of the bar above it."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata["title"] = notebook_title(nb, folder)
    # Images referenced by relative path in markdown live beside the committed notebook.
    resources = {"metadata": {"name": folder, "path": str(img_dir or path.parent)},
                 "lk_css": SITE_CSS, "lk_error_class": ERROR_CLASS,
                 "lk_expected_error_class": EXPECTED_ERROR_CLASS, "lk_footer": footer, "lk_nav": nav}
    rendered = copy.deepcopy(nb)
    mathml = math_placeholders(rendered, secrets.token_hex(4))
    body, _ = exporter.from_notebook_node(rendered, resources=resources)
    for key, value in mathml.items():
        # A display formula stands alone in its paragraph: the paragraph becomes the formula.
        body = body.replace(f"<p>{key}</p>", value).replace(key, value)
    return rewrite_links(body, folders), nb


# ---------------------------------------------------------------- what a card shows


def png_size(raw: bytes) -> tuple:
    """(width, height) from a PNG's IHDR chunk; (0, 0) when it is not a PNG."""
    if raw[:8] != b"\x89PNG\r\n\x1a\n" or len(raw) < 24:
        return 0, 0
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def card_figure(nb) -> bytes | None:
    """The PNG a topic's card shows: the image of a cell tagged `site-figure`, else the first figure at
    least 400 px wide that is not a thin strip (at most 4:1), else the first figure; None without any."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            b64 = (out.get("data") or {}).get("image/png")
            try:
                raw = base64.b64decode(b64 if isinstance(b64, str) else "".join(b64 or ""), validate=False)
            except ValueError:
                continue
            if not png_size(raw)[0]:
                continue
            if FIGURE_TAG in cell.metadata.get("tags", []):
                return raw
            found.append(raw)
    fits = [r for r in found if png_size(r)[0] >= 400 and png_size(r)[0] <= 4 * png_size(r)[1]]
    return (fits or found or [None])[0]


def card_image(raw: bytes) -> bytes:
    """The card's copy of a figure: scaled down to CARD_IMAGE_WIDTH (Pillow), else as it is."""
    if png_size(raw)[0] <= CARD_IMAGE_WIDTH:
        return raw
    try:
        from PIL import Image
        img = Image.open(io.BytesIO(raw))
        img = img.resize((CARD_IMAGE_WIDTH, max(1, round(img.height * CARD_IMAGE_WIDTH / img.width))), Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        return buf.getvalue()
    except Exception:  # Pillow missing or the image odd: the original is still a fine figure
        return raw


class _Tables(HTMLParser):
    """Every <table> of an HTML fragment as rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables and self.tables[-1]:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def recorded_metrics(nb) -> dict:
    """The metrics a notebook's run recorded, read off the table labkit.compare_table shows (a
    'this run' column, one metric per row; values rounded as shown); {} when it shows none."""
    metrics = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            html_text = (out.get("data") or {}).get("text/html")
            if not html_text or "this run" not in html_text:
                continue
            parser = _Tables()
            parser.feed(html_text if isinstance(html_text, str) else "".join(html_text))
            for rows in parser.tables:
                col = next((r.index("this run") for r in rows if "this run" in r), None)
                if col is None:
                    continue
                for row in rows:
                    if len(row) > col and row[0] and row[0] != "metric":
                        try:
                            metrics[row[0]] = float(row[col])
                        except ValueError:
                            pass
    return metrics


def fmt_when(created) -> str:
    """'2026-11-30 15:04 UTC' from an ISO time with a zone, '2026-11-30' from a date; '?' when absent."""
    if not created:
        return "?"
    try:
        t = _dt.datetime.fromisoformat(str(created))
    except ValueError:
        return esc(str(created)[:25])
    if t.tzinfo is not None:
        return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return t.strftime("%Y-%m-%d %H:%M") if "T" in str(created) or " " in str(created) else t.strftime("%Y-%m-%d")


def full_run_info(topic_dir: Path) -> dict | None:
    """The topic's published full-scale run (results/full.ipynb): its path and labels."""
    path = topic_dir / "results" / "full.ipynb"
    if not path.is_file():
        return None
    try:
        nb_meta = nbformat.read(path, as_version=4).metadata
    except Exception as err:
        return {"path": path, "error": f"{type(err).__name__}: {str(err)[:200]}"}
    meta, duration = nb_meta.get("labkit") or {}, (nb_meta.get("papermill") or {}).get("duration")
    return {"path": path, "page": f"{topic_dir.name}.full.html", "machine": machine_label(meta.get("machine")),
            "when": fmt_when(meta.get("created")), "profile": esc(meta.get("profile") or "?"),
            "run_id": esc(meta.get("run_id") or "?"),
            "minutes": duration / 60 if isinstance(duration, (int, float)) and duration > 0 else None}


def nav_bar(e: dict, current: str) -> str:
    """The bar above a topic page: back to the index, the two runs (the current one in bold)."""
    full = e.get("full")
    smoke = (f'{esc(e["profile"] or "smoke")} run &middot; <span class="lk-muted">{esc(e["source_label"])}</span>')
    runs = [f'<span class="lk-here">{smoke}</span>' if current == "smoke"
            else f'<a href="{esc(e["folder"])}.html">{smoke}</a>']
    if full and full.get("page"):
        label = f'full-scale run &middot; {full["machine"]} &middot; {full["when"]} &middot; profile {full["profile"]}'
        runs.append(f'<span class="lk-here">{label}</span>' if current == "full"
                    else f'<a href="{esc(full["page"])}">{label}</a>')
    note = ""
    if current == "full":
        note = (f'<span class="lk-run-note">Executed by papermill with profile {full["profile"]} on {full["machine"]}, '
                f'{full["when"]} (run {full["run_id"]}); outputs as that run left them, figures recompressed.</span>')
    return (f'<a href="index.html">&larr; All topics</a> &middot; <b>{esc(e["folder"])}</b> &middot; '
            + " | ".join(runs) + note)


def status_line(row: dict | None, profile: str | None) -> str:
    if row is None:
        return '<span class="lk-muted">not in the last run</span>'
    status = row.get("status", "?")
    text = f'<span class="{"lk-ok" if status == "ok" else "lk-bad"}">{esc(status)}</span>'
    if isinstance(row.get("wall_s"), (int, float)):
        text += f" &middot; {row['wall_s']:.0f} s"
    if profile:
        text += f' <span class="lk-muted">({esc(profile)})</span>'
    if row.get("error"):
        text += f"<br><small>{esc(str(row['error'])[:200])}</small>"
    return text


def headline_rows(e: dict) -> str:
    """The results a topic is judged by (its thresholds in ci/metadata.yml): this build's value and the
    full run's, with the verdict on the full one (thresholds are for the full profile)."""
    thresholds = e["meta"].get("thresholds") or {}
    if not thresholds:
        return '<p class="lk-muted">Judged by its checks; no metric thresholds.</p>'
    ref = (e["ref"] or {}).get("metrics") or {}
    this_label = esc(e["profile"] or "smoke")
    ref_label = "reference" if this_label == "full" else "full"  # after `make run PROFILE=full`
    rows = []
    for name in list(thresholds)[:HEADLINE_METRICS]:
        text = threshold_text(thresholds[name])
        this = e["metrics"].get(name)
        full = ref.get(name)
        verdict = {"meets": '<span class="lk-ok" title="meets the goal">&#10003;</span> ',
                   "stated": '<span class="lk-warn" title="goal missed, reason stated">&#10007;</span> ',
                   "fails": '<span class="lk-bad" title="misses the goal">&#10007;</span> ', "": ""}[
            threshold_verdict(full, thresholds[name])]
        rows.append(f"<li><code>{esc(name)}</code><span class=\"lk-v\">{this_label} "
                    f"<b>{fmt_num(this) if this is not None else '&mdash;'}</b></span>"
                    f"<span class=\"lk-v\">{ref_label} <b>{fmt_num(full) if full is not None else '&mdash;'}</b></span>"
                    f"<span class=\"lk-th\">{verdict}{text}</span></li>")
    more = len(thresholds) - HEADLINE_METRICS
    if more > 0:
        rows.append(f'<li class="lk-muted">and {more} more on the page</li>')
    return f'<ul class="lk-results">{"".join(rows)}</ul>'


def card(e: dict, profile: str | None) -> str:
    m, folder = e["meta"], esc(e["folder"])
    page = esc(e["page"]) if e["page"] else None
    # Without a rendered notebook, the topic's name: its metadata description up to the first colon.
    title = esc(e.get("title") or (m.get("topic") or "").split(": ")[0] or e["folder"])
    href = page or (esc(e["full"]["page"]) if e.get("full") and e["full"].get("page") else None)
    if e.get("figure"):
        w, h = e["figure_size"]
        img = f'<img src="{esc(e["figure"])}" alt="A figure from {title}" width="{w}" height="{h}">'
        figure = f'<a class="lk-figure" href="{href}">{img}</a>' if href else f'<div class="lk-figure">{img}</div>'
    else:
        figure = f'<div class="lk-figure lk-nofig" aria-hidden="true">{esc(e["folder"][:2])}</div>'
    heading = f'<a href="{href}">{title}</a>' if href else title
    state = ""
    if e.get("failed"):
        state = (f'<p><span class="lk-bad lk-not-built">could not be rendered</span>'
                 f'<br><small>{esc(e["failed"])}</small></p>')
    elif not page:
        state = '<p><span class="lk-muted lk-not-built">not built</span></p>'
    elif e["errors"]:
        state = f'<p><span class="lk-bad">{e["errors"]} error output(s)</span></p>'
    ref, full = e["ref"], e.get("full")
    full_on = (f'<p class="lk-fullon">Full results: {machine_text(ref)}, {fmt_when(ref.get("created"))}'
               f' (profile {esc(ref.get("profile", "?"))})</p>') if ref else ""
    links = []
    if page:
        links.append(f'<a class="lk-btn" href="{page}">{esc(e["profile"] or "smoke").capitalize()} run</a>')
    if full and full.get("page"):
        links.append(f'<a class="lk-btn lk-full" href="{esc(full["page"])}">Full run &middot; {full["machine"]}'
                     f' &middot; {full["when"][:10]}</a>')
    elif ref and page:
        links.append(f'<a class="lk-btn lk-full" href="{page}#ref-{folder}">Full results &middot; {machine_text(ref)}</a>')
    elif not ref:
        links.append('<span class="lk-btn lk-none">no full run yet</span>')
    full_took = (f' (the published run: {full["minutes"]:.1f} min, papermill)'
                 if full and full.get("page") and full.get("minutes") else "")
    covers = (f'<details class="lk-covers"><summary>What it covers</summary><p>{esc(m["topic"])}</p></details>'
              if m.get("topic") else "")
    return (f'<li class="lk-card" id="topic-{folder}">{figure}<div class="lk-body">'
            f'<p class="lk-folder">{folder}</p><h2>{heading}</h2>{state}'
            f'<p class="lk-learn">{esc(m.get("learn", ""))}</p>{covers}{headline_rows(e)}{full_on}'
            f'<p class="lk-times">CPU smoke {fmt_minutes(m.get("cpu_smoke_minutes"))} &middot; GPU full '
            f'{fmt_minutes(m.get("gpu_full_minutes"))}{full_took}'
            f'<br><span class="lk-muted">{esc(m.get("hardware", ""))}</span></p>'
            + (f'<p class="lk-status">Last run: {status_line(e["run"], profile)}</p>' if e["summary"] else "")
            + f'<div class="lk-links">{"".join(links)}</div></div></li>')


def index_page(entries: list, profile: str | None, source_label: str, summary_found: bool) -> str:
    built = sum(1 for e in entries if e["page"])
    fulls = sum(1 for e in entries if e.get("full") and e["full"].get("page"))
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    run_note = (f"Last run: profile <b>{esc(profile)}</b> (build/summary.json)." if summary_found
                else "No run recorded yet (build/summary.json is absent): run <code>make run</code>.")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{esc(SITE_TITLE)}</title>
<link rel="icon" href="data:,">
<style type="text/css">
{GALLERY_CSS}
{SITE_CSS}
</style>
</head>
<body>
<main class="lk-page">
<h1>{esc(SITE_TITLE)}</h1>
<p class="lk-intro">Each topic is one notebook: its smoke run takes minutes on a CPU, its full-scale run
needs a GPU. Every card links the smoke run ({built} of {len(entries)} rendered from {esc(source_label)})
and, for {fulls} {"topic" if fulls == 1 else "topics"} so far, the full-scale run as executed on the GPU machine. {run_note}
Built {esc(now)}. Times: CPU smoke on the 2-core CI machine, GPU full on the machine named in the full results.</p>
<ul class="lk-gallery" id="topics">
{"".join(card(e, profile) for e in entries)}
</ul>
</main>
</body>
</html>
"""


def build(src: Path, out: Path, summary_path: Path = BUILD / "summary.json", quiet: bool = False,
          notebooks: Path = NOTEBOOKS) -> list:
    """Render the site into `out`; returns one entry per topic (folder, page or None, errors...).
    `notebooks` is where each topic's folder (results/, images) lives: the repository's by default."""
    src, out, notebooks = Path(src), Path(out), Path(notebooks)
    meta = metadata()
    folders = discover(src, meta, notebooks)
    profile, runs = last_run(summary_path)
    source_label = ("the committed notebooks (smoke outputs)" if src.resolve() == notebooks.resolve()
                    else str(src.resolve().relative_to(ROOT)) if src.resolve().is_relative_to(ROOT)
                    else str(src))
    exporter = make_exporter()
    if _mathml_converter() is None and not quiet:
        print("[site] latex2mathml is not installed: math in markdown is shown as TeX", file=sys.stderr)
    entries = []
    for folder in folders:
        m = meta.get(folder) or {}
        topic_dir = notebooks / folder
        ref = read_json(topic_dir / "results" / "full.json")
        ref = ref if isinstance(ref, dict) else None
        run = runs.get(folder)
        entry = {"folder": folder, "meta": m, "ref": ref, "run": run, "page": None, "errors": 0, "failed": None,
                 "full": full_run_info(topic_dir), "profile": profile or "smoke", "source_label": source_label,
                 "metrics": dict((run or {}).get("metrics") or {}), "figure": None, "title": None,
                 "summary": bool(runs)}
        entries.append(entry)
        footer = reference_block(folder, ref, m)
        img_dir = topic_dir if topic_dir.is_dir() else None
        figure_nb = None
        path = find_notebook(src, folder)
        if path is not None:
            try:
                page, nb = render_notebook(exporter, path, folder, folders, footer, nav_bar(entry, "smoke"), img_dir)
            except Exception as err:  # one broken notebook must not take the whole site down
                entry["failed"] = f"{type(err).__name__}: {str(err)[:300]}"
                print(f"[site] {folder}: could not render {path}: {entry['failed']}", file=sys.stderr)
            else:
                atomic_write_text(out / f"{folder}.html", page)
                entry.update(page=f"{folder}.html", errors=error_count(nb), title=nb.metadata["title"])
                entry["metrics"] = entry["metrics"] or recorded_metrics(nb)
                figure_nb = nb
                if not quiet:
                    note = f" ({entry['errors']} error output(s)!)" if entry["errors"] else ""
                    print(f"[site] {folder}: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
                          f" -> {out / entry['page']}{note}")
        elif not quiet:
            print(f"[site] {folder}: not built (no notebook in {src})")
        full = entry["full"]
        if full and full.get("page"):
            try:
                page, nb = render_notebook(exporter, full["path"], folder, folders, footer, nav_bar(entry, "full"), img_dir)
            except Exception as err:
                full.update(page=None, error=f"{type(err).__name__}: {str(err)[:300]}")
            else:
                atomic_write_text(out / full["page"], page)
                full["errors"] = error_count(nb)
                entry["title"] = entry["title"] or nb.metadata["title"]
                if card_figure(nb) is not None:  # the full run's figure shows what the topic does at scale
                    figure_nb = nb
                if not quiet:
                    print(f"[site] {folder}: {full['path']} -> {out / full['page']}")
        if full and full.get("error"):
            entry["failed"] = entry["failed"] or f"results/full.ipynb: {full['error']}"
            print(f"[site] {folder}: could not render results/full.ipynb: {full['error']}", file=sys.stderr)
        raw = card_figure(figure_nb) if figure_nb is not None else None
        if raw:
            small = card_image(raw)
            atomic_write_bytes(out / "img" / f"{folder}.png", small)
            entry.update(figure=f"img/{folder}.png", figure_size=png_size(small))
    atomic_write_text(out / "index.html", index_page(entries, profile, source_label, bool(runs)))
    # Pages and figures of notebooks that are gone would linger and mislead: remove them.
    keep = ({e["page"] for e in entries if e["page"]} | {e["full"]["page"] for e in entries if e.get("full")
                                                          and e["full"].get("page")} | {"index.html"})
    figures = {Path(e["figure"]).name for e in entries if e["figure"]}
    for stale in [p for p in out.glob("*.html") if p.name not in keep] + \
                 [p for p in (out / "img").glob("*.png") if p.name not in figures]:
        stale.unlink()
    if not quiet:
        print(f"[site] {out / 'index.html'}: {sum(1 for e in entries if e['page'])} of {len(entries)} notebooks"
              f", {sum(1 for e in entries if e.get('full') and e['full'].get('page'))} full-scale runs")
    return entries


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", default="build/executed",
                    help="folder of notebooks: build/executed (after make run) or notebooks (committed)")
    ap.add_argument("--out", default="build/html", help="where the site goes (default build/html)")
    ap.add_argument("--summary", default=str(BUILD / "summary.json"), help="the last run's summary.json")
    args = ap.parse_args(argv)
    src = Path(args.src) if Path(args.src).is_absolute() else ROOT / args.src
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    if not src.is_dir():
        print(f"[site] {src} does not exist: every notebook is listed as not built", file=sys.stderr)
    entries = build(src, out, Path(args.summary))
    return 1 if any(e.get("failed") for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
