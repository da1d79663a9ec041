import pytest

import solutions
import vq_packed
import vq_split


@pytest.mark.parametrize("q", [1, 4, 256, 1024, 32768])
def test_ring_sizes(q):
    assert solutions.split_ring_bytes(q) == vq_split.SplitLayout(q).size
    assert solutions.split_ring_bytes(q, 4096) == vq_split.SplitLayout(q, used_align=4096).size
    assert solutions.packed_ring_bytes(q) == vq_packed.PackedLayout(q).size


def test_event_idx_saves_kicks():
    with_idx = solutions.count_kicks(2000, device_batch=16, event_idx=True)
    without = solutions.count_kicks(2000, device_batch=16, event_idx=False)
    assert without == 2000            # no suppression: every addition kicks
    assert with_idx < without


def test_smallest_table():
    s = solutions.smallest_table(200_000, [16_384, 65_536, 131_072, 262_144, 1 << 20], n_packets=8000)
    assert s in (131_072, 262_144)


def test_event_idx_kicks_once_per_device_run():
    assert solutions.count_kicks(2000, device_batch=16, event_idx=True) == 2000 // 16
