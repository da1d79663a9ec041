import ctypes
import struct

import pytest

import vq_split as vs


class Desc(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint32), ("flags", ctypes.c_uint16), ("next", ctypes.c_uint16)]


def avail_struct(q):
    class Avail(ctypes.LittleEndianStructure):
        _pack_ = 1
        _fields_ = [("flags", ctypes.c_uint16), ("idx", ctypes.c_uint16), ("ring", ctypes.c_uint16 * q),
                    ("used_event", ctypes.c_uint16)]
    return Avail


def used_struct(q):
    class Elem(ctypes.LittleEndianStructure):
        _pack_ = 1
        _fields_ = [("id", ctypes.c_uint32), ("len", ctypes.c_uint32)]

    class Used(ctypes.LittleEndianStructure):
        _pack_ = 1
        _fields_ = [("flags", ctypes.c_uint16), ("idx", ctypes.c_uint16), ("ring", Elem * q),
                    ("avail_event", ctypes.c_uint16)]
    return Used


@pytest.mark.parametrize("q", [1, 2, 8, 256, 1024, 32768])
def test_layout_matches_independent_ctypes_structs(q):
    L = vs.SplitLayout(q)
    assert ctypes.sizeof(Desc) == 16
    assert Desc.len.offset == 8 and Desc.flags.offset == 12 and Desc.next.offset == 14
    A, U = avail_struct(q), used_struct(q)
    assert L.avail == 16 * q
    assert L.avail_idx - L.avail == A.idx.offset == 2
    assert L.avail_ring(0) - L.avail == A.ring.offset == 4
    assert L.used_event - L.avail == A.used_event.offset == 4 + 2 * q
    assert L.used % 4 == 0 and L.used >= L.used_event + 2 and L.used - (L.used_event + 2) < 4
    assert L.used_idx - L.used == U.idx.offset
    assert L.used_ring(0) - L.used == U.ring.offset
    assert L.avail_event - L.used == U.avail_event.offset == 4 + 8 * q
    assert L.size == L.used + ctypes.sizeof(U)


def test_legacy_alignment_puts_used_ring_on_a_page():
    L = vs.SplitLayout(256, used_align=4096)
    assert L.used == 8192   # 16*256 + 6 + 512 = 4614 -> next page boundary


@pytest.mark.parametrize("q", [0, 3, 100, 65536])
def test_bad_queue_sizes_are_rejected(q):
    with pytest.raises(ValueError):
        vs.SplitLayout(q)


def test_bytes_of_a_two_piece_chain():
    mem, drv, dev = vs.make_queue(q=8)
    a, b = mem.alloc(100), mem.alloc(200)
    head = drv.add(out=[(a, 100)], in_=[(b, 200)], token="t")
    base, L = drv.base, drv.L
    d0 = struct.unpack_from("<QIHH", mem.buf, base + L.desc_entry(head))
    assert d0 == (a, 100, vs.VRING_DESC_F_NEXT, d0[3])
    d1 = struct.unpack_from("<QIHH", mem.buf, base + L.desc_entry(d0[3]))
    assert d1[:3] == (b, 200, vs.VRING_DESC_F_WRITE)
    assert struct.unpack_from("<H", mem.buf, base + L.avail_idx)[0] == 1
    assert struct.unpack_from("<H", mem.buf, base + L.avail_ring(0))[0] == head


def test_chain_round_trip_device_reads_and_writes():
    mem, drv, dev = vs.make_queue(q=16)
    hdr, body, reply = mem.alloc(12), mem.alloc(64), mem.alloc(128)
    mem.write(hdr, b"H" * 12)
    mem.write(body, bytes(range(64)))
    drv.add(out=[(hdr, 12), (body, 64)], in_=[(reply, 100), (mem.alloc(28), 28)], token="req")
    ch = dev.pop()
    assert ch.ndesc == 4 and len(ch.readable) == 2 and len(ch.writable) == 2
    assert dev.read_out(ch) == b"H" * 12 + bytes(range(64))
    n = dev.write_in(ch, b"R" * 110)
    assert n == 110 and ch.write_capacity == 128
    dev.push(ch.head, n)
    assert drv.get_used() == ("req", 110)
    assert mem.read(reply, 100) == b"R" * 100
    assert drv.num_free == 16


def test_indirect_descriptor_uses_one_ring_slot():
    mem, drv, dev = vs.make_queue(q=4)
    bufs = [(mem.alloc(10), 10) for _ in range(6)]
    for i, (a, _) in enumerate(bufs):
        mem.write(a, bytes([i]) * 10)
    head = drv.add(out=bufs, indirect=True, token="ind")
    assert drv.num_free == 3      # six pieces, one descriptor
    flags = struct.unpack_from("<QIHH", mem.buf, drv.base + 16 * head)[2]
    assert flags == vs.VRING_DESC_F_INDIRECT
    ch = dev.pop()
    assert ch.indirect and ch.ndesc == 6
    assert dev.read_out(ch) == b"".join(bytes([i]) * 10 for i in range(6))
    dev.push(ch.head, 0)
    assert drv.get_used() == ("ind", 0) and drv.num_free == 4


def test_full_ring_refuses_buffers_until_one_is_used():
    mem, drv, dev = vs.make_queue(q=4)
    buf = mem.alloc(64)
    for i in range(4):
        drv.add(out=[(buf, 64)], token=i)
    with pytest.raises(vs.RingFull):
        drv.add(out=[(buf, 64)], token="x")
    mem2, drv2, _ = vs.make_queue(q=4)
    drv2.add(out=[(buf, 8)] * 3)
    with pytest.raises(vs.RingFull):   # a chain of two does not fit into one free descriptor
        drv2.add(out=[(buf, 8), (buf, 8)])
    ch = dev.pop()
    dev.push(ch.head, 0)
    assert drv.get_used() == (0, 0)
    drv.add(out=[(buf, 64)], token=4)   # room again
    assert dev.avail_count() == 4


@pytest.mark.parametrize("event,new,old,expected", [
    (0, 1, 0, True),          # the event index was crossed
    (5, 5, 4, False),         # not yet: event is 5, new is 5 means entries 4 only
    (4, 5, 4, True),
    (3, 10, 5, False),        # already passed before old: the other side was told earlier
    (65535, 2, 65534, True),  # wrap-around: 65534 -> 2 crosses 65535
    (1, 2, 65534, True),
    (2, 2, 65534, False),
    (7, 7, 7, False),         # nothing new, never notify
])
def test_need_event_rule(event, new, old, expected):
    assert vs.vring_need_event(event, new, old) is expected


def test_need_event_matches_brute_force_interval_check():
    import random
    rng = random.Random(0)
    for _ in range(5000):
        old = rng.randrange(65536)
        k = rng.randrange(0, 300)
        new = (old + k) % 65536
        event = (old + rng.randrange(-50, 350)) % 65536
        crossed = any((old + j) % 65536 == event for j in range(k))
        assert vs.vring_need_event(event, new, old) == crossed


def test_event_idx_suppresses_kicks_while_the_device_is_behind():
    mem, drv, dev = vs.make_queue(q=64)
    buf = mem.alloc(16)
    drv.add(out=[(buf, 16)])
    assert drv.kick_needed() is True          # device asked for a kick at index 0
    drv.add(out=[(buf, 16)])
    assert drv.kick_needed() is False         # device has not consumed anything: no new kick
    while dev.pop() is not None:
        pass                                  # device catches up and re-arms avail_event
    drv.add(out=[(buf, 16)])
    assert drv.kick_needed() is True


def test_interrupt_suppression_with_delayed_used_event():
    mem, drv, dev = vs.make_queue(q=64)
    buf = mem.alloc(16)
    for _ in range(10):
        drv.add(out=[(buf, 16)])
    drv.set_used_event(7)                     # "interrupt me once the 8th buffer is used"
    fired = []
    for i in range(10):
        dev.push(dev.pop().head, 0)
        fired.append(dev.interrupt_needed())
    assert fired == [False] * 7 + [True] + [False] * 2


def test_without_event_idx_flags_control_notifications():
    mem, drv, dev = vs.make_queue(q=8, event_idx=False)
    buf = mem.alloc(16)
    drv.add(out=[(buf, 16)])
    assert drv.kick_needed() is True
    mem.set_u16(drv.base + drv.L.used_flags, vs.VRING_USED_F_NO_NOTIFY)
    drv.add(out=[(buf, 16)])
    assert drv.kick_needed() is False


def test_indices_wrap_past_65535_in_a_real_run():
    mem, drv, dev = vs.make_queue(q=8)
    buf = mem.alloc(32)
    seen_wrap = False
    for i in range(70_000):
        drv.add(out=[(buf, 32)], token=i)
        ch = dev.pop()
        dev.push(ch.head, i & 0xFF)
        assert drv.get_used() == (i, i & 0xFF)
        if mem.u16(drv.base + drv.L.avail_idx) == 0:
            seen_wrap = True
    assert seen_wrap
    assert mem.u16(drv.base + drv.L.avail_idx) == 70_000 % 65536
    assert mem.u16(drv.base + drv.L.used_idx) == 70_000 % 65536


def test_wrap_with_many_entries_outstanding():
    mem, drv, dev = vs.make_queue(q=16, start_index=65530)
    buf = mem.alloc(32)
    for i in range(12):                        # avail.idx goes 65530 -> 6 (wraps)
        drv.add(out=[(buf, 32)], token=i)
    assert mem.u16(drv.base + drv.L.avail_idx) == 6
    assert dev.avail_count() == 12
    got = []
    for _ in range(12):
        ch = dev.pop()
        dev.push(ch.head, 1)
    while (u := drv.get_used()) is not None:
        got.append(u[0])
    assert got == list(range(12)) and drv.num_free == 16


def test_device_rejects_an_index_jump_larger_than_the_queue():
    mem, drv, dev = vs.make_queue(q=8)
    mem.set_u16(drv.base + drv.L.avail_idx, 9)
    with pytest.raises(vs.RingError):
        dev.pop()


def test_device_detects_a_descriptor_loop():
    mem, drv, dev = vs.make_queue(q=4)
    buf = mem.alloc(8)
    head = drv.add(out=[(buf, 8), (buf, 8)])
    # corrupt: make the second descriptor point back to the head with NEXT set
    second = struct.unpack_from("<QIHH", mem.buf, drv.base + 16 * head)[3]
    struct.pack_into("<QIHH", mem.buf, drv.base + 16 * second, buf, 8, vs.VRING_DESC_F_NEXT, head)
    with pytest.raises(vs.RingError):
        dev.pop()
