"""Solutions of the notebook's exercises (run by tests/test_solutions.py)."""
from __future__ import annotations

from dataclasses import replace

import vq_model
import vq_split


def split_ring_bytes(q: int, used_align: int = 4) -> int:
    """Exercise 1: bytes of a split virtqueue of size q, from the spec's formulas alone."""
    desc = 16 * q
    avail = 2 + 2 + 2 * q + 2
    used_start = -(-(desc + avail) // used_align) * used_align
    return used_start + 2 + 2 + 8 * q + 2


def packed_ring_bytes(q: int) -> int:
    """... and the packed ring with its two event-suppression areas."""
    return 16 * q + 4 + 4


def count_kicks(n_buffers: int, device_batch: int, event_idx: bool) -> int:
    """Exercise 2: the driver adds buffers one at a time and asks after each whether to kick. A kick only
    wakes the device thread; it gets to run (and drains everything) once every `device_batch` additions."""
    mem, drv, dev = vq_split.make_queue(q=256, event_idx=event_idx)
    buf = mem.alloc(64)
    since_run = 0
    for i in range(n_buffers):
        drv.add(out=[(buf, 64)], token=i)
        since_run += 1
        drv.kick_needed()
        if since_run >= device_batch:
            while (ch := dev.pop()) is not None:
                dev.push(ch.head, 0)
            while drv.get_used() is not None:
                pass
            since_run = 0
    return drv.kicks


def smallest_table(flows: int, sizes, n_packets: int = 20_000, target: float = 0.95) -> int:
    """Exercise 3: the smallest offload table (from `sizes`) reaching `target` of the throughput that an
    unlimited table gives at `flows` concurrent flows."""
    p = replace(vq_model.calibrated(), flows=flows)
    best = vq_model.simulate("hw", replace(p, offload_table=10 * flows), n_packets).gbps
    for s in sorted(sizes):
        if vq_model.simulate("hw", replace(p, offload_table=s), n_packets).gbps >= target * best:
            return s
    return -1
