import struct

import pytest

import vq_packed as vp
import vq_split as vs
from vq_split import RingFull


def flags_at(mem, drv, i):
    return struct.unpack_from("<QIHH", mem.buf, drv.base + 16 * i)[3]


def test_descriptor_layout_and_available_bits():
    assert vp.PDESC.size == 16
    mem, drv, dev = vp.make_packed(q=4)
    a = mem.alloc(64)
    bid = drv.add(out=[(a, 64)])
    addr, length, id_, flags = struct.unpack_from("<QIHH", mem.buf, drv.base)
    assert (addr, length, id_) == (a, 64, bid)
    assert flags & vp.VIRTQ_DESC_F_AVAIL and not flags & vp.VIRTQ_DESC_F_USED  # wrap counter 1


def test_wrap_counters_flip_and_bits_invert_on_the_second_lap():
    mem, drv, dev = vp.make_packed(q=4)
    a = mem.alloc(64)
    for lap in range(3):
        for i in range(4):
            drv.add(out=[(a, 8)], token=(lap, i))
            ch = dev.pop()
            assert ch is not None
            dev.push(ch, 0)
            assert drv.get_used() == ((lap, i), 0)
        assert drv.avail_wrap == dev.avail_wrap == dev.used_wrap == drv.used_wrap == ((lap + 1) % 2 == 0)
    # on lap 2 (wrap 0) an available descriptor has AVAIL=0, USED=1
    assert drv.avail_wrap == 0
    drv.add(out=[(a, 8)])
    f = flags_at(mem, drv, 0)
    assert not f & vp.VIRTQ_DESC_F_AVAIL and f & vp.VIRTQ_DESC_F_USED
    assert vp.is_avail(f, 0) and not vp.is_avail(f, 1)


def test_used_descriptor_of_previous_lap_is_not_available():
    mem, drv, dev = vp.make_packed(q=2)
    a = mem.alloc(8)
    for _ in range(2):
        drv.add(out=[(a, 8)])
        dev.push(dev.pop(), 0)
        drv.get_used()
    # both slots carry used flags with wrap 1 (AVAIL=USED=1); the device's wrap is now 0
    assert dev.avail_wrap == 0
    assert dev.pop() is None
    assert drv.get_used() is None


def test_chain_and_buffer_id_and_skip():
    mem, drv, dev = vp.make_packed(q=8)
    a, b, c = mem.alloc(8), mem.alloc(8), mem.alloc(16)
    bid1 = drv.add(out=[(a, 8), (b, 8)], in_=[(c, 16)], token="x", indirect=False)
    bid2 = drv.add(out=[(a, 8)], token="y")
    ch1 = dev.pop()
    assert ch1.ndesc == 3 and ch1.buffer_id == bid1 and len(ch1.writable) == 1
    ch2 = dev.pop()
    assert ch2.buffer_id == bid2
    dev.push(ch1, 16)
    dev.push(ch2, 0)
    assert drv.get_used() == ("x", 16)
    assert drv.get_used() == ("y", 0)
    assert drv.num_free == 8


def test_full_ring_refuses():
    mem, drv, dev = vp.make_packed(q=4)
    a = mem.alloc(8)
    drv.add(out=[(a, 8)] * 3, indirect=False)
    with pytest.raises(RingFull):
        drv.add(out=[(a, 8)] * 2, indirect=False)
    drv.add(out=[(a, 8)])
    with pytest.raises(RingFull):
        drv.add(out=[(a, 8)])


def test_chain_across_the_ring_end():
    mem, drv, dev = vp.make_packed(q=4)
    a = mem.alloc(8)
    for _ in range(3):
        drv.add(out=[(a, 8)])
        dev.push(dev.pop(), 0)
        drv.get_used()
    bid = drv.add(out=[(a, 8)] * 3, token="wrap", indirect=False)   # slots 3, 0, 1; wraps in the middle
    ch = dev.pop()
    assert ch.ndesc == 3 and ch.buffer_id == bid and dev.avail_wrap == 0
    dev.push(ch, 0)
    assert drv.get_used() == ("wrap", 0)


def test_device_event_suppression_modes():
    mem, drv, dev = vp.make_packed(q=8)
    a = mem.alloc(8)
    drv.add(out=[(a, 8)])
    assert drv.kick_needed() is True
    dev.set_notifications(vp.RING_EVENT_FLAGS_DISABLE)
    drv.add(out=[(a, 8)])
    assert drv.kick_needed() is False
    dev.set_notifications(vp.RING_EVENT_FLAGS_DESC, at=4)
    drv.add(out=[(a, 8)])      # position 2 -> 3: does not reach 4
    assert drv.kick_needed() is False
    drv.add(out=[(a, 8)])      # 3 -> 4: crosses descriptor 3? event 4 needs 4 to be written
    drv.add(out=[(a, 8)])      # 4 -> 5: descriptor 4 made available
    assert drv.kick_needed() is True


def test_flag_names_follow_linux_header_and_spec():
    # Linux include/uapi/linux/virtio_ring.h: bit numbers; the spec's VIRTQ_DESC_F_*: masks
    assert (vp.VRING_PACKED_DESC_F_AVAIL, vp.VRING_PACKED_DESC_F_USED, vp.VRING_PACKED_EVENT_F_WRAP_CTR) == (7, 15, 15)
    assert (vp.VIRTQ_DESC_F_AVAIL, vp.VIRTQ_DESC_F_USED) == (0x80, 0x8000)
    assert (vp.RING_EVENT_FLAGS_ENABLE, vp.RING_EVENT_FLAGS_DISABLE, vp.RING_EVENT_FLAGS_DESC) == (0, 1, 2)


def test_indirect_buffer_takes_one_ring_slot_and_one_used_descriptor():
    mem, drv, dev = vp.make_packed(q=4)
    bufs = [(mem.alloc(8), 8) for _ in range(3)]
    for i, (a, _) in enumerate(bufs):
        mem.write(a, bytes([65 + i]) * 8)
    reply = mem.alloc(32)
    bid = drv.add(out=bufs, in_=[(reply, 32)], token="ind")        # indirect=None: a table
    addr, length, id_, flags = struct.unpack_from("<QIHH", mem.buf, drv.base)
    assert length == 64 and id_ == bid and flags & vs.VRING_DESC_F_INDIRECT and not flags & vs.VRING_DESC_F_NEXT
    assert drv.num_free == 3
    ch = dev.pop()
    assert ch.indirect and ch.ndesc == 1 and dev.read_out(ch) == b"A" * 8 + b"B" * 8 + b"C" * 8
    dev.push(ch, dev.write_in(ch, b"ok"))
    assert drv.get_used() == ("ind", 2) and drv.num_free == 4 and mem.read(reply, 2) == b"ok"


def _raw(mem, drv, pos, addr, length, bid, flags):
    struct.pack_into("<QIHH", mem.buf, drv.base + 16 * pos, addr, length, bid, flags)


def test_device_refuses_indirect_in_a_next_list_and_tables_longer_than_the_queue():
    mem, drv, dev = vp.make_packed(q=4)
    a, t = mem.alloc(8), mem.alloc(16 * 5)
    av = vp.avail_flags(1)
    _raw(mem, drv, 1, t, 16, 0, vs.VRING_DESC_F_INDIRECT | av)
    _raw(mem, drv, 0, a, 8, 0, vs.VRING_DESC_F_NEXT | av)
    with pytest.raises(vs.RingError, match="INDIRECT in a list linked by NEXT"):
        dev.pop()
    _raw(mem, drv, 0, t, 16 * 5, 0, vs.VRING_DESC_F_INDIRECT | av)
    with pytest.raises(vs.RingError, match="longer than the queue size"):
        dev.pop()
    _raw(mem, drv, 0, t, 24, 0, vs.VRING_DESC_F_INDIRECT | av)
    with pytest.raises(vs.RingError, match="multiple of 16"):
        dev.pop()


def test_device_refuses_readable_after_writable_and_memory_outside_the_guest():
    mem, drv, dev = vp.make_packed(q=4, mem_size=1 << 16)
    a = mem.alloc(8)
    av = vp.avail_flags(1)
    _raw(mem, drv, 1, a, 8, 0, av)
    _raw(mem, drv, 0, a, 8, 0, vs.VRING_DESC_F_WRITE | vs.VRING_DESC_F_NEXT | av)
    with pytest.raises(vs.RingError, match="readable descriptor after a device-writable"):
        dev.pop()
    _raw(mem, drv, 0, (1 << 16) - 4, 8, 0, av)
    with pytest.raises(vs.RingError, match="outside guest memory"):
        dev.pop()
    assert dev.next_avail == 0 and dev.avail_wrap == 1       # nothing consumed


@pytest.mark.parametrize("n,indirect", [(5, True), (5, False), (9, None)])
def test_packed_chain_longer_than_the_queue_is_refused_for_good(n, indirect):
    mem, drv, _ = vp.make_packed(q=4)
    a = mem.alloc(8)
    with pytest.raises(vs.ChainTooLong, match="Queue Size"):
        drv.add(out=[(a, 8)] * n, indirect=indirect)
    assert drv.num_free == 4


def test_used_len_larger_than_the_buffer_is_a_ring_error():
    mem, drv, dev = vp.make_packed(q=4)
    a = mem.alloc(64)
    drv.add(in_=[(a, 64)], token="rx")
    ch = dev.pop()
    dev.push(ch, 64)
    struct.pack_into("<I", mem.buf, drv.base + 8, 4988)
    with pytest.raises(vs.RingError, match="len 4988"):
        drv.get_used()
    assert drv.num_free == 3                             # nothing reclaimed
    drv.add(in_=[(a, 64)])
    with pytest.raises(ValueError, match="writable bytes"):   # our device refuses to overstate, too
        dev.push(dev.pop(), 65)


def test_in_order_batch_one_used_descriptor_for_three_buffers():
    """VIRTIO_F_IN_ORDER: one used descriptor (id of the last buffer) for a batch; all are reclaimed."""
    mem, drv, dev = vp.make_packed(q=8, in_order=True)
    a = mem.alloc(64)
    sizes = [1, 3, 1]                                   # descriptors per buffer (direct chains)
    for i, k in enumerate(sizes):
        drv.add(in_=[(a, 8)] * k, token=f"b{i}", indirect=False)
    drv.add(in_=[(a, 8)], token="after")
    chains = [dev.pop() for _ in sizes]
    dev.push_batch(chains, written_last=5)
    assert dev.next_used == 5                            # skipped 1 + 3 + 1 slots
    got = [drv.get_used() for _ in sizes]
    assert got == [("b0", 8), ("b1", 24), ("b2", 5)]       # skipped buffers count as fully written
    assert drv.get_used() is None and drv.num_free == 7 and drv.last_used == 5
    dev.push(dev.pop(), 8)                               # the driver is still in step
    assert drv.get_used() == ("after", 8) and drv.num_free == 8


def test_in_order_device_refuses_out_of_order_use_and_batches_without_the_feature():
    mem, drv, dev = vp.make_packed(q=8, in_order=True)
    a = mem.alloc(8)
    drv.add(out=[(a, 8)]), drv.add(out=[(a, 8)])
    c1, c2 = dev.pop(), dev.pop()
    with pytest.raises(ValueError, match="in the order"):
        dev.push(c2, 0)
    with pytest.raises(ValueError, match="oldest popped"):
        dev.push_batch([c2], 0)
    mem, drv, dev = vp.make_packed(q=8)
    drv.add(out=[(a, 8)])
    with pytest.raises(ValueError, match="need VIRTIO_F_IN_ORDER"):
        dev.push_batch([dev.pop()], 0)


def test_driver_event_area_controls_interrupts():
    """Device-to-driver suppression: the device reads the driver area before interrupting."""
    mem, drv, dev = vp.make_packed(q=8)
    a = mem.alloc(8)

    def use_one():
        drv.add(out=[(a, 8)])
        dev.push(dev.pop(), 0)
        return dev.interrupt_needed()

    assert use_one() is True                             # default ENABLE
    drv.disable_interrupts()
    assert use_one() is False and use_one() is False     # the driver polls
    assert drv.get_used() and drv.get_used() and drv.get_used() and drv.get_used() is None
    assert drv.enable_interrupts() is False              # DESC at the next used descriptor; nothing pending
    assert use_one() is True
    drv.get_used()
    for _ in range(4):
        drv.add(out=[(a, 8)])
    assert drv.enable_interrupts_delayed() is False      # event at last_used + 4 * 3 // 4: the 4th descriptor
    fired = []
    for _ in range(4):
        dev.push(dev.pop(), 0)
        fired.append(dev.interrupt_needed())
    assert fired == [False, False, False, True]


def test_event_settings_are_validated():
    mem, drv, dev = vp.make_packed(q=8, event_idx=False)
    with pytest.raises(ValueError, match="EVENT_IDX"):
        dev.set_notifications(vp.RING_EVENT_FLAGS_DESC, at=1)
    with pytest.raises(ValueError, match="reserved"):
        drv.set_interrupts(3)
    with pytest.raises(ValueError, match="outside the ring"):
        vp.make_packed(q=8)[2].set_notifications(vp.RING_EVENT_FLAGS_DESC, at=8)
