import struct

import pytest

import vq_packed as vp
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
    assert flags & vp.VRING_PACKED_DESC_F_AVAIL and not flags & vp.VRING_PACKED_DESC_F_USED  # wrap counter 1


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
    assert not f & vp.VRING_PACKED_DESC_F_AVAIL and f & vp.VRING_PACKED_DESC_F_USED
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
    bid1 = drv.add(out=[(a, 8), (b, 8)], in_=[(c, 16)], token="x")
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
    drv.add(out=[(a, 8)] * 3)
    with pytest.raises(RingFull):
        drv.add(out=[(a, 8)] * 2)
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
    bid = drv.add(out=[(a, 8)] * 3, token="wrap")   # slots 3, 0, 1; wraps in the middle
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
