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
    head = drv.add(out=[(a, 100)], in_=[(b, 200)], token="t", indirect=False)
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
    bufs = [(mem.alloc(10), 10) for _ in range(4)]
    for i, (a, _) in enumerate(bufs):
        mem.write(a, bytes([i]) * 10)
    head = drv.add(out=bufs, indirect=True, token="ind")
    assert drv.num_free == 3      # four pieces, one descriptor
    flags = struct.unpack_from("<QIHH", mem.buf, drv.base + 16 * head)[2]
    assert flags == vs.VRING_DESC_F_INDIRECT
    ch = dev.pop()
    assert ch.indirect and ch.ndesc == 4
    assert dev.read_out(ch) == b"".join(bytes([i]) * 10 for i in range(4))
    dev.push(ch.head, 0)
    assert drv.get_used() == ("ind", 0) and drv.num_free == 4


@pytest.mark.parametrize("n,indirect", [(5, True), (9, True), (5, False), (5, None)])
def test_chain_longer_than_the_queue_is_refused_for_good(n, indirect):
    """2.7.5.3.1: no chain longer than the Queue Size, through an indirect table or not; not RingFull."""
    mem, drv, dev = vs.make_queue(q=4)
    buf = mem.alloc(8)
    with pytest.raises(vs.ChainTooLong, match="MUST NOT create a descriptor chain longer than the Queue Size"):
        drv.add(out=[(buf, 8)] * n, indirect=indirect)
    assert drv.num_free == 4 and dev.pop() is None and not isinstance(vs.ChainTooLong("x"), vs.RingFull)


def test_indirect_none_follows_linux_virtqueue_use_indirect():
    mem, drv, dev = vs.make_queue(q=8)
    a = mem.alloc(64)
    drv.add(out=[(a, 8), (a, 8)])                  # several pieces, negotiated: one indirect descriptor
    assert drv.num_free == 7 and dev.pop().indirect
    drv.add(out=[(a, 8)])                          # one piece: direct
    assert drv.num_free == 6 and not dev.pop().indirect
    mem2, drv2, dev2 = vs.make_queue(q=8, indirect=False)
    drv2.add(out=[(a, 8), (a, 8)])                 # not negotiated: a direct chain
    assert drv2.num_free == 6 and not dev2.pop().indirect
    with pytest.raises(vs.DescriptorError, match="not negotiated"):
        drv2.add(out=[(a, 8), (a, 8)], indirect=True)


def test_full_ring_refuses_buffers_until_one_is_used():
    mem, drv, dev = vs.make_queue(q=4)
    buf = mem.alloc(64)
    for i in range(4):
        drv.add(out=[(buf, 64)], token=i)
    with pytest.raises(vs.RingFull):
        drv.add(out=[(buf, 64)], token="x")
    mem2, drv2, _ = vs.make_queue(q=4)
    drv2.add(out=[(buf, 8)] * 3, indirect=False)
    with pytest.raises(vs.RingFull):   # a chain of two does not fit into one free descriptor
        drv2.add(out=[(buf, 8), (buf, 8)], indirect=False)
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
        drv.add(in_=[(buf, 32)], token=i)
        ch = dev.pop()
        dev.push(ch.head, i & 0x1F)
        assert drv.get_used() == (i, i & 0x1F)
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
        dev.push(ch.head, 0)
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
    head = drv.add(out=[(buf, 8), (buf, 8)], indirect=False)
    # corrupt: make the second descriptor point back to the head with NEXT set
    second = struct.unpack_from("<QIHH", mem.buf, drv.base + 16 * head)[3]
    struct.pack_into("<QIHH", mem.buf, drv.base + 16 * second, buf, 8, vs.VRING_DESC_F_NEXT, head)
    with pytest.raises(vs.RingError):
        dev.pop()


# --- bad input: each case is a clear error, never silent corruption --------------------------------------------

@pytest.mark.parametrize("align", [0, 1, 2, 3, 6, 4095])
def test_used_align_must_be_a_power_of_two_of_at_least_4(align):
    with pytest.raises(ValueError, match="used_align"):
        vs.SplitLayout(8, used_align=align)


@pytest.mark.parametrize("length", [-1, 1 << 32])
def test_piece_len_outside_le32_is_refused(length):
    mem, drv, _ = vs.make_queue(q=4)
    with pytest.raises(vs.DescriptorError, match="le32"):
        drv.add(out=[(mem.alloc(8), length)])
    assert drv.num_free == 4


def test_chain_of_more_than_2_32_bytes_is_refused():
    mem, drv, _ = vs.make_queue(q=4)
    with pytest.raises(vs.DescriptorError, match="2\\^32 bytes"):
        drv.add(out=[(64, (1 << 32) - 1), (64, 2)], indirect=False)


def test_piece_outside_guest_memory_is_refused_by_the_driver():
    mem, drv, _ = vs.make_queue(q=4, mem_size=1 << 16)
    with pytest.raises(vs.GuestMemoryError, match="outside guest memory"):
        drv.add(out=[((1 << 16) - 4, 8)])


def test_device_reads_and_writes_only_inside_guest_memory():
    mem, drv, dev = vs.make_queue(q=4, mem_size=1 << 16)
    top = len(mem.buf)
    for pieces in ([(top - 4, 8)], [(top + 100, 8)]):
        with pytest.raises(vs.GuestMemoryError, match="outside guest memory"):
            dev.read_out(vs.Chain(head=0, readable=pieces))
        with pytest.raises(vs.GuestMemoryError, match="outside guest memory"):
            dev.write_in(vs.Chain(head=0, writable=pieces), b"x" * 8)
    # a descriptor that points outside memory is caught when the device pops it
    a = mem.alloc(8)
    head = drv.add(out=[(a, 8)])
    struct.pack_into("<QIHH", mem.buf, drv.base + 16 * head, top - 4, 8, 0, 0)
    with pytest.raises(vs.RingError, match="outside guest memory"):
        dev.pop()


def _raw_chain(mem, drv, descs, table=None):
    """Write descriptors by hand (as a buggy driver would) and publish descriptor 0 of the ring."""
    base = table if table is not None else drv.base
    for i, d in enumerate(descs):
        struct.pack_into("<QIHH", mem.buf, base + 16 * i, *d)
    mem.set_u16(drv.base + drv.L.avail_ring(0), 0)
    mem.set_u16(drv.base + drv.L.avail_idx, 1)


def test_device_refuses_indirect_together_with_next():
    mem, drv, dev = vs.make_queue(q=4)
    t, a = mem.alloc(32), mem.alloc(8)
    struct.pack_into("<QIHH", mem.buf, t, a, 8, 0, 0)
    _raw_chain(mem, drv, [(t, 16, vs.VRING_DESC_F_INDIRECT | vs.VRING_DESC_F_NEXT, 1), (a, 8, 0, 0)])
    with pytest.raises(vs.RingError, match="both INDIRECT and NEXT"):
        dev.pop()


def test_device_refuses_an_indirect_descriptor_inside_an_indirect_table():
    mem, drv, dev = vs.make_queue(q=4)
    t1, t2, a = mem.alloc(16), mem.alloc(16), mem.alloc(8)
    struct.pack_into("<QIHH", mem.buf, t2, a, 8, 0, 0)
    struct.pack_into("<QIHH", mem.buf, t1, t2, 16, vs.VRING_DESC_F_INDIRECT, 0)
    _raw_chain(mem, drv, [(t1, 16, vs.VRING_DESC_F_INDIRECT, 0)])
    with pytest.raises(vs.RingError, match="inside an indirect table"):
        dev.pop()


@pytest.mark.parametrize("via_table", [False, True])
def test_device_refuses_readable_after_writable(via_table):
    mem, drv, dev = vs.make_queue(q=4)
    a, b = mem.alloc(8), mem.alloc(8)
    descs = [(a, 8, vs.VRING_DESC_F_WRITE | vs.VRING_DESC_F_NEXT, 1), (b, 8, 0, 0)]
    if via_table:
        t = mem.alloc(32)
        _raw_chain(mem, drv, descs, table=t)
        _raw_chain(mem, drv, [(t, 32, vs.VRING_DESC_F_INDIRECT, 0)])
    else:
        _raw_chain(mem, drv, descs)
    with pytest.raises(vs.RingError, match="readable descriptor after a device-writable"):
        dev.pop()


def test_device_refuses_an_indirect_table_longer_than_the_queue():
    mem, drv, dev = vs.make_queue(q=4)
    t, a = mem.alloc(16 * 5), mem.alloc(8)
    _raw_chain(mem, drv, [(a, 8, vs.VRING_DESC_F_NEXT, i + 1) for i in range(4)] + [(a, 8, 0, 0)], table=t)
    _raw_chain(mem, drv, [(t, 16 * 5, vs.VRING_DESC_F_INDIRECT, 0)])
    with pytest.raises(vs.RingError, match="longer than the queue size"):
        dev.pop()


def test_device_handles_direct_descriptors_followed_by_one_indirect():
    """2.7.5.3.2: 'The device MUST handle the case of zero or more normal chained descriptors followed by a
    single descriptor with flags&VIRTQ_DESC_F_INDIRECT.'"""
    mem, drv, dev = vs.make_queue(q=4)
    a, b, c, t = mem.alloc(8), mem.alloc(8), mem.alloc(8), mem.alloc(32)
    for addr, byte in ((a, b"A"), (b, b"B"), (c, b"C")):
        mem.write(addr, byte * 8)
    _raw_chain(mem, drv, [(b, 8, vs.VRING_DESC_F_NEXT, 1), (c, 8, vs.VRING_DESC_F_WRITE, 0)], table=t)
    _raw_chain(mem, drv, [(a, 8, vs.VRING_DESC_F_NEXT, 1), (t, 32, vs.VRING_DESC_F_INDIRECT, 0)])
    ch = dev.pop()
    assert ch.indirect and ch.ndesc == 3 and dev.read_out(ch) == b"A" * 8 + b"B" * 8 and ch.writable == [(c, 8)]


def test_used_len_larger_than_the_posted_buffer_breaks_the_ring_not_memory():
    mem, drv, dev = vs.make_queue(q=4)
    a = mem.alloc(64)
    drv.add(in_=[(a, 64)], token="rx")
    ch = dev.pop()
    dev.push(ch.head, 64)
    USED = drv.base + drv.L.used_ring(0)
    struct.pack_into("<II", mem.buf, USED, ch.head, 5000)      # a buggy device overstates len
    with pytest.raises(vs.RingError, match="len 5000 .* only 64 device-writable bytes"):
        drv.get_used()
    assert drv.num_free == 3                                    # nothing was reclaimed
    struct.pack_into("<II", mem.buf, USED, ch.head, 64)
    assert drv.get_used() == ("rx", 64) and drv.num_free == 4


@pytest.mark.parametrize("head,written", [(4, 0), (0, -1), (0, 1 << 32)])
def test_device_push_refuses_fields_that_do_not_fit(head, written):
    mem, drv, dev = vs.make_queue(q=4)
    with pytest.raises(ValueError):
        dev.push(head, written)


def test_in_order_descriptors_in_ring_order_and_one_used_entry_per_batch():
    """VIRTIO_F_IN_ORDER (2.7.5, 2.7.9): descriptors in ring order with next = x + 1 (0 after the last);
    one used entry with the last buffer's head for a batch, used.idx moved by the batch size."""
    mem, drv, dev = vs.make_queue(q=4, in_order=True)
    a = mem.alloc(64)
    drv.add(in_=[(a, 8)], token="b0")
    drv.add(in_=[(a, 8), (a, 8)], token="b1", indirect=False)     # descriptors 1, 2
    drv.add(in_=[(a, 8)], token="b2")                             # descriptor 3
    assert [drv._read_desc(i)[3] for i in range(4)] == [1, 2, 3, 0]
    assert list(drv.order) == [0, 1, 3]
    dev.push_batch([dev.pop().head for _ in range(3)], written_last=5)
    assert mem.u16(drv.a_used_idx) == 3 and vs.USED_ELEM.unpack_from(mem.buf, drv.a_used_ring) == (3, 5)
    assert [drv.get_used() for _ in range(3)] == [("b0", 8), ("b1", 16), ("b2", 5)]
    assert drv.get_used() is None and drv.num_free == 4
    head = drv.add(in_=[(a, 8)], token="b3")                      # ring order continues at 0
    assert head == 0 and dev.pop().head == 0


def test_in_order_errors():
    mem, drv, dev = vs.make_queue(q=4, in_order=True)
    a = mem.alloc(8)
    drv.add(in_=[(a, 8)]), drv.add(in_=[(a, 8)])
    h0, h1 = dev.pop().head, dev.pop().head
    with pytest.raises(ValueError, match="in the order"):
        dev.push(h1, 0)
    with pytest.raises(ValueError, match="oldest popped"):
        dev.push_batch([h1], 0)
    # a device that names the 2nd buffer but moves used.idx by only 1 breaks the ring
    dev.push(h0, 0)
    vs.USED_ELEM.pack_into(mem.buf, drv.a_used_ring, h1, 0)
    with pytest.raises(vs.RingError, match="moved only 1"):
        drv.get_used()
    mem2, drv2, dev2 = vs.make_queue(q=4)
    drv2.add(in_=[(a, 8)])
    with pytest.raises(ValueError, match="need VIRTIO_F_IN_ORDER"):
        dev2.push_batch([dev2.pop().head], 0)
    with pytest.raises(ValueError, match="not a chain the device popped"):
        dev2.push(3, 0)
