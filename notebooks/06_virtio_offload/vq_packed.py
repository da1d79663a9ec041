"""The packed virtqueue (virtio 1.1+, VIRTIO_F_RING_PACKED = feature bit 34) over shared bytes.

One ring of Q descriptors {le64 addr, le32 len, le16 id, le16 flags} replaces the split queue's three
areas. Ownership is carried by two flag bits and two one-bit wrap counters that both start at 1:

    AVAIL = 1 << 7, USED = 1 << 15
    driver makes a descriptor available:  AVAIL = avail_wrap,  USED = !avail_wrap
    device marks a buffer used:           AVAIL = USED = used_wrap

Each side flips its wrap counter whenever its position passes the end of the ring, so the same bit
pattern means "new" in one lap and "old" in the next: no index has to be shared. A chain occupies
consecutive descriptors (NEXT flag); the device writes one used descriptor per chain, carrying the
buffer id, and skips as many slots as the chain had descriptors. Event suppression uses two 4-byte
areas {le16 desc_off_wrap, le16 flags} with flags ENABLE=0, DISABLE=1, DESC=2.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from vq_split import GuestMemory, RingError, RingFull, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, vring_need_event

VRING_PACKED_DESC_F_AVAIL = 1 << 7
VRING_PACKED_DESC_F_USED = 1 << 15
RING_EVENT_FLAGS_ENABLE = 0
RING_EVENT_FLAGS_DISABLE = 1
RING_EVENT_FLAGS_DESC = 2
VIRTIO_F_RING_PACKED = 34

PDESC = struct.Struct("<QIHH")   # addr, len, id, flags
EVT = struct.Struct("<HH")       # desc_off_wrap (bit 15 = wrap), flags


@dataclass(frozen=True)
class PackedLayout:
    q: int

    def __post_init__(self):
        if self.q < 1 or self.q > 32768:
            raise ValueError("packed queue size must be 1..32768 (it need not be a power of two)")

    def desc(self, i: int) -> int:
        return 16 * i

    @property
    def driver_event(self) -> int:   # written by the driver, read by the device
        return 16 * self.q

    @property
    def device_event(self) -> int:   # written by the device, read by the driver
        return 16 * self.q + 4

    @property
    def size(self) -> int:
        return 16 * self.q + 8


def avail_flags(wrap: int) -> int:
    return (VRING_PACKED_DESC_F_AVAIL if wrap else 0) | (0 if wrap else VRING_PACKED_DESC_F_USED)


def used_flags(wrap: int) -> int:
    return (VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED) if wrap else 0


def is_avail(flags: int, wrap: int) -> bool:
    a = bool(flags & VRING_PACKED_DESC_F_AVAIL)
    u = bool(flags & VRING_PACKED_DESC_F_USED)
    return a == bool(wrap) and u != bool(wrap)


def is_used(flags: int, wrap: int) -> bool:
    a = bool(flags & VRING_PACKED_DESC_F_AVAIL)
    u = bool(flags & VRING_PACKED_DESC_F_USED)
    return a == u == bool(wrap)


@dataclass
class PackedChain:
    buffer_id: int
    ndesc: int
    readable: List[Tuple[int, int]] = field(default_factory=list)
    writable: List[Tuple[int, int]] = field(default_factory=list)


class PackedDriver:
    def __init__(self, mem: GuestMemory, base: int, q: int):
        self.mem, self.base, self.q, self.L = mem, base, q, PackedLayout(q)
        self.next_avail = 0
        self.avail_wrap = 1
        self.last_used = 0
        self.used_wrap = 1
        self.num_free = q
        self.free_ids = list(range(q - 1, -1, -1))
        self.inflight = {}   # buffer id -> (token, ndesc)
        self.kicked_at = (0, 1)   # (position, wrap) at the last kick decision
        self.added_since_kick = 0
        self.kicks = 0
        for i in range(q):
            PDESC.pack_into(mem.buf, base + 16 * i, 0, 0, 0, 0)
        EVT.pack_into(mem.buf, base + self.L.driver_event, 0, RING_EVENT_FLAGS_ENABLE)

    def add(self, out: Sequence[Tuple[int, int]] = (), in_: Sequence[Tuple[int, int]] = (), token=None) -> int:
        pieces = [(a, n, 0) for a, n in out] + [(a, n, VRING_DESC_F_WRITE) for a, n in in_]
        if not pieces:
            raise ValueError("a buffer needs at least one piece")
        if len(pieces) > self.num_free:
            raise RingFull(f"{len(pieces)} descriptor(s) needed, {self.num_free} free of {self.q}")
        bid = self.free_ids.pop()
        head_pos, head_flags = self.next_avail, None
        pos, wrap = self.next_avail, self.avail_wrap
        for j, (a, n, f) in enumerate(pieces):
            flags = f | (VRING_DESC_F_NEXT if j < len(pieces) - 1 else 0) | avail_flags(wrap)
            if j == 0:
                head_flags = flags   # the head's flags are written last, so the device sees a whole chain
                PDESC.pack_into(self.mem.buf, self.base + 16 * pos, a, n, bid, 0 if wrap else VRING_PACKED_DESC_F_AVAIL)
            else:
                PDESC.pack_into(self.mem.buf, self.base + 16 * pos, a, n, bid, flags)
            pos += 1
            if pos == self.q:
                pos, wrap = 0, wrap ^ 1
        # (write barrier) then publish the head
        struct.pack_into("<H", self.mem.buf, self.base + 16 * head_pos + 14, head_flags)
        self.next_avail, self.avail_wrap = pos, wrap
        self.num_free -= len(pieces)
        self.inflight[bid] = (token, len(pieces))
        self.added_since_kick += len(pieces)
        return bid

    def kick_needed(self) -> bool:
        """Read the device's event suppression area (Linux virtqueue_kick_prepare_packed)."""
        off_wrap, flags = EVT.unpack_from(self.mem.buf, self.base + self.L.device_event)
        added, self.added_since_kick = self.added_since_kick, 0
        new = self.next_avail
        old = (new - added) % (1 << 16)
        if flags == RING_EVENT_FLAGS_DESC:
            event_idx, ev_wrap = off_wrap & 0x7FFF, off_wrap >> 15
            if ev_wrap != self.avail_wrap:
                event_idx -= self.q
            need = vring_need_event(event_idx & 0xFFFF, new, old) if added else False
        else:
            need = bool(added) and flags != RING_EVENT_FLAGS_DISABLE
        self.kicks += need
        return need

    def get_used(self):
        raw = self.base + 16 * self.last_used
        _a, length, bid, flags = PDESC.unpack_from(self.mem.buf, raw)
        if not is_used(flags, self.used_wrap):
            return None
        if bid not in self.inflight:
            raise RingError(f"device returned buffer id {bid}, which is not in flight")
        token, ndesc = self.inflight.pop(bid)
        self.last_used += ndesc
        if self.last_used >= self.q:
            self.last_used -= self.q
            self.used_wrap ^= 1
        self.num_free += ndesc
        self.free_ids.append(bid)
        return token, length


class PackedDevice:
    def __init__(self, mem: GuestMemory, base: int, q: int):
        self.mem, self.base, self.q, self.L = mem, base, q, PackedLayout(q)
        self.next_avail = 0
        self.avail_wrap = 1
        self.next_used = 0
        self.used_wrap = 1
        EVT.pack_into(mem.buf, base + self.L.device_event, 0, RING_EVENT_FLAGS_ENABLE)

    def pop(self) -> Optional[PackedChain]:
        pos, wrap = self.next_avail, self.avail_wrap
        a, n, bid, flags = PDESC.unpack_from(self.mem.buf, self.base + 16 * pos)
        if not is_avail(flags, wrap):
            return None
        chain = PackedChain(buffer_id=bid, ndesc=0)
        while True:
            chain.ndesc += 1
            if chain.ndesc > self.q:
                raise RingError("packed chain longer than the ring")
            (chain.writable if flags & VRING_DESC_F_WRITE else chain.readable).append((a, n))
            chain.buffer_id = bid   # the id that counts is the one in the chain's last descriptor
            pos += 1
            if pos == self.q:
                pos, wrap = 0, wrap ^ 1
            if not flags & VRING_DESC_F_NEXT:
                break
            a, n, bid, flags = PDESC.unpack_from(self.mem.buf, self.base + 16 * pos)
            if not is_avail(flags, wrap):
                raise RingError("chain continues into a descriptor that is not available")
        self.next_avail, self.avail_wrap = pos, wrap
        return chain

    def push(self, chain: PackedChain, written: int) -> None:
        pos = self.next_used
        PDESC.pack_into(self.mem.buf, self.base + 16 * pos, 0, written, chain.buffer_id,
                        used_flags(self.used_wrap) | (VRING_DESC_F_WRITE if written else 0))
        pos += chain.ndesc
        if pos >= self.q:
            pos -= self.q
            self.used_wrap ^= 1
        self.next_used = pos

    def set_notifications(self, mode: int, at: int = 0, wrap: Optional[int] = None) -> None:
        """Driver-notification suppression: ENABLE, DISABLE, or DESC (notify when `at` is reached)."""
        w = self.avail_wrap if wrap is None else wrap
        EVT.pack_into(self.mem.buf, self.base + self.L.device_event, (at & 0x7FFF) | (w << 15), mode)


def make_packed(q: int = 256, mem_size: int = 1 << 20):
    mem = GuestMemory(mem_size)
    base = mem.alloc(PackedLayout(q).size, 4096)
    return mem, PackedDriver(mem, base, q), PackedDevice(mem, base, q)
