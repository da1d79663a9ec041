"""Build the static site: every notebook rendered to HTML, plus an index with the topic table.

    python ci/build_site.py --from build/executed [--out build/html]
    python ci/build_site.py --from notebooks --out build/site     # the committed notebooks

A notebook is found as DIR/<folder>.ipynb or DIR/<folder>/<folder>.ipynb; a topic without one is
listed as "not built". The index reads ci/metadata.yml (what you learn, times, hardware), the last
run's build/summary.json (status, wall time) and each topic's results/full.json (the reference GPU
results). Pages are self-contained: figures are embedded, the stylesheet is inline, and no script
or font is loaded from anywhere (the site works from a folder with no network): TeX math in markdown
($...$, $$...$$, \\(...\\), \\[...\\]) becomes MathML at build time with latex2mathml (it stays TeX
when that package is missing), instead of MathJax from a CDN. Every file is written atomically
(temp file, then rename). Exit status 1 when a notebook exists but cannot be rendered.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import html
import json
import re
import secrets
import sys
from pathlib import Path

import jinja2
import nbformat
from nbconvert import HTMLExporter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks import BUILD, NOTEBOOKS, ROOT, metadata  # noqa: E402

try:
    from labkit.paths import atomic_write_text
except ImportError:  # labkit not installed: the same thing, locally
    import os

    def atomic_write_text(path: Path, text: str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

SITE_TITLE = "Tutorial notebooks"
TEMPLATE_NAME = "labkit_site.html.j2"
# Error outputs get a class of their own (nbconvert renders them like any stderr text), so the
# browser test can tell "this cell failed" from a warning; a cell tagged raises-exception shows
# an error on purpose and is marked as expected instead.
ERROR_CLASS = "lk-error-output"
EXPECTED_ERROR_CLASS = "lk-expected-error"

SITE_CSS = """
.lk-nav { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; font-size: 14px;
  padding: 8px 16px; border-bottom: 1px solid #ddd; background: #f7f7f7; }
.lk-nav a { text-decoration: none; color: #1a5fb4; }
.lk-ref { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px 16px;
  padding-top: 8px; border-top: 1px solid #ddd; }
.lk-ref table, table.lk-table { border-collapse: collapse; font-size: 14px; }
.lk-ref th, .lk-ref td, table.lk-table th, table.lk-table td { border: 1px solid #ccc;
  padding: 4px 8px; text-align: left; vertical-align: top; }
.lk-ref th, table.lk-table th { background: #f0f0f0; }
.lk-ok { color: #26734d; font-weight: 600; }
.lk-bad { color: #b00020; font-weight: 600; }
.lk-muted { color: #777; }
.lk-error-output { border-left: 4px solid #b00020; }
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
<nav class="lk-nav"><a href="index.html">&larr; All topics</a> &middot; {{ resources.lk_folder }}
{%- if resources.lk_source %} &middot; <span class="lk-muted">{{ resources.lk_source }}</span>{% endif %}</nav>
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


def discover(src: Path, meta: dict) -> list:
    """Topic folders: those in the metadata, in notebooks/, and in the source folder."""
    found = set(meta)
    found |= {p.parent.name for p in NOTEBOOKS.glob("*/*.ipynb") if p.stem == p.parent.name}
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


def threshold_text(spec) -> tuple:
    """('>= 0.9', check function) from {min: x} / {max: y}."""
    if not isinstance(spec, dict):
        return "", None
    parts, checks = [], []
    if "min" in spec:
        parts.append(f"&ge; {fmt_num(spec['min'])}")
        checks.append(lambda v, m=spec["min"]: v >= m)
    if "max" in spec:
        parts.append(f"&le; {fmt_num(spec['max'])}")
        checks.append(lambda v, m=spec["max"]: v <= m)
    return ", ".join(parts), (lambda v: all(c(v) for c in checks)) if checks else None


def machine_text(ref: dict) -> str:
    m = ref.get("machine") or {}
    gpu = m.get("gpu") or "CPU only (no GPU recorded)"
    count = m.get("gpu_count")
    gpu = f"{count} &times; {esc(gpu)}" if isinstance(count, int) and count > 1 else esc(gpu)
    return gpu


def reference_block(folder: str, ref: dict | None, meta_entry: dict, heading: str = "h2") -> str:
    """The reference GPU results of one topic, as an HTML fragment (empty when there are none)."""
    if not ref:
        return ""
    metrics = ref.get("metrics") or {}
    thresholds = (meta_entry or {}).get("thresholds") or {}
    rows = []
    for k, v in metrics.items():
        text, check = threshold_text(thresholds.get(k))
        verdict = ""
        if check is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
            verdict = '<span class="lk-ok">meets</span>' if check(v) else '<span class="lk-bad">misses</span>'
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


def render_notebook(exporter: HTMLExporter, path: Path, folder: str, folders: list,
                    footer: str, source_label: str) -> tuple:
    """(html, notebook) of one notebook file."""
    nb = nbformat.read(path, as_version=4)
    title = next((line[2:].strip() for c in nb.cells if c.cell_type == "markdown"
                  for line in c.source.splitlines() if line.startswith("# ")), folder)
    nb.metadata["title"] = title
    # Images referenced by relative path in markdown live beside the committed notebook.
    img_dir = NOTEBOOKS / folder if (NOTEBOOKS / folder).is_dir() else path.parent
    resources = {"metadata": {"name": folder, "path": str(img_dir)},
                 "lk_css": SITE_CSS, "lk_error_class": ERROR_CLASS,
                 "lk_expected_error_class": EXPECTED_ERROR_CLASS, "lk_folder": folder, "lk_footer": footer, "lk_source": source_label}
    rendered = copy.deepcopy(nb)
    mathml = math_placeholders(rendered, secrets.token_hex(4))
    body, _ = exporter.from_notebook_node(rendered, resources=resources)
    for key, value in mathml.items():
        # A display formula stands alone in its paragraph: the paragraph becomes the formula.
        body = body.replace(f"<p>{key}</p>", value).replace(key, value)
    return rewrite_links(body, folders), nb


def status_cell(row: dict | None, profile: str | None) -> str:
    if row is None:
        return '<span class="lk-muted">not in the last run</span>'
    status = row.get("status", "?")
    cls = "lk-ok" if status == "ok" else "lk-bad"
    wall = row.get("wall_s")
    text = f'<span class="{cls}">{esc(status)}</span>'
    if isinstance(wall, (int, float)):
        text += f" &middot; {wall:.0f} s"
    if profile:
        text += f' <span class="lk-muted">({esc(profile)})</span>'
    metrics = row.get("metrics") or {}
    if metrics:
        text += "<br><small>" + ", ".join(f"{esc(k)}={fmt_num(v)}" for k, v in list(metrics.items())[:3]) + "</small>"
    if row.get("error"):
        text += f"<br><small>{esc(str(row['error'])[:200])}</small>"
    return text


def index_page(entries: list, profile: str | None, source_label: str, summary_found: bool) -> str:
    rows = []
    for e in entries:
        m = e["meta"]
        topic = esc(m.get("topic") or e["folder"])
        if e["page"]:
            name = f'<a href="{esc(e["page"])}">{esc(e["folder"])}</a>'
            if e["errors"]:
                name += f'<br><span class="lk-bad">{e["errors"]} error output(s)</span>'
        elif e.get("failed"):
            name = (f'{esc(e["folder"])}<br><span class="lk-bad lk-not-built">could not be rendered</span>'
                    f'<br><small>{esc(e["failed"])}</small>')
        else:
            name = f'{esc(e["folder"])}<br><span class="lk-muted lk-not-built">not built</span>'
        ref = e["ref"]
        ref_cell = (f'<a href="#ref-{esc(e["folder"])}">{machine_text(ref)}</a>' if ref
                    else '<span class="lk-muted">none yet</span>')
        rows.append(
            f'<tr id="topic-{esc(e["folder"])}"><td>{name}</td><td>{topic}</td><td>{esc(m.get("learn", ""))}</td>'
            f'<td>{fmt_minutes(m.get("cpu_smoke_minutes"))}</td><td>{fmt_minutes(m.get("gpu_full_minutes"))}</td>'
            f'<td>{esc(m.get("hardware", ""))}</td><td>{status_cell(e["run"], profile)}</td><td>{ref_cell}</td></tr>')
    refs = "".join(reference_block(e["folder"], e["ref"], e["meta"], "h3") for e in entries if e["ref"])
    built = sum(1 for e in entries if e["page"])
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
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; }}
h1 {{ margin-top: 0; }}
{SITE_CSS}
</style>
</head>
<body>
<main>
<h1>{esc(SITE_TITLE)}</h1>
<p>{built} of {len(entries)} notebooks rendered from {esc(source_label)}, built {esc(now)}. {run_note}
Times: CPU smoke on the 2-core CI machine, GPU full on the GPU named in the reference results.</p>
<table class="lk-table" id="topics">
<tr><th>notebook</th><th>topic</th><th>what you learn</th><th>CPU smoke</th><th>GPU full</th>
<th>hardware</th><th>last run</th><th>reference results (full)</th></tr>
{''.join(rows)}
</table>
<h2>Reference results (full profile, on the GPU where the topic uses one)</h2>
{refs or '<p class="lk-muted">No topic has committed reference results (notebooks/&lt;folder&gt;/results/full.json) yet.</p>'}
</main>
</body>
</html>
"""


def build(src: Path, out: Path, summary_path: Path = BUILD / "summary.json", quiet: bool = False) -> list:
    """Render the site into `out`; returns one entry per topic (folder, page or None, errors...)."""
    src, out = Path(src), Path(out)
    meta = metadata()
    folders = discover(src, meta)
    profile, runs = last_run(summary_path)
    source_label = ("the committed notebooks (smoke outputs)" if src.resolve() == NOTEBOOKS.resolve()
                    else str(src.resolve().relative_to(ROOT)) if src.resolve().is_relative_to(ROOT)
                    else str(src))
    exporter = make_exporter()
    if _mathml_converter() is None and not quiet:
        print("[site] latex2mathml is not installed: math in markdown is shown as TeX", file=sys.stderr)
    entries = []
    for folder in folders:
        m = meta.get(folder) or {}
        ref = read_json(NOTEBOOKS / folder / "results" / "full.json")
        ref = ref if isinstance(ref, dict) else None
        entry = {"folder": folder, "meta": m, "ref": ref, "run": runs.get(folder), "page": None, "errors": 0,
                 "failed": None}
        path = find_notebook(src, folder)
        if path is not None:
            footer = reference_block(folder, ref, m)
            try:
                page, nb = render_notebook(exporter, path, folder, folders, footer, f"from {source_label}")
            except Exception as err:  # one broken notebook must not take the whole site down
                entry["failed"] = f"{type(err).__name__}: {str(err)[:300]}"
                print(f"[site] {folder}: could not render {path}: {entry['failed']}", file=sys.stderr)
                entries.append(entry)
                continue
            atomic_write_text(out / f"{folder}.html", page)
            entry["page"] = f"{folder}.html"
            entry["errors"] = error_count(nb)
            if not quiet:
                note = f" ({entry['errors']} error output(s)!)" if entry["errors"] else ""
                print(f"[site] {folder}: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
                      f" -> {out / entry['page']}{note}")
        elif not quiet:
            print(f"[site] {folder}: not built (no notebook in {src})")
        entries.append(entry)
    atomic_write_text(out / "index.html", index_page(entries, profile, source_label, bool(runs)))
    # Pages of notebooks that are gone would linger and mislead: remove them.
    keep = {e["page"] for e in entries if e["page"]} | {"index.html"}
    for stale in out.glob("*.html"):
        if stale.name not in keep:
            stale.unlink()
    if not quiet:
        print(f"[site] {out / 'index.html'}: {sum(1 for e in entries if e['page'])} of {len(entries)} notebooks")
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
