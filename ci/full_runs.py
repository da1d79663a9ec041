"""Publish an executed full-profile notebook as the topic's reference run, and check published ones.

    python ci/full_runs.py publish build/executed/04_neural_fields.ipynb 04_neural_fields \\
        [--results build/results/04_neural_fields.full.json]
    python ci/full_runs.py check [04_neural_fields ...]          # what ci/check_notebooks.py runs

`publish` turns a notebook papermill executed with profile=full (and $LABKIT_RUN_ID set, the run's
id also written into the notebook as metadata.labkit.run_id, with machine, created and profile) into
notebooks/<folder>/results/full.ipynb:
- it refuses a failed run (an error output or papermill's error banner) and one that is not profile full;
- papermill's injected-parameters cell stays (it documents how the run was made);
- absolute paths (the run's repository, home folders, /tmp) and anything that looks like a token or
  key are replaced in sources, outputs and metadata;
- PNG figures are recompressed, losslessly first, then (only while the file is still over the limit,
  5 MB) quantized to 256 colours and scaled down, keeping their displayed size;
- with --results, that run's results file becomes results/full.json; without it, the committed
  full.json must already carry the same run id. Both files are written atomically.
"""
from __future__ import annotations

import argparse
import base64
import copy
import io
import json
import re
import sys
from pathlib import Path

import nbformat
from labkit.paths import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks import NOTEBOOKS, ROOT  # noqa: E402

MAX_BYTES = 5_000_000  # under 5 MB whichever way a megabyte is counted
PAPERMILL_ERROR_TAG = "papermill-error-cell-tag"  # papermill/execute.py ERROR_MARKER_TAG
BINARY_MIMES = re.compile(r"^image/(png|jpeg|gif|webp)$")

# Secrets first (a token inside a path is still a token), then paths. Each replacement is a
# placeholder in <angle brackets>, which none of the patterns matches again.
SECRETS = [
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}"), "<hf-token>"),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})"), "<github-token>"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"), "<api-key>"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "<aws-key>"),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{16,}"), r"\1<token>"),
    # token=..., "api_key": "...", password: ... with a value long enough to be a secret
    (re.compile(r"""(?i)\b((?:api[_-]?key|access[_-]?key|secret(?:[_-]?key)?|password|passwd|token|auth)"""
                r"""["']?\s*[:=]\s*["']?)[A-Za-z0-9_\-./+]{16,}"""), r"\1<redacted>"),
]
HOME = re.compile(r"(?<![\w.~-])(?:/home/[^/\s'\"<>]+|/Users/[^/\s'\"<>]+|/root)(?=[/\s'\":,;)\]}]|$)")
TEMP = re.compile(r"(?<![\w.~-])(?:/private)?(?:/tmp|/var/tmp|/var/folders/[^\s'\"<>]+?/T)/[^/\s'\"<>:,;)\]}]+")


class PublishError(Exception):
    """The executed notebook cannot become a reference run; the message says why."""


def sanitize_text(text: str, roots: tuple = ()) -> str:
    for pattern, repl in SECRETS:
        text = pattern.sub(repl, text)
    for root in sorted({str(r).rstrip("/") for r in roots if str(r).rstrip("/")}, key=len, reverse=True):
        text = re.sub(re.escape(root) + r"(?=[/\s'\":,;)\]}]|$)", "<repo>", text)
    return TEMP.sub("<tmp>", HOME.sub("~", text))


def _walk(value, fix):
    """`value` with every string passed through `fix` (dicts, lists and NotebookNodes alike)."""
    if isinstance(value, str):
        return fix(value)
    if isinstance(value, dict):
        return type(value)({k: (v if BINARY_MIMES.match(str(k)) else _walk(v, fix)) for k, v in value.items()})
    if isinstance(value, list):
        return [_walk(v, fix) for v in value]
    return value


def run_roots(nb) -> tuple:
    """Repository folders of the machine the run was made on: papermill records the input path
    (metadata.papermill.input_path, papermill/execute.py prepare_notebook_metadata), which
    ci/run_notebooks.py gives as <repo>/notebooks/<folder>/<folder>.ipynb; plus this checkout."""
    roots = [ROOT]
    src = str((nb.metadata.get("papermill") or {}).get("input_path") or "")
    parts = Path(src).parts
    if src.startswith("/") and len(parts) >= 4 and parts[-3] == "notebooks":
        roots.append(Path(*parts[:-3]))
    return tuple(roots)


def sanitize(nb, roots: tuple = ()):
    """A copy of `nb` with paths and secrets replaced in every cell source, output and metadata."""
    fix = lambda s: sanitize_text(s, roots)  # noqa: E731
    out = copy.deepcopy(nb)
    out.metadata = _walk(out.metadata, fix)
    for cell in out.cells:
        cell.source = fix(cell.source)
        cell.metadata = _walk(cell.metadata, fix)
        if cell.cell_type == "code":
            cell.outputs = _walk(cell.outputs, fix)
    return out


# ---------------------------------------------------------------- figures

def png_outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if isinstance(o.get("data"), dict) and "image/png" in o["data"]]


def recompress_png(b64: str, level: int) -> tuple:
    """(new base64, (width, height) before) of one PNG at a compression level:
    0 lossless re-encode, 1 quantized to 256 colours, 2+ also scaled down by 0.75 per level."""
    from PIL import Image

    raw = base64.b64decode(b64)
    img = Image.open(io.BytesIO(raw))
    size = img.size
    if level >= 1:
        img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
        scale = 0.75 ** (level - 1)
        if scale < 1:
            img = img.resize((max(1, round(size[0] * scale)), max(1, round(size[1] * scale))), Image.LANCZOS)
        img = img.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    new = buf.getvalue()
    return (base64.b64encode(new).decode() if len(new) < len(raw) else b64), size


def nb_bytes(nb) -> int:
    return len(nbformat.writes(nb).encode("utf-8"))


def shrink_figures(nb, max_bytes: int = MAX_BYTES, max_level: int = 5) -> int:
    """Recompress the PNGs of `nb` in place until the file is under max_bytes; returns the level used."""
    originals = [(o, o["data"]["image/png"]) for o in png_outputs(nb)]
    for level in range(max_level + 1):
        for out, b64 in originals:
            new, (w, h) = recompress_png(b64, level)
            out["data"]["image/png"] = new
            if level >= 2:  # scaled down: keep the size it is shown at
                meta = out.setdefault("metadata", {}).setdefault("image/png", {})
                meta.setdefault("width", w)
                meta.setdefault("height", h)
        if nb_bytes(nb) < max_bytes:
            return level
    raise PublishError(f"still {nb_bytes(nb) / 1e6:.1f} MB after recompressing {len(originals)} figures "
                       f"(limit {max_bytes / 1e6:.1f} MB): too much non-image output; trim the notebook's output")


# ---------------------------------------------------------------- checks

def labkit_meta(nb) -> dict:
    meta = nb.metadata.get("labkit")
    return meta if isinstance(meta, dict) else {}


def run_errors(nb) -> list:
    """Error outputs (other than cells tagged raises-exception) and papermill's error banner."""
    out = []
    for i, cell in enumerate(nb.cells):
        tags = cell.get("metadata", {}).get("tags", [])
        if PAPERMILL_ERROR_TAG in tags:
            out.append(f"cell {i} is papermill's 'encountered an exception' banner")
        if cell.cell_type == "code" and "raises-exception" not in tags:
            out += [f"cell {i} has an error output ({o.get('ename')}: {str(o.get('evalue'))[:120]})"
                    for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    return out


def profile_problems(nb) -> list:
    out = []
    profile = labkit_meta(nb).get("profile")
    if profile != "full":
        out.append(f"metadata.labkit.profile is {profile!r}, not 'full'")
    missing = [k for k in ("machine", "created") if not labkit_meta(nb).get(k)]
    if missing:
        out.append(f"metadata.labkit lacks {' and '.join(missing)} (the site labels the run with them)")
    params = (nb.metadata.get("papermill") or {}).get("parameters") or {}
    if "profile" in params and params["profile"] != "full":
        out.append(f"papermill ran it with profile={params['profile']!r}, not 'full'")
    return out


def unsanitized(nb) -> str | None:
    """The first path or secret that sanitize() would still replace in `nb`, or None."""
    for text in _strings(nb):
        for pattern in [p for p, _ in SECRETS] + [HOME, TEMP]:
            m = pattern.search(text)
            if m:
                return m.group(0)[:80]
    return None


def _strings(nb) -> list:
    """Every string sanitize() looks at: metadata, sources, outputs (not image payloads)."""
    found = []
    _walk(nb.metadata, found.append)
    for cell in nb.cells:
        found.append(cell.source)
        _walk(cell.get("metadata", {}), found.append)
        _walk(cell.get("outputs", []), found.append)
    return found


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def full_run_problems(topic_dir: Path, max_bytes: int = MAX_BYTES) -> list:
    """What is wrong with a topic's committed reference run (results/full.ipynb + full.json);
    empty when it has none (full.ipynb absent) or when it is fine."""
    nb_path, json_path = topic_dir / "results" / "full.ipynb", topic_dir / "results" / "full.json"
    if not nb_path.exists():
        return []
    size = nb_path.stat().st_size
    problems = [f"results/full.ipynb is {size / 1e6:.1f} MB (limit {max_bytes / 1e6:.1f} MB): publish it with "
                "ci/full_runs.py publish, which recompresses its figures"] if size >= max_bytes else []
    try:
        nb = nbformat.read(nb_path, as_version=4)
    except Exception as err:
        return problems + [f"results/full.ipynb cannot be read as a notebook ({type(err).__name__}: {err})"]
    problems += [f"results/full.ipynb: {p}" for p in profile_problems(nb) + run_errors(nb)]
    run_id = labkit_meta(nb).get("run_id")
    ref = read_json(json_path)
    if not run_id:
        problems.append("results/full.ipynb has no metadata.labkit.run_id (run with $LABKIT_RUN_ID and publish it)")
    if not isinstance(ref, dict):
        problems.append("results/full.ipynb has no readable results/full.json beside it")
    elif ref.get("run_id") != run_id:
        problems.append(f"results/full.json's run_id {ref.get('run_id')!r} is not the notebook's {run_id!r}: "
                        "the two files come from different runs")
    elif ref.get("profile") != "full":
        problems.append(f"results/full.json's profile is {ref.get('profile')!r}, not 'full'")
    leak = unsanitized(nb)
    if leak:
        problems.append(f"results/full.ipynb shows a path or secret ({leak!r}): publish it with ci/full_runs.py publish")
    return problems


# ---------------------------------------------------------------- publish

def publish(executed: Path, folder: str, results: Path | None = None, notebooks: Path = NOTEBOOKS,
            max_bytes: int = MAX_BYTES, allow_no_figures: bool = False) -> Path:
    """Write notebooks/<folder>/results/full.ipynb (and full.json from `results`); returns the notebook path.
    A run with no figures where the committed smoke run has some is refused unless `allow_no_figures`."""
    topic = notebooks / folder
    if not (topic / f"{folder}.ipynb").exists():
        raise PublishError(f"{topic / (folder + '.ipynb')} does not exist: {folder!r} is not a topic folder")
    try:
        nb = nbformat.read(executed, as_version=4)
    except FileNotFoundError:
        raise PublishError(f"{executed} does not exist")
    except Exception as err:
        raise PublishError(f"{executed} is not a readable notebook ({type(err).__name__}: {err})")
    problems = profile_problems(nb) + run_errors(nb)
    smoke_figures = len(png_outputs(nbformat.read(topic / f"{folder}.ipynb", as_version=4)))
    if smoke_figures and not png_outputs(nb) and not allow_no_figures:
        # what happened on the GPU image with MPLBACKEND=Agg: every plot silently missing
        problems.append(f"no figures, where the committed smoke run shows {smoke_figures} (a non-inline "
                        "MPLBACKEND in the run's environment?); --allow-no-figures if that is intended")
    run_id = labkit_meta(nb).get("run_id")
    if not run_id:
        problems.append("no metadata.labkit.run_id: run with $LABKIT_RUN_ID set and write it into the notebook")
    if results is not None:
        ref = read_json(results)
        if not isinstance(ref, dict):
            problems.append(f"{results} is missing or not JSON")
        elif ref.get("run_id") != run_id:
            problems.append(f"{results} has run_id {ref.get('run_id')!r}, the notebook {run_id!r}")
        elif ref.get("profile") != "full" or ref.get("notebook") not in (None, folder):
            problems.append(f"{results} is profile {ref.get('profile')!r} of {ref.get('notebook')!r}, not full of {folder}")
    else:
        ref = read_json(topic / "results" / "full.json")
        if not isinstance(ref, dict) or ref.get("run_id") != run_id:
            problems.append(f"results/full.json is not from run {run_id!r}: pass --results with that run's results file")
    if problems:
        raise PublishError(f"{executed} cannot be published:\n  " + "\n  ".join(problems))
    nb = sanitize(nb, run_roots(nb))
    shrink_figures(nb, max_bytes)
    target = topic / "results" / "full.ipynb"
    atomic_write_text(target, nbformat.writes(nb))
    if results is not None:
        atomic_write_text(topic / "results" / "full.json", Path(results).read_text())
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("publish", help="make an executed full notebook the topic's results/full.ipynb")
    p.add_argument("executed", type=Path)
    p.add_argument("folder")
    p.add_argument("--results", type=Path, help="the same run's results file, copied to results/full.json")
    p.add_argument("--max-mb", type=float, default=MAX_BYTES / 1e6)
    p.add_argument("--allow-no-figures", action="store_true", help="publish although the smoke run has figures")
    c = sub.add_parser("check", help="check committed reference runs (all topics unless named)")
    c.add_argument("folders", nargs="*")
    args = ap.parse_args(argv)
    if args.cmd == "publish":
        try:
            target = publish(args.executed, args.folder, args.results, max_bytes=int(args.max_mb * 1e6),
                             allow_no_figures=args.allow_no_figures)
        except PublishError as err:
            print(f"[full_runs] {err}", file=sys.stderr)
            return 1
        print(f"[full_runs] wrote {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target} "
              f"({target.stat().st_size / 1e6:.2f} MB)")
        return 0
    folders = args.folders or sorted(p.parent.parent.name for p in NOTEBOOKS.glob("*/results/full.ipynb"))
    bad = 0
    for folder in folders:
        problems = full_run_problems(NOTEBOOKS / folder)
        for line in problems:
            print(f"{folder}: {line}")
        bad += bool(problems)
    print(f"full_runs: {len(folders) - bad} of {len(folders)} reference runs fine")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
