"""Wheels that make a bare GPU image run our notebooks with papermill (standard library only).

Some GPU machines come as an image with CUDA builds of torch and JAX but no Jupyter and no Keras, no
registry reachable, and no way to install the full requirements/lock-gpu.txt (this project's GPU
machines: Python 3.12, see ../shared/GPU_MACHINES.md in the workspace). This downloads, here, the wheels
of what such an image lacks to execute a notebook: the papermill/Jupyter execution stack and Keras 3,
at requirements/lock.txt's versions, for the image's Python. On the machine, `source ci/gpu_image_env.sh`
installs them into a temporary folder and points PYTHONPATH there; then `python3 ci/run_notebooks.py
--profile full --device cuda` runs exactly as on a CPU machine (same runner, timeouts, failure report).

    python3 ci/gpu_image_wheels.py [--python 3.12] [--dest .whl] [--only jupyter|keras]

Topic 01 (Triton) needs more, about 100 MB, so it is a flavour of its own, split into folders of at most
--max-mib each (one device command carries at most 64 MiB): `--only triton01` writes .whl_01a/ (the
nvidia-pytriton wheel: tritonserver and the python-backend stubs) and .whl_01b/ (tritonclient[grpc,http] with
its dependencies, sentencepiece for the notebook's T5, and numpy 1.26.4 for the python backend). On the
machine, after gpu_image_env.sh, `source ci/gpu_triton_env.sh .whl_01a .whl_01b` calls `--install-triton`
here: it installs what the image lacks, makes the python backend's venv (the image's python3 with numpy 1.26.4
in front of the image's packages: the backend bundled with nvidia-pytriton breaks with numpy 2) and prints the
exports (PYTHONPATH, TRITON_PYTHON_BIN).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import freeze_lock  # noqa: E402  (the lock's parser, one place)

ROOT = Path(__file__).resolve().parents[1]
# What papermill needs that an image with torch/JAX/numpy/pyyaml/requests/tqdm/psutil/pygments/aiohttp
# usually lacks (read from the wheels' Requires-Dist), and Keras 3 for the Keras topics' JAX backend.
GROUPS = {
    "jupyter": ["papermill", "nbclient", "nbformat", "jupyter_client", "jupyter_core", "ipykernel", "ipython",
                "traitlets", "pyzmq", "tornado", "comm", "debugpy", "matplotlib-inline", "nest-asyncio2",
                "fastjsonschema", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",
                "entrypoints", "tenacity", "jedi", "parso", "pexpect", "ptyprocess", "prompt_toolkit", "wcwidth",
                "stack-data", "executing", "asttokens", "pure_eval", "ipython_pygments_lexers", "platformdirs",
                "ipywidgets", "widgetsnbextension", "jupyterlab_widgets"],
    "keras": ["keras", "namex", "optree"],
}
# Topic 01: nvidia-pytriton for its tritonserver binary and python-backend stubs only (ft_triton_repo finds the
# package without importing it, so its Python API's own dependencies - sh, typer, wrapt, ... - are not carried);
# tritonclient[grpc,http] and everything its Requires-Dist reaches on Python 3.12 (a test checks this list
# against the installed metadata); numpy, the lock's 1.26.4, goes into the python backend's venv only;
# sentencepiece (no dependencies): the notebook's T5 tokenizer, which the image lacks too.
TRITON01 = ["nvidia-pytriton", "numpy", "sentencepiece", "tritonclient", "grpcio", "protobuf", "packaging",
            "python-rapidjson", "ml-dtypes", "urllib3", "aiohttp", "aiohappyeyeballs", "aiosignal", "attrs", "frozenlist", "multidict",
            "propcache", "yarl", "idna", "typing_extensions", "geventhttpclient", "gevent", "greenlet", "zope.event",
            "zope.interface", "brotli", "certifi"]
FLAVOURS = {**GROUPS, "triton01": TRITON01}
VENV_ONLY = {"numpy"}           # wheels for the python backend's venv, never for the notebook's site
PLATFORMS = ([f"manylinux_2_{n}_x86_64" for n in (35, 34, 28, 27, 26, 24, 17, 12, 5)]
             + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"])
MIB = 2 ** 20


def split(sizes: dict, limit: int) -> list:
    """Wheel names in folders of at most `limit` bytes each: largest first, each into the emptiest folder it
    fits (a new one when none has room), so a wheel near the limit keeps a folder to itself."""
    too_big = [f"{n} ({s / MIB:.1f} MiB)" for n, s in sizes.items() if s > limit]
    if too_big:
        raise SystemExit(f"larger than one folder's {limit / MIB:.0f} MiB: {', '.join(too_big)}")
    bins: list = []
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        room = [b for b in bins if b[0] + sizes[name] <= limit]
        if room:
            b = min(room, key=lambda b: b[0])
            b[0] += sizes[name]
            b[1].append(name)
        else:
            bins.append([sizes[name], [name]])
    return [sorted(b[1]) for b in bins]


def dist_name(wheel: str) -> str:
    """The normalised distribution name of a wheel file (PEP 427 / PEP 503)."""
    return re.sub(r"[-_.]+", "-", Path(wheel).name.split("-")[0]).lower()


def download(names: list, python: str, dest: Path) -> None:
    pins = freeze_lock.pins(ROOT / "requirements" / "lock.txt")
    missing = [n for n in names if freeze_lock.name(n) not in pins]
    if missing:
        raise SystemExit(f"not pinned in requirements/lock.txt: {missing}")
    reqs = [f"{n}=={pins[freeze_lock.name(n)]}" for n in names]
    abi = "cp" + python.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest),
           "--python-version", python, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for p in PLATFORMS + ["any"]:
        cmd += ["--platform", p]
    subprocess.run(cmd + reqs, check=True)


def split_into_folders(src: Path, dest: str, limit: int) -> list:
    """Move the wheels of `src` into <dest>a, <dest>b, ... of at most `limit` bytes each."""
    wheels = {w.name: w.stat().st_size for w in src.glob("*.whl")}
    out = []
    for i, names in enumerate(split(wheels, limit)):
        folder = Path(f"{dest}{chr(ord('a') + i)}")
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for n in names:
            shutil.move(str(src / n), folder / n)
        out.append((folder, sum(wheels[n] for n in names), names))
    return out


# ---------------------------------------------------------------- on the GPU machine (gpu_triton_env.sh)

def installed(paths: list) -> dict:
    """{normalised name: version} of the distributions found on `paths` (the image's sys.path and ours)."""
    out = {}
    for d in importlib.metadata.distributions(path=[str(p) for p in paths]):
        name = re.sub(r"[-_.]+", "-", d.metadata["Name"] or "").lower()
        out.setdefault(name, d.version)          # the first on the path wins, as for an import
    return out


def plan(wheels: list, have: dict) -> dict:
    """Which carried wheels go where: "venv" (numpy for the python backend), "site" (the image lacks them),
    "have" (the image already has that distribution, maybe at another version: the image's is kept, since
    its own packages were built against it)."""
    out = {"venv": [], "site": [], "have": []}
    for w in sorted(wheels, key=lambda p: Path(p).name):
        n = dist_name(w)
        if n in VENV_ONLY:
            out["venv"].append(w)
        elif n in have:
            out["have"].append(f"{n} {have[n]}")
        else:
            out["site"].append(w)
    return out


def _pip_target(python: str, target: Path, wheels: list) -> None:
    r = subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--disable-pip-version-check", "--upgrade", "--target", str(target), *map(str, wheels)],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"installing {len(wheels)} wheel(s) into {target} failed: "
                         + (r.stderr.strip().splitlines() or ["pip gave no message"])[-1])


def _venv_site(py: Path) -> Path:
    """The venv's own site-packages, as its interpreter names it (whatever the distribution's scheme)."""
    r = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{py} does not start: " + (r.stderr.strip().splitlines() or ["no message"])[-1])
    return Path(r.stdout.strip())


def hand_venv(venv: Path) -> None:
    """What `python3 -m venv --without-pip` writes, for an image whose venv module is missing or broken (Debian
    and Ubuntu split it off into pythonX.Y-venv): bin/python3 -> this interpreter, and a pyvenv.cfg whose `home`
    tells CPython's getpath where the standard library is."""
    base = Path(os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable))
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("python3", "python"):
        link = venv / "bin" / name
        if not link.exists():
            link.symlink_to(base)
    v = sys.version_info
    (venv / "pyvenv.cfg").write_text(f"home = {base.parent}\ninclude-system-site-packages = false\n"
                                     f"version = {v.major}.{v.minor}.{v.micro}\n")


def make_venv(venv: Path, image_sites: list) -> Path:
    """The python backend's interpreter: a venv of this very Python (the stub links this version's libpython and
    runs the python3 first on PATH), without the image's site-packages of its own, but with a .pth that adds them
    AFTER the venv's: numpy 1.26 in the venv shadows the image's numpy 2, the image's torch stays visible. (A .pth
    rather than --system-site-packages: that would add the base interpreter's site-packages, not those of an
    image whose python3 is itself a venv.)"""
    py = venv / "bin" / "python3"
    if not py.exists():
        r = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True)
        if r.returncode or not py.exists():
            hand_venv(venv)
    site = _venv_site(py)
    if Path(venv).resolve() not in site.resolve().parents:   # never write the .pth into the image's own site
        raise SystemExit(f"{py} is not a venv in {venv} (its site-packages: {site})")
    site.mkdir(parents=True, exist_ok=True)
    lines = [f"import site; site.addsitedir({str(s)!r})" for s in image_sites]
    (site / "labkit_image_site.pth").write_text("\n".join(lines) + "\n")
    return py


def _run_check(python: str, code: str, env: dict) -> tuple:
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    return r.returncode, (r.stdout.strip() if r.returncode == 0 else
                          (r.stderr.strip().splitlines() or ["no message"])[-1])


BACKEND_IMPORTS = ("numpy", "torch", "tokenizers")   # what the 01 python-backend models import at load


def check_backend(py: Path, imports=BACKEND_IMPORTS) -> str:
    """numpy < 2 in the backend's interpreter, and the packages the models import, in the environment the
    server gives the stub (no PYTHONPATH: the stub ignores it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import importlib, numpy; v = numpy.__version__; assert int(v.split('.')[0]) < 2, "
            "f'numpy {v} at {numpy.__file__}: the python backend needs numpy < 2'; "
            f"mods = [importlib.import_module(m) for m in {list(imports)!r}]; "
            "print(' '.join(f'{m.__name__} {getattr(m, \"__version__\", \"?\")}' for m in mods))")
    rc, msg = _run_check(str(py), code, env)
    if rc:
        raise SystemExit(f"the python backend's interpreter {py} is not usable: {msg}")
    return msg


def stub_libraries(pytriton: Path) -> list:
    """Libraries the python-backend stub of this Python cannot find, in the server's library path
    (nvidia_pytriton.libs and this Python's LIBDIR, as ft_triton_repo.server_env sets it)."""
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = pytriton / "tritonserver" / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.exists():
        return [f"no python-backend stub for Python {ver} in {stub.parent.parent}"]
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    libs = [str(pytriton.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(p for p in libs + [os.environ.get("LD_LIBRARY_PATH", "")] if p))
    out = subprocess.run([ldd, str(stub)], capture_output=True, text=True, env=env).stdout
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


def install_triton(folders: list, site: Path, venv: Path) -> dict:
    """Install topic 01's carried wheels on the GPU machine; idempotent (what is there already is skipped, so a
    later command on the warm machine may carry none of the folders). Returns the paths and what it did."""
    site, venv = Path(site), Path(venv)
    present = [Path(f) for f in folders if Path(f).is_dir()]
    absent = [str(f) for f in folders if not Path(f).is_dir()]
    wheels = [w for f in present for w in sorted(f.glob("*.whl"))]
    empty = [str(f) for f in present if not any(f.glob("*.whl"))]
    if empty:
        raise SystemExit(f"no wheels in {', '.join(empty)} (made by: python3 ci/gpu_image_wheels.py --only triton01)")
    try:
        return _install(wheels, site, venv, absent)
    except SystemExit as e:
        if absent:
            raise SystemExit(f"{e} ({', '.join(absent)} not carried and not installed by an earlier command)")
        raise


def _install(wheels: list, site: Path, venv: Path, absent: list) -> dict:
    p = plan(wheels, installed([*sys.path, site]))
    if p["site"]:
        _pip_target(sys.executable, site, p["site"])
    image_sites = [s for s in dict.fromkeys(sys.path)
                   if s.endswith(("site-packages", "dist-packages")) and Path(s).is_dir()]
    py = make_venv(venv, image_sites)
    vsite = _venv_site(py)
    todo = [w for w in p["venv"] if dist_name(w) not in installed([vsite])]
    if todo:
        _pip_target(sys.executable, vsite, todo)
    backend = check_backend(py)
    # what the notebook's side needs, from the image plus our site (in a child: this process imported nothing)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    rc, msg = _run_check(sys.executable, "import importlib.util, tritonclient.grpc, tritonclient.http; "
                         "s = importlib.util.find_spec('pytriton'); assert s, 'nvidia-pytriton is not installed'; "
                         "print(list(s.submodule_search_locations)[0])", env)
    if rc:
        raise SystemExit(f"topic 01's client side is not complete: {msg}")
    missing_libs = stub_libraries(Path(msg))
    if missing_libs:
        raise SystemExit(f"the python-backend stub cannot load: {', '.join(missing_libs)} not found")
    return {"site": site, "python_bin": py.parent, "installed": [Path(w).name for w in p["site"] + todo],
            "kept_from_image": p["have"], "absent": absent, "backend": backend}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default="3.12", help="the image's Python version")
    ap.add_argument("--dest", help="default .whl; with --only triton01: .whl_01 (-> .whl_01a, .whl_01b, ...)")
    ap.add_argument("--only", choices=sorted(FLAVOURS), action="append")
    ap.add_argument("--max-mib", type=float, default=56.0,
                    help="triton01: the most one folder holds (64 MiB per command, less the ~5 MB working tree)")
    ap.add_argument("--install-triton", nargs="+", metavar="FOLDER",
                    help="on the GPU machine (gpu_triton_env.sh): install these folders, print the exports")
    ap.add_argument("--site", help="with --install-triton: the notebook side's target folder")
    ap.add_argument("--venv", help="with --install-triton: the python backend's venv")
    args = ap.parse_args(argv)
    if args.install_triton:
        if not (args.site and args.venv):
            ap.error("--install-triton needs --site and --venv")
        try:
            r = install_triton(args.install_triton, Path(args.site), Path(args.venv))
        except SystemExit as e:
            print(f"gpu_triton_env: {e}", file=sys.stderr)
            return 1
        did = f"installed {len(r['installed'])} wheel(s)" if r["installed"] else "nothing to install"
        note = f" (not carried: {', '.join(r['absent'])}; installed by an earlier command)" if r["absent"] else ""
        print(f"echo {shlex.quote(f'gpu_triton_env: {did}; backend python: ' + r['backend'] + note)} >&2")
        print(f"export TRITON_PYTHON_BIN={shlex.quote(str(r['python_bin']))}")
        print(f"export PYTHONPATH={shlex.quote(str(r['site']))}\"${{PYTHONPATH:+:$PYTHONPATH}}\"")
        return 0
    flavours = args.only or sorted(GROUPS)
    if "triton01" in flavours and len(flavours) > 1:
        ap.error("--only triton01 goes into folders of its own: run it separately")
    if flavours == ["triton01"]:
        dest = args.dest or str(ROOT / ".whl_01")
        staging = Path(dest + "_download")
        staging.mkdir(parents=True, exist_ok=True)
        download(TRITON01, args.python, staging)
        for folder, size, names in split_into_folders(staging, dest, int(args.max_mib * MIB)):
            print(f"{folder}: {len(names)} wheels, {size / MIB:.1f} MiB")
        staging.rmdir()
        return 0
    names = [n for g in flavours for n in GROUPS[g]]
    dest = args.dest or str(ROOT / ".whl")
    download(names, args.python, Path(dest))
    print(f"{len(names)} wheels for Python {args.python} in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
