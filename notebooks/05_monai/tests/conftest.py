import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[2] / "shared"))   # labkit, when not installed


@pytest.fixture(scope="session")
def small_template():
    """The MNI152 template at 6 mm: small enough for quick tests, real data."""
    import mo_data
    return mo_data.resample_template(mo_data.load_mni152(), 6.0)


@pytest.fixture(scope="session")
def subjects(small_template, tmp_path_factory):
    import mo_data
    return mo_data.write_subjects(small_template, tmp_path_factory.mktemp("subjects"), 4, seed=0)


@pytest.fixture(scope="session")
def synth_subjects(small_template, tmp_path_factory):
    import mo_data
    return mo_data.write_subjects(small_template, tmp_path_factory.mktemp("synth"), 3, seed=0, kind="synth")
