import sys
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(FOLDER))


@pytest.fixture(autouse=True)
def _seed():
    import torch
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
