import hashlib

import pytest

from labkit import data


def make_source(payloads, calls=None):
    files = {rel: hashlib.sha256(body).hexdigest() for rel, body in payloads.items()}

    def fetch(dest, files_):
        if calls is not None:
            calls.append(1)
        for rel, body in payloads.items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(body)
    return data.Source("demo", "a demo source", files, fetch, origin="a test")


def test_prepare_is_idempotent_and_verified(data_root):
    calls = []
    src = make_source({"a.txt": b"alpha", "sub/b.txt": b"beta"}, calls)
    folder = data.prepare(src, quiet=True)
    assert (folder / "sub" / "b.txt").read_bytes() == b"beta"
    data.prepare(src, quiet=True)
    assert len(calls) == 1  # second call found everything verified and fetched nothing


def test_deleted_file_is_restored(data_root):
    src = make_source({"a.txt": b"alpha"})
    folder = data.prepare(src, quiet=True)
    (folder / "a.txt").unlink()
    data.prepare(src, quiet=True)
    assert (folder / "a.txt").read_bytes() == b"alpha"


def test_corrupt_file_gives_a_checksum_error_naming_the_fix(data_root):
    src = make_source({"a.txt": b"alpha"})
    folder = data.prepare(src, quiet=True)
    (folder / "a.txt").write_bytes(b"alphX")
    with pytest.raises(data.ChecksumError, match=r"demo.*corrupt.*--force demo"):
        data.prepare(src, quiet=True)
    data.prepare(src, force=True, quiet=True)
    assert (folder / "a.txt").read_bytes() == b"alpha"


def test_upstream_change_is_refused_and_nothing_half_written(data_root):
    src = make_source({"a.txt": b"alpha"})
    src.files["a.txt"] = "0" * 64
    with pytest.raises(data.ChecksumError, match="upstream"):
        data.prepare(src, quiet=True)
    assert not src.folder.exists()
    assert not [p for p in data_root.iterdir() if p.name.startswith(".demo")]


def test_failing_fetch_is_a_clear_error(data_root):
    def fetch(dest, files):
        raise OSError("network unreachable")
    src = data.Source("gone", "x", {"f": "0" * 64}, fetch, origin="nowhere")
    with pytest.raises(data.DataError, match="could not be fetched from nowhere"):
        data.prepare(src, quiet=True)


def test_registry_lists_checksummed_sources():
    sources = data.registry()
    assert {"mnist_5k", "gpt2_bpe", "astronaut", "mni152"} <= set(sources)
    for s in sources.values():
        assert s.files and all(len(h) == 64 for h in s.files.values()), s.name


def test_unknown_source_names_the_known_ones():
    with pytest.raises(data.DataError, match="known: .*astronaut"):
        data.require("no_such_source")


def test_installed_package_source_really_prepares(data_root):
    folder = data.require("astronaut")
    assert data.check(data.registry()["astronaut"]) == [] and (folder / "astronaut.png").stat().st_size > 1000
