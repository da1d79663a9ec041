"""ft_cpu_bench's guards (the measurement itself needs a GPU machine; `--device cpu --arch tiny` runs it here)."""
import pytest
import torch

import ft_cpu_bench


def test_refuses_bad_requests():
    with pytest.raises(ValueError, match="new_tokens=1"):
        ft_cpu_bench.measure("cpu", "tiny", new_tokens=1)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no GPU is visible"):
            ft_cpu_bench.measure("cuda", "full")


def test_machine_names_cpu_and_cores():
    m = ft_cpu_bench.machine()
    assert m["cpu"] and m["cpu_cores_usable"] >= 1 and m["torch_threads"] >= 1
