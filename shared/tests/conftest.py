import pytest


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    monkeypatch.setenv("LABKIT_DATA_ROOT", str(root))
    return root


@pytest.fixture
def build_root(tmp_path, monkeypatch):
    root = tmp_path / "build"
    monkeypatch.setenv("LABKIT_BUILD_DIR", str(root))
    return root
