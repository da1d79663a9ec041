"""The notebook checker: every committed notebook keeps the house rules.

Fails (exit 1, one line per problem) when a notebook
- lacks the opening: a '# Title' first cell naming What you will learn, Prerequisites, Time to run
  (CPU and GPU) and Hardware;
- lacks a code cell tagged `parameters` that sets profile, device and seed (smoke/auto defaults);
- has an unexplained skip (`NBVAL_SKIP`, `raises-exception` or `pytest.skip` without a reason);
- is committed without outputs (a code cell never executed), or with an error output, or with
  papermill's injected-parameters cell;
- lacks an Exercises section or its solutions (solutions.py, run by tests/test_solutions.py),
  or is not listed in ci/metadata.yml;
- has a reference full run (results/full.ipynb) that is not one run with results/full.json (same
  run_id), not profile full, failed, is 5 MB or more, or shows a path or token (ci/full_runs.py).
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_runs import full_run_problems  # noqa: E402
from notebooks import all_folders, metadata, notebook_path  # noqa: E402

OPENING = ("what you will learn", "prerequisites", "time to run", "hardware")
SKIP_MARK = re.compile(r"#\s*NBVAL_SKIP(.*)")


def parameters_cell_problems(cell) -> list:
    try:
        tree = ast.parse(cell.source)
    except SyntaxError as exc:
        return [f"parameters cell does not parse: {exc}"]
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                values[node.targets[0].id] = None
    out = [f"parameters cell does not set {name}" for name in ("profile", "device", "seed") if name not in values]
    if values.get("profile", "smoke") != "smoke":
        out.append("parameters cell default profile must be 'smoke' (CI and learners run the default)")
    if values.get("device", "auto") != "auto":
        out.append("parameters cell default device must be 'auto'")
    return out


def check(path: Path, meta: dict) -> list:
    problems = []
    if not path.exists():
        return [f"{path} is missing"]
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    if not cells or cells[0].cell_type != "markdown" or not cells[0].source.lstrip().startswith("# "):
        problems.append("first cell must be markdown starting with a '# Title'")
    else:
        opening = cells[0].source.lower()
        problems += [f"opening cell lacks '{w}'" for w in OPENING if w not in opening]
        if "time to run" in opening and not ("cpu" in opening and "gpu" in opening):
            problems.append("opening cell must state the time to run on CPU and on GPU")
    params = [c for c in cells if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(params) != 1:
        problems.append(f"needs exactly one code cell tagged 'parameters' (found {len(params)})")
    else:
        problems += parameters_cell_problems(params[0])
    if any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in cells):
        problems.append("has papermill's injected-parameters cell: refresh with ci/run_notebooks.py --update-committed")
    code = [c for c in cells if c.cell_type == "code"]
    for i, cell in enumerate(code, 1):
        for line in cell.source.splitlines():
            m = SKIP_MARK.search(line)
            if m and len(m.group(1).strip(" :-")) < 8:
                problems.append(f"code cell {i}: NBVAL_SKIP without a reason (write '# NBVAL_SKIP: why')")
            if "pytest.skip(" in line and not re.search(r"pytest\.skip\(\s*['\"]", line):
                problems.append(f"code cell {i}: pytest.skip without a reason")
        tags = cell.get("metadata", {}).get("tags", [])
        if "raises-exception" in tags and "# expected error:" not in cell.source.lower():
            problems.append(f"code cell {i}: tagged raises-exception without a '# expected error: why' line")
        if cell.source.strip() and cell.get("execution_count") is None:
            problems.append(f"code cell {i} was never executed: commit the notebook with a smoke run's outputs")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and "raises-exception" not in tags:
                problems.append(f"code cell {i} is committed with an error output ({out.get('ename')})")
    if not any(c.cell_type == "markdown" and re.search(r"^#+\s*Exercises", c.source, re.M | re.I) for c in cells):
        problems.append("no '## Exercises' section")
    for needed in ("solutions.py", "tests/test_solutions.py"):
        if not (path.parent / needed).exists():
            problems.append(f"no {needed}: exercise solutions live apart and are run by the tests")
    if path.parent.name not in meta:
        problems.append("not listed in ci/metadata.yml")
    return problems + full_run_problems(path.parent)


def main() -> int:
    meta = metadata()
    failed = 0
    folders = all_folders()
    for folder in folders:
        problems = check(notebook_path(folder), meta)
        for p in problems:
            print(f"{folder}: {p}")
        failed += bool(problems)
    missing = [f for f in meta if f not in folders]
    for f in missing:
        print(f"{f}: listed in ci/metadata.yml but notebooks/{f}/{f}.ipynb does not exist")
    print(f"check_notebooks: {len(folders) - failed} passed, {failed + len(missing)} failed")
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
