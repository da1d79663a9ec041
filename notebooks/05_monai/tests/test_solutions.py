import numpy as np
import pytest

import solutions


def test_exercise_1_fractions(small_template):
    out = solutions.exercise_1((0.1, 0.6), tpl=small_template)
    for fr in out.values():
        assert sum(fr) == pytest.approx(1.0)
    # a higher threshold makes fewer tissue voxels
    assert out[0.6][0] > out[0.1][0]


def test_exercise_2_a_voxel_costs_more_on_a_coarser_grid():
    out = solutions.exercise_2(spacings=(3.0, 6.0))
    assert set(out) == {3.0, 6.0}
    assert all(0 < v < 1 for d in out.values() for v in d)
    assert (out[6.0] < out[3.0]).all()


def test_exercise_3_keeps_patch_shapes(subjects):
    out = solutions.exercise_3(subjects[0], pixdim=6.0, roi=16, num_samples=2)
    assert len(out) == 2 and tuple(out[0]["image"].shape) == (1, 16, 16, 16)
    assert tuple(out[0]["label"].shape) == (1, 16, 16, 16)
