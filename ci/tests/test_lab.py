"""JupyterLab for real: start it on loopback with a token, open 00_environment_check in headless
Chromium, run all cells through the UI (Run > Run All Cells) and read the outputs off the page.
Plus, without a browser: every notebook's kernel starts in the project's environment."""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from labkit.procs import ManagedProcess, free_port, http_ready

from site_check import ROOT, SCREENSHOTS, committed_notebooks

VENV = ROOT / ".venv"
FIRST = "00_environment_check"
RUN_TIMEOUT_MS = 420_000  # Run All of notebook 00 takes ~30 s alone; the CI machine is shared
# How IPython shows a failed cell: a traceback, or the 'Cell In[3], line 1' header of a syntax error.
IPYTHON_ERROR_RE = r"Traceback \(most recent call last\)|^\s*Cell In\[\d+\], line \d+"


def lab_env(tmp: Path) -> dict:
    """The server's environment: its own config/data/settings folders (nothing of the user's leaks in),
    results written to a temp build folder (not the repo's), and the kernel's inline plots back on."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    settings = tmp / "lab-settings"
    for plugin, values in {
        # Render every cell (no virtual scrolling), so every output is in the page to be read.
        "notebook-extension/tracker": {"windowingMode": "none"},
        # No news or update checks: nothing may reach outside the machine.
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env.update(JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "lab-workspaces"),
               JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"), JUPYTER_RUNTIME_DIR=str(tmp / "jupyter-runtime"),
               LABKIT_BUILD_DIR=str(tmp / "build"), LABKIT_NO_PROGRESS="1")
    env.setdefault("LABKIT_DATA_ROOT", str(ROOT / "data"))
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def fresh_copy(tmp: Path) -> Path:
    """A copy of notebooks/00_environment_check with every output cleared: what the page shows after
    Run All can only come from running it now."""
    work = tmp / FIRST
    shutil.copytree(ROOT / "notebooks" / FIRST, work,
                    ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", ".pytest_cache"))
    path = work / f"{FIRST}.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, path)
    return work


def expected_lines(nb) -> dict:
    """{cell index: lines} that must show after Run All: the committed stdout of the cells CI checks
    with nbval (# NBVAL_CHECK_OUTPUT), i.e. the stable ones, such as the final summary."""
    want = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in cell.source:
            lines = [ln.strip() for out in cell.get("outputs", []) if out.get("output_type") == "stream"
                     and out.get("name") == "stdout" for ln in out.get("text", "").splitlines() if ln.strip()]
            if lines:
                want[i] = lines
    return want


def _sanitizers() -> list:
    """The regexes nbval applies before comparing outputs (ci/nbval_sanitize.cfg)."""
    import configparser
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "ci" / "nbval_sanitize.cfg")
    return [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()
            if "regex" in cfg[s] and "replace" in cfg[s]]


SANITIZERS = _sanitizers()


def norm(text: str) -> str:
    """Whitespace collapsed and timings, paths, dates... replaced, as nbval compares outputs."""
    for regex, replace in SANITIZERS:
        text = regex.sub(replace, text)
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(base URL, token, notebook folder) of a JupyterLab started as a learner would, on loopback."""
    if not (ROOT / "notebooks" / FIRST / f"{FIRST}.ipynb").exists():
        pytest.skip(f"notebooks/{FIRST} is not there yet")
    tmp = tmp_path_factory.mktemp("lab")
    work = fresh_copy(tmp)
    port, token = free_port(), secrets.token_hex(24)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={work}"]
    server = ManagedProcess(cmd, ready=http_ready(f"http://127.0.0.1:{port}/api/status?token={token}"),
                            name="jupyterlab", env=lab_env(tmp), cwd=str(work), start_timeout=180,
                            log_path=tmp / "jupyterlab.log")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}/", token, work, server
    finally:
        server.stop()


def test_lab_refuses_requests_without_the_token(lab):
    import urllib.error
    import urllib.request

    base, token, _, _ = lab
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "api/contents", timeout=30)
    assert err.value.code == 403
    with urllib.request.urlopen(f"{base}api/contents?token={token}", timeout=30) as r:
        names = {item["name"] for item in json.load(r)["content"]}
    assert f"{FIRST}.ipynb" in names


PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden) "

READY_JS = """n => {
  const cells = document.querySelectorAll('%(panel)s.jp-Notebook .jp-Cell');
  const bar = Array.from(document.querySelectorAll('.jp-StatusBar-TextItem, .jp-StatusBar-Item'))
                   .map(e => e.textContent).join(' ');
  return cells.length === n && /\\|\\s*Idle/.test(bar) && !/No Kernel/.test(bar);
}""" % {"panel": PANEL}

FINISHED_JS = """re => {
  const prompts = Array.from(document.querySelectorAll('%(panel)s.jp-CodeCell .jp-InputPrompt'));
  const ind = document.querySelector('%(panel)s.jp-Notebook-ExecutionIndicator')
              || document.querySelector('.jp-Notebook-ExecutionIndicator');
  if (!ind || ind.getAttribute('data-status') !== 'idle' || prompts.length === 0) return false;
  if (prompts.some(p => p.textContent.includes('[*]'))) return false;
  const failed = Array.from(document.querySelectorAll('%(panel)s.jp-OutputArea-output'))
                      .some(o => new RegExp(re, 'm').test(o.textContent));
  return failed || prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
}""" % {"panel": PANEL}


def run_all_in_ui(browser, base: str, token: str, name: str, n_cells: int, screenshot: Path | None = None) -> dict:
    """Open notebook `name` in JupyterLab, Run > Run All Cells, wait until it finished or a cell failed.

    Returns what the page shows: each cell's output text, the code cells' prompts, the page's
    uncaught script errors, the requests it made outside the server, and the failed cells."""
    page = browser.new_page()
    seen = {"page_errors": [], "outside": []}
    # Uncaught script errors of the page; Chromium's benign ResizeObserver notice is not one.
    page.on("pageerror", lambda e: seen["page_errors"].append(str(e)) if "ResizeObserver loop" not in str(e) else None)
    # JupyterLab must not reach beyond the machine (news, update checks, CDNs).
    page.on("request", lambda r: seen["outside"].append(r.url)
            if not (r.url.startswith(base) or r.url.startswith(("data:", "blob:"))) else None)
    try:
        page.goto(f"{base}lab/tree/{name}?reset&token={token}", wait_until="domcontentloaded")
        # Ready when every cell is in the page and the notebook's kernel (Python 3 (labkit), from its
        # metadata) is connected and idle, as the status bar says.
        page.wait_for_function(READY_JS, arg=n_cells, timeout=180_000, polling=500)
        prompts = page.locator(PANEL + ".jp-CodeCell .jp-InputPrompt")
        before = prompts.all_inner_texts()
        assert all(not re.search(r"\d", t) for t in before), f"cells look executed before Run All: {before}"
        # Run > Run All Cells, through the menu bar, as a learner would.
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        # Finished: kernel idle, no cell pending ([*]), and every cell numbered or one failed (Run All
        # stops at a failed cell: that is seen now, not at the timeout).
        page.wait_for_function(FINISHED_JS, arg=IPYTHON_ERROR_RE, timeout=RUN_TIMEOUT_MS, polling=1000)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        raw = page.locator(PANEL + ".jp-Notebook .jp-Cell").evaluate_all(
            "els => els.map(c => { const o = c.querySelector('.jp-OutputArea'); return o ? o.innerText : ''; })")
        seen.update(raw=raw, prompts=prompts.all_inner_texts(),
                    failed=[(i, t[-2000:]) for i, t in enumerate(raw) if re.search(IPYTHON_ERROR_RE, t, re.M)])
        return seen
    finally:
        page.close()


def test_run_all_cells_through_the_jupyterlab_ui(lab, browser):
    base, token, work, server = lab
    committed = nbformat.read(ROOT / "notebooks" / FIRST / f"{FIRST}.ipynb", as_version=4)
    shown = run_all_in_ui(browser, base, token, f"{FIRST}.ipynb", len(committed.cells),
                          screenshot=SCREENSHOTS / "jupyterlab_run_all.png")
    # No cell failed, every cell ran.
    assert not shown["failed"], "cell {} failed in JupyterLab:\n{}".format(*shown["failed"][0])
    assert all(re.search(r"\[\d+\]", t) for t in shown["prompts"]), f"cells left unexecuted: {shown['prompts']}"
    outputs = [norm(t) for t in shown["raw"]]
    everything = "\n".join(outputs)
    # The environment report names this interpreter's Python.
    py = f"python {sys.version_info.major}.{sys.version_info.minor}"
    assert py in everything.lower(), f"{py!r} is not shown in the outputs"
    # The stable outputs (those nbval checks, e.g. the final summary) are what the committed notebook shows.
    want = expected_lines(committed)
    assert want, "the notebook has no # NBVAL_CHECK_OUTPUT cell with printed output to compare"
    for i, lines in want.items():
        for line in lines:
            assert norm(line) in outputs[i], f"cell {i}: {line!r} not shown; it shows: {outputs[i][:1500]!r}"
    assert not shown["page_errors"], shown["page_errors"]
    assert not shown["outside"], f"JupyterLab requested URLs outside the server: {shown['outside'][:10]}"
    # The run wrote its results into the temp build folder, not into the repository's.
    assert (work.parent / "build" / "results" / f"{FIRST}.smoke.json").is_file()
    assert server.alive(), "JupyterLab died during the run:\n" + server.log_tail()


def test_the_ui_check_sees_a_failing_cell(lab, browser):
    # The negative control: a notebook whose second cell raises. Run All stops there; the check says so.
    base, token, work, _ = lab
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("print('first cell ran')"),
               nbformat.v4.new_code_cell("1 / 0"),
               nbformat.v4.new_code_cell("print('never printed')")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3 (labkit)", "language": "python"}})
    nbformat.write(nb, work / "98_fails.ipynb")
    shown = run_all_in_ui(browser, base, token, "98_fails.ipynb", 3)
    assert [i for i, _ in shown["failed"]] == [1] and "ZeroDivisionError" in shown["failed"][0][1]
    assert "first cell ran" in shown["raw"][0] and "never printed" not in "".join(shown["raw"])
    assert not re.search(r"\[\d+\]", shown["prompts"][2]), shown["prompts"]


# ---------------------------------------------------------------- kernels, without a browser

KERNEL_PROBE = """
import json, sys
import labkit
print("PROBE" + json.dumps({"prefix": sys.prefix, "executable": sys.executable, "labkit": labkit.__file__}))
"""


@pytest.mark.parametrize("nb_path", committed_notebooks(), ids=lambda p: p.parent.name)
def test_notebook_kernel_starts_in_the_project_env(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    name = nb.metadata.get("kernelspec", {}).get("name", "python3")
    spec = KernelSpecManager().get_kernel_spec(name)
    # The kernelspec is the one ci/bootstrap.py installed into the venv (--sys-prefix).
    assert Path(spec.resource_dir).resolve().is_relative_to(VENV.resolve()), \
        f"kernel {name!r} comes from {spec.resource_dir}, not from {VENV}: run `make setup`"
    km = KernelManager(kernel_name=name)
    km.start_kernel(cwd=str(nb_path.parent), env={k: v for k, v in os.environ.items() if k != "MPLBACKEND"})
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=180)
        out, errors = [], []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                errors.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")
        reply = kc.execute_interactive(KERNEL_PROBE, output_hook=hook, timeout=180)
        assert reply["content"]["status"] == "ok", errors
        line = next(ln for ln in "".join(out).splitlines() if ln.startswith("PROBE"))
        probe = json.loads(line[len("PROBE"):])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert Path(probe["prefix"]).resolve() == VENV.resolve(), probe
    assert Path(probe["labkit"]).resolve().is_relative_to((ROOT / "shared" / "labkit").resolve()), probe


# ---------------------------------------------------------------- make lab


# How a shell starts a background job (`nohup make lab &`, a CI runner's step): SIGINT set to ignored,
# then exec. A disposition of SIG_IGN survives exec, so lab.py starts with Ctrl-C ignored.
EXEC_WITH_SIGINT_IGNORED = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                            "os.execv(sys.argv[1], sys.argv[1:])")


def start_lab_script(tmp_path: Path, port: int, sigint_ignored: bool = False) -> ManagedProcess:
    """ci/lab.py (what `make lab` runs) on `port`, started and printing its token; the caller stops it."""
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_TOKEN"}
    env.update(JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    log = tmp_path / "lab.log"

    def token_printed() -> bool:
        return "[lab] token:" in log.read_text(errors="replace") if log.exists() else False

    cmd = [sys.executable, str(ROOT / "ci" / "lab.py"), "--port", str(port)]
    if sigint_ignored:
        cmd = [sys.executable, "-c", EXEC_WITH_SIGINT_IGNORED, *cmd]
    return ManagedProcess(cmd, ready=token_printed, name="make-lab", env=env, cwd=str(ROOT),
                          start_timeout=180, log_path=log).start()


def ctrl_c_stops_everything(script: ManagedProcess, children: list) -> None:
    """Ctrl-C: SIGINT to the script (the terminal's foreground group holds only the script); it exits 0,
    and JupyterLab and its kernels are gone."""
    import signal

    import psutil

    os.kill(script.pid, signal.SIGINT)
    assert script.proc.wait(timeout=60) == 0
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running after Ctrl-C: {alive}"
    assert "[lab] stopped" in script.log_path.read_text()


def kill_leftovers(script: ManagedProcess, children: list) -> None:
    import psutil

    script.stop()
    for ch in children:  # a safety net: only the processes this test started, by id
        try:
            ch.kill()
        except psutil.NoSuchProcess:
            pass


def test_make_lab_serves_notebooks_on_loopback_and_stops_on_ctrl_c(tmp_path):
    import urllib.error
    import urllib.request

    import psutil

    port = free_port()
    script = start_lab_script(tmp_path, port)
    children = []
    try:
        children = psutil.Process(script.pid).children(recursive=True)
        text = script.log_path.read_text()
        token = re.search(r"\[lab\] token: (\w+)", text).group(1)
        assert len(token) >= 32
        assert f"http://127.0.0.1:{port}/lab?token={token}" in text
        # Loopback only: the listening socket is bound to 127.0.0.1.
        bound = set()
        for ch in children:
            try:
                conns = ch.net_connections(kind="tcp")
            except psutil.NoSuchProcess:  # a short-lived helper process of the server
                continue
            bound |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert bound == {"127.0.0.1"}, bound
        base = f"http://127.0.0.1:{port}/"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "api/contents", timeout=30)
        assert err.value.code == 403
        with urllib.request.urlopen(f"{base}api/contents?token={token}", timeout=30) as r:
            listing = {item["name"] for item in json.load(r)["content"]}
        assert {p.parent.name for p in committed_notebooks()} <= listing  # root is notebooks/
        ctrl_c_stops_everything(script, children)
    finally:
        kill_leftovers(script, children)


def test_the_background_job_setup_really_ignores_sigint():
    # The control of the next test: a process started the way it starts lab.py sees SIGINT ignored.
    import subprocess

    probe = "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"
    out = subprocess.run([sys.executable, "-c", EXEC_WITH_SIGINT_IGNORED, sys.executable, "-c", probe],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out


def test_make_lab_started_as_a_background_job_still_stops_on_ctrl_c(tmp_path):
    # `nohup make lab &` or a runner's background step: SIGINT arrives ignored (issue 21, item 6).
    import psutil

    script = start_lab_script(tmp_path, free_port(), sigint_ignored=True)
    children = []
    try:
        children = psutil.Process(script.pid).children(recursive=True)
        assert children, "JupyterLab is not running under lab.py"
        ctrl_c_stops_everything(script, children)
    finally:
        kill_leftovers(script, children)
