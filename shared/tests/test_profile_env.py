import random

import numpy as np
import pytest
import torch

import labkit
from labkit.profile import ParameterError, check_choice


def test_valid_params_pick_per_profile():
    p = labkit.check_params("smoke", "cpu", 3)
    assert p.smoke and p.pick(smoke=1, full=100) == 1
    assert labkit.check_params("full").pick(smoke=1, full=100) == 100
    assert labkit.by_profile("full", epochs={"smoke": 2, "full": 50}) == {"epochs": 50}


@pytest.mark.parametrize("kwargs, allowed", [
    ({"profile": "fast"}, "'smoke', 'full'"),
    ({"profile": "smoke", "device": "gpu"}, "'auto', 'cpu', 'cuda'"),
])
def test_bad_values_name_the_allowed_ones(kwargs, allowed):
    with pytest.raises(ParameterError, match=allowed):
        labkit.check_params(**kwargs)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True, 2**31, 2**32])
def test_bad_seed(seed):
    with pytest.raises(ParameterError, match="seed"):
        labkit.check_params("smoke", "auto", seed)


def test_check_choice_for_topic_parameters():
    assert check_choice("dataset", "fortunes", ("fortunes", "civil_comments")) == "fortunes"
    with pytest.raises(ParameterError, match="'fortunes', 'civil_comments'"):
        check_choice("dataset", "imdb", ("fortunes", "civil_comments"))


def test_device_selection_falls_back_to_cpu_and_refuses_missing_cuda():
    assert labkit.select_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert labkit.select_device("auto") == "cpu"
        with pytest.raises(RuntimeError, match="no GPU"):
            labkit.select_device("cuda")


def test_seeding_makes_runs_repeat():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()
    labkit.seed_everything(7)
    a = draw()
    labkit.seed_everything(7)
    assert draw() == a
    labkit.seed_everything(8)
    assert draw() != a


def test_environment_report_has_the_contract_fields(capsys):
    info = labkit.environment_report()
    assert {"cpu", "gpu", "gpu_count", "versions"} <= set(info)
    assert info["versions"]["numpy"] == np.__version__
    out = capsys.readouterr().out
    assert "GPU:" in out and f"numpy {np.__version__}" in out and "Keras backend" not in out
    labkit.environment_report(show=False)
    assert capsys.readouterr().out == ""


def test_stage_dir_follows_env_and_is_per_notebook_and_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_STAGE_DIR", str(tmp_path))
    a, b = labkit.stage_dir("03_locoprop", "full"), labkit.stage_dir("03_locoprop", "smoke")
    assert a == tmp_path / "03_locoprop.full" and a.is_dir() and a != b


def test_keras_framework_follows_keras_backend(monkeypatch):
    from labkit import env
    monkeypatch.delitem(__import__("sys").modules, "keras", raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert env.keras_backend() == "jax"
    with pytest.raises(ValueError, match="framework"):
        env._gpu_count("mxnet")


def test_the_largest_seed_and_the_seeds_notebooks_derive_from_it_are_accepted():
    from labkit.profile import MAX_SEED
    assert labkit.check_params("smoke", "auto", MAX_SEED).seed == MAX_SEED
    labkit.seed_everything(MAX_SEED + 1000)   # notebooks add small offsets (numpy refuses 2**32 and above)
