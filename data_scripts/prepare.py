"""Prepare the offline data: `python -m data_scripts.prepare [NAME ...] [--profile full] [--force NAME]`.

Skips what is already present and verified (SHA-256); fetches what is missing into a temporary
folder and renames it into place; a corrupt file is an error that names the source and the fix.
`--originals` fetches the full original datasets from their websites where a network exists.
"""
from __future__ import annotations

import argparse
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
from labkit.data import DataError, prepare, registry  # noqa: E402
from labkit.paths import data_root  # noqa: E402


def fetch_originals(sources) -> int:
    """Download each source's full original dataset (where it names one) into <data root>/originals/.
    Needs a network; offline, says so and keeps using the offline copy. Returns the number of failures."""
    failed = 0
    for s in sources:
        if not s.full_original:
            continue
        dest = data_root() / "originals" / s.name
        dest.mkdir(parents=True, exist_ok=True)
        for url in s.full_original.split():
            target = dest / url.rstrip("/").rsplit("/", 1)[-1]
            if target.exists():
                print(f"[data] {s.name}: original {target.name} already present")
                continue
            tmp = target.with_name(target.name + ".part")
            try:
                with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
                    while block := r.read(1 << 20):
                        f.write(block)
                tmp.replace(target)
                print(f"[data] {s.name}: fetched the original {url} -> {target} (no checksum is registered for it)")
            except Exception as exc:
                tmp.unlink(missing_ok=True)
                failed += 1
                print(f"[data] {s.name}: the original {url} could not be fetched ({exc}); "
                      "this machine has no route to it, so the offline copy stays in use", file=sys.stderr)
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="sources to prepare (default: all that the profile needs)")
    ap.add_argument("--profile", choices=("smoke", "full"), default="smoke")
    ap.add_argument("--force", action="store_true", help="re-fetch even if present (restores a corrupt file)")
    ap.add_argument("--list", action="store_true", help="list the sources and exit")
    ap.add_argument("--originals", action="store_true",
                    help="also fetch the full original datasets from their websites (needs a network)")
    args = ap.parse_args(argv)
    sources = registry()
    if args.list:
        for s in sources.values():
            print(f"{s.name:18} {len(s.files):3} files  {s.origin:40} {s.description}")
        return 0
    unknown = [n for n in args.names if n not in sources]
    if unknown:
        print(f"unknown source(s) {unknown}; known: {', '.join(sorted(sources))}", file=sys.stderr)
        return 2
    names = args.names or [n for n, s in sources.items()
                           if args.profile in s.extra.get("profiles", ["smoke", "full"])]
    print(f"[data] data root: {data_root()}")
    failed = 0
    for name in names:
        try:
            folder = prepare(sources[name], force=args.force, quiet=False)
            print(f"[data] {name}: ok ({len(sources[name].files)} files, sha256 verified) -> {folder}")
        except DataError as exc:
            failed += 1
            print(f"[data] {name}: ERROR: {exc}", file=sys.stderr)
    if args.originals:
        failed += fetch_originals([sources[n] for n in names])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
