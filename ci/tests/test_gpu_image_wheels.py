"""ci/gpu_image_wheels.py's topic-01 flavour and ci/gpu_triton_env.sh, without a network or a GPU.

The folder split and the wheel plan are pure functions. The install runs for real here, with this venv's
Python standing in for the GPU image's python3 (it has tritonclient, nvidia-pytriton, numpy 1.26.4 and torch,
so it keeps them and installs only a small wheel built in the test) and with the venv's base interpreter as an
image that lacks them. What it cannot show here: numpy 1.26.4 in the backend venv shadowing an image's numpy 2
(run by hand on this machine with a numpy-2 Python 3.11, see the README's GPU section) and the CUDA image itself.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ci"))
import freeze_lock  # noqa: E402
import gpu_image_wheels as giw  # noqa: E402

MB = 10 ** 6
# the sizes of the real cp312 wheels (bytes, downloaded 2026-12-01)
REAL = {"nvidia_pytriton": 55369373, "numpy": 17950613, "grpcio": 7360708, "ml_dtypes": 5009002, "gevent": 2201889,
        "aiohttp": 1919630, "python_rapidjson": 1761284, "brotli": 1420478, "greenlet": 613875, "tritonclient": 108282}


def test_split_keeps_the_big_wheel_alone_and_every_folder_under_the_limit():
    limit = int(56 * giw.MIB)
    folders = giw.split(REAL, limit)
    assert folders[0] == ["nvidia_pytriton"]
    assert sorted(n for f in folders for n in f) == sorted(REAL)          # each wheel exactly once
    assert len(folders) == 2 and all(sum(REAL[n] for n in f) <= limit for f in folders)


def test_split_opens_a_folder_only_when_none_has_room():
    assert giw.split({"a": 30 * MB, "b": 30 * MB, "c": 30 * MB}, 50 * MB) == [["a"], ["b"], ["c"]]
    assert giw.split({"a": 30 * MB, "b": 20 * MB, "c": 20 * MB}, 50 * MB) == [["a", "b"], ["c"]]


def test_split_refuses_a_wheel_larger_than_a_folder():
    with pytest.raises(SystemExit, match=r"larger than one folder's 50 MiB: nvidia_pytriton \(52\.8 MiB\)"):
        giw.split({"nvidia_pytriton": REAL["nvidia_pytriton"], "numpy": MB}, 50 * giw.MIB)


def _norm(n: str) -> str:
    return re.sub(r"[-_.]+", "-", n).lower()


def _closure(root: str, extras: set, python="3.12") -> set:
    """Distributions `root[extras]` needs on Linux x86_64 CPython `python`, from the installed metadata."""
    from packaging.requirements import Requirement
    env = {"python_version": python, "python_full_version": python + ".3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix"}
    seen, todo = set(), [(root, extras)]
    while todo:
        name, ex = todo.pop()
        if _norm(name) in seen and not ex:
            continue
        seen.add(_norm(name))
        for line in importlib.metadata.requires(name) or []:
            r = Requirement(line)
            if r.marker is None or any(r.marker.evaluate({**env, "extra": e}) for e in (ex or {""})):
                todo.append((r.name, set(r.extras)))
    return seen


def test_triton01_holds_what_tritonclient_grpc_http_needs_at_the_lock_pins():
    """Read from this venv's installed tritonclient 2.73.0 metadata (the lock's), markers for Python 3.12."""
    need = _closure("tritonclient", {"grpc", "http"})
    carried = {_norm(n) for n in giw.TRITON01}
    assert need - carried == set()
    assert {"grpcio", "protobuf", "geventhttpclient", "gevent", "tritonclient"} <= need   # the closure is real
    pins = freeze_lock.pins(ROOT / "requirements" / "lock.txt")
    assert [n for n in giw.TRITON01 if freeze_lock.name(n) not in pins] == []
    assert pins["numpy"] == "1.26.4"                 # the python backend's numpy


def test_plan_puts_numpy_in_the_venv_and_keeps_what_the_image_has():
    wheels = ["d/numpy-1.26.4-cp312-cp312-manylinux_2_17_x86_64.whl", "d/zope_event-6.2-py3-none-any.whl",
              "d/tritonclient-2.73.0-py3-none-any.whl", "d/ml_dtypes-0.5.4-cp312-cp312-manylinux_2_28_x86_64.whl"]
    p = giw.plan(wheels, {"numpy": "2.5.2", "ml-dtypes": "0.5.5"})
    assert p["venv"] == [wheels[0]]
    assert p["have"] == ["ml-dtypes 0.5.5"]
    assert p["site"] == [wheels[2], wheels[1]]                     # by file name


def test_hand_made_venv_runs_this_python_with_the_image_sites_after_its_own(tmp_path):
    """The fallback for an image without a working venv module (Debian/Ubuntu ship it separately)."""
    venv = tmp_path / "v"
    giw.hand_venv(venv)
    image = [p for p in sys.path if p.endswith("site-packages")]
    py = giw.make_venv(venv, image)
    out = subprocess.run([str(py), "-c", "import sys, numpy; print(sys.prefix); print(numpy.__file__); "
                          "print([p for p in sys.path if p.endswith('site-packages')])"],
                         capture_output=True, text=True, env={"PATH": os.environ["PATH"]}).stdout.splitlines()
    assert out[0] == str(venv)
    own = str(giw._venv_site(py))
    assert eval(out[2]) == [own, *image]                         # its own site first, then the image's
    assert any(out[1].startswith(p) for p in image)              # numpy from the image (none in the venv here)


def test_make_venv_refuses_an_interpreter_that_is_not_a_venv_there(tmp_path):
    """A python3 that ignores the venv (here: a bin/python3 without pyvenv.cfg) would get the .pth in its own
    site-packages: refused."""
    (tmp_path / "v" / "bin").mkdir(parents=True)
    (tmp_path / "v" / "bin" / "python3").symlink_to(os.path.realpath(sys.executable))
    with pytest.raises(SystemExit, match="is not a venv in"):
        giw.make_venv(tmp_path / "v", ["/nonexistent"])


def _wheel(folder: Path, name: str, version: str, value: int) -> Path:
    """A real (tiny, pure-Python) wheel pip can install: module `name` with VALUE."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VALUE = {value}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def _source(tmp_path: Path, python_dir: str, *folders: str, then: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_PYTHON_BIN")}
    env.update(TMPDIR=str(tmp_path / "tmp"), PATH=python_dir + os.pathsep + env["PATH"])
    (tmp_path / "tmp").mkdir(exist_ok=True)
    script = f"source {ROOT / 'ci' / 'gpu_triton_env.sh'} {' '.join(folders)} || exit $?; {then}"
    return subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def venv_bin():
    b = Path(sys.executable).parent
    if not (b / "python3").exists():
        pytest.skip("this venv has no python3 to stand in for the image's")
    return str(b)


def test_env_installs_what_the_image_lacks_makes_the_backend_venv_and_is_idempotent(tmp_path, venv_bin):
    _wheel(tmp_path / ".whl_01b", "labkit_t01_probe", "0.1", 7)
    r = _source(tmp_path, venv_bin, ".whl_01b", then='echo "TPB=$TRITON_PYTHON_BIN"; python3 -c '
                '"import labkit_t01_probe as m, sys; print(\'probe\', m.VALUE)"; '
                '"$TRITON_PYTHON_BIN/python3" -c "import numpy, sys; print(\'backend\', numpy.__version__, sys.prefix)"')
    assert r.returncode == 0, r.stderr
    venv = tmp_path / "tmp" / "labkit-triton-venv"
    assert f"TPB={venv / 'bin'}" in r.stdout
    assert "probe 7" in r.stdout                                   # the site folder is on PYTHONPATH
    assert f"backend 1.26.4 {venv}" in r.stdout                    # the stub's python3 is the venv's, numpy < 2
    assert "gpu_triton_env: installed 1 wheel(s); backend python: numpy 1.26.4 torch" in r.stderr
    # a later command on the same machine: nothing to do, with or without the folder carried again
    again = _source(tmp_path, venv_bin, ".whl_01b")
    assert again.returncode == 0 and "nothing to install" in again.stderr, again.stderr
    shutil.rmtree(tmp_path / ".whl_01b")
    later = _source(tmp_path, venv_bin, ".whl_01b", then="python3 -c 'import labkit_t01_probe'")
    assert later.returncode == 0, later.stderr
    assert "(not carried: .whl_01b; installed by an earlier command)" in later.stderr


def test_env_on_a_bare_image_names_the_folders_not_carried(tmp_path, venv_bin):
    base = Path(getattr(sys, "_base_executable", "") or "")
    if not base.exists() or subprocess.run([str(base), "-c", "import tritonclient"], capture_output=True).returncode == 0:
        pytest.skip("needs a base interpreter without tritonclient")
    bin_dir = tmp_path / "image_bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(base)
    r = _source(tmp_path, str(bin_dir), ".whl_01a", ".whl_01b", then="echo SHOULD-NOT-RUN")
    assert r.returncode == 1 and "SHOULD-NOT-RUN" not in r.stdout
    err = r.stderr.strip().splitlines()
    # the backend's check comes first: that interpreter's numpy is 2.x (this machine's pyenv 3.11), or it lacks a
    # module the backend imports; the client's check would fail next (no tritonclient there)
    assert len(err) == 1 and err[0].startswith("gpu_triton_env: the python backend's interpreter "), err
    assert "the python backend needs numpy < 2" in err[0] or "No module named '" in err[0], err
    assert err[0].endswith("(.whl_01a, .whl_01b not carried and not installed by an earlier command)")


def test_env_refuses_an_empty_folder(tmp_path, venv_bin):
    (tmp_path / ".whl_01a").mkdir()
    r = _source(tmp_path, venv_bin, ".whl_01a")
    assert r.returncode == 1
    assert r.stderr.strip() == ("gpu_triton_env: no wheels in .whl_01a "
                                "(made by: python3 ci/gpu_image_wheels.py --only triton01)")
