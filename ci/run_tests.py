"""Everything `make test` runs, each suite in its own process, then one closing count.

Suites: labkit's unit tests; each topic's unit tests (one pytest process per topic, so topic modules
never meet); the notebook checker; the workflow-file check; nbval over the committed notebooks
(each executed once, here); the rendered site and JupyterLab in a real browser (ci/tests).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks import BUILD, NOTEBOOKS, ROOT, all_folders, metadata, notebook_path, select  # noqa: E402

PY = sys.executable


def pytest_suite(name: str, args: list, env: dict | None = None) -> tuple:
    """Run pytest with a junit report; return (passed, failed, skipped)."""
    report = BUILD / "test-reports" / f"{name}.xml"
    report.parent.mkdir(parents=True, exist_ok=True)
    if report.exists():
        report.unlink()
    rc = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *args],
                        cwd=ROOT, env=dict(os.environ, **(env or {}))).returncode
    if not report.exists():
        return 0, 1, 0  # pytest could not even start: count it as a failure
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, fail = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    if rc not in (0, 5) and fail == 0:
        fail = 1  # e.g. a collection error that junit did not count
    return total - fail - skipped, fail, skipped


def script_suite(name: str, cmd: list) -> tuple:
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    return (1, 0, 0) if rc == 0 else (0, 1, 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nb", default=os.environ.get("NB", ""), help="limit topic tests and nbval to these notebooks")
    ap.add_argument("--skip", default=os.environ.get("SKIP_SUITES", ""),
                    help="comma-separated suites to skip: unit,topics,checker,workflows,nbval,browser")
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    folders = select(args.nb)
    plan = []
    if "unit" not in skip:
        plan.append(("labkit", lambda: pytest_suite("labkit", ["shared/tests"])))
    if "topics" not in skip:
        # command-line tools some topic tests run (e.g. dciodvfy for 05's DICOM): installed, not skipped
        plan.append(("Debian test tools", lambda: script_suite("tools", [PY, "ci/install_browser.py", "--tools"])))
        meta = metadata()
        for f in folders:
            if not (NOTEBOOKS / f / "tests").is_dir():
                continue
            # Keras topics run their tests once per backend they promise (ci/metadata.yml), so neither path rots
            for backend in meta.get(f, {}).get("keras_backends") or [None]:
                tag, env = (f"topic {f}", None) if backend is None else (f"topic {f} [{backend}]", {"KERAS_BACKEND": backend})
                plan.append((tag, lambda f=f, b=backend, env=env: pytest_suite(
                    f"topic-{f}" + (f"-{b}" if b else ""), [f"notebooks/{f}/tests"], env)))
    if "checker" not in skip:
        plan.append(("notebook checker", lambda: script_suite("checker", [PY, "ci/check_notebooks.py"])))
        # The committed reference runs (notebooks/*/results/full.json) against ci/metadata.yml's thresholds.
        plan.append(("reference runs vs thresholds", lambda: script_suite("thresholds", [PY, "ci/check_thresholds.py", "--committed"])))
    if "workflows" not in skip:
        plan.append(("workflows, README, runner", lambda: pytest_suite("repo", ["ci/check_workflows.py", "ci/check_runner.py", "ci/check_locks.py"])))
    if "nbval" not in skip:
        nbs = [str(notebook_path(f).relative_to(ROOT)) for f in folders]
        plan.append(("nbval", lambda: pytest_suite("nbval", [
            "--nbval-lax", "--nbval-sanitize-with", "ci/nbval_sanitize.cfg",
            "--nbval-cell-timeout", "1800", *nbs])))
    if "browser" not in skip and (ROOT / "ci" / "tests").is_dir():
        def browser():
            installed = script_suite("browser", [PY, "ci/install_browser.py"])
            if installed[1]:
                return installed
            built = script_suite("site", [PY, "ci/build_site.py", "--from", "notebooks", "--out", "build/site"])
            if built[1]:
                return built
            return pytest_suite("browser", ["ci/tests"])
        plan.append(("site and JupyterLab in a browser", browser))

    totals = [0, 0, 0]
    lines = []
    for name, run in plan:
        print(f"\n===== {name} =====", flush=True)
        t0 = time.perf_counter()
        p, f, s = run()
        totals = [totals[0] + p, totals[1] + f, totals[2] + s]
        lines.append(f"{name:40} {p:4} passed {f:3} failed {s:3} skipped  {time.perf_counter() - t0:6.0f} s")
    print("\n===== summary =====")
    print("\n".join(lines))
    print(f"{totals[0]} passed, {totals[1]} failed, {totals[2]} skipped")
    return 1 if totals[1] else 0


if __name__ == "__main__":
    sys.exit(main())
