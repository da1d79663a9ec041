"""The packed virtqueue (virtio 1.1+, VIRTIO_F_RING_PACKED = feature bit 34) over shared bytes.

One ring of Q descriptors {le64 addr, le32 len, le16 id, le16 flags} replaces the split queue's three
areas. Ownership is carried by two flag bits and two one-bit wrap counters that both start at 1
(VIRTIO 1.2 "Packed Virtqueues", oasis-tcs/virtio-spec packed-ring.tex):

    VIRTQ_DESC_F_AVAIL = 1 << 7, VIRTQ_DESC_F_USED = 1 << 15      (the spec's masks; Linux's header names
                                                                 the bit numbers 7 and 15 VRING_PACKED_DESC_F_*)
    driver makes a descriptor available:  AVAIL = avail_wrap,  USED = !avail_wrap
    device marks a buffer used:           AVAIL = USED = used_wrap

Each side flips its wrap counter whenever its position passes the end of the ring, so the same bit
pattern means "new" in one lap and "old" in the next: no index has to be shared. A chain occupies
consecutive descriptors (NEXT flag); the device writes one used descriptor per chain, carrying the
buffer id, and skips as many slots as the chain had descriptors. Also implemented:

- indirect descriptors (VIRTIO_F_INDIRECT_DESC): one ring descriptor with INDIRECT points at a table of
  descriptors in guest memory; in the table only WRITE is a valid flag;
- VIRTIO_F_IN_ORDER: the device may write one used descriptor for a batch of buffers (the id of the
  last one) and skip the whole batch; the driver reclaims every buffer up to that id;
- event suppression in both directions, two 4-byte areas {le16 desc_event_off:15 | desc_event_wrap:1,
  le16 flags} with flags ENABLE=0, DISABLE=1, DESC=2 (DESC only with VIRTIO_F_EVENT_IDX):
  the *device* area (written by the device) controls the driver's available-buffer notifications (kicks),
  the *driver* area (written by the driver) controls the device's used-buffer notifications (interrupts).
  The decision follows Linux virtqueue_kick_prepare_packed() and QEMU virtio_packed_should_notify().
"""
from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from vq_split import (CHAIN_RULE, GuestMemory, GuestMemoryError, RingError, VRING_DESC_F_INDIRECT,
                      VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, check_pieces, plan_buffer, read_chain, u16,
                      vring_need_event, with_next, write_chain)

# Linux include/uapi/linux/virtio_ring.h: "Notice: they are defined as shifts instead of shifted values."
VRING_PACKED_DESC_F_AVAIL = 7
VRING_PACKED_DESC_F_USED = 15
VRING_PACKED_EVENT_F_WRAP_CTR = 15
# the spec's names for the masks
VIRTQ_DESC_F_AVAIL = 1 << VRING_PACKED_DESC_F_AVAIL
VIRTQ_DESC_F_USED = 1 << VRING_PACKED_DESC_F_USED
# event suppression flags: the spec's RING_EVENT_FLAGS_*, Linux's VRING_PACKED_EVENT_FLAG_* (same values)
RING_EVENT_FLAGS_ENABLE = 0
RING_EVENT_FLAGS_DISABLE = 1
RING_EVENT_FLAGS_DESC = 2
VIRTIO_F_RING_PACKED = 34
VIRTIO_F_IN_ORDER = 35

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
    def driver_event(self) -> int:   # Driver Event Suppression: written by the driver, read by the device
        return 16 * self.q

    @property
    def device_event(self) -> int:   # Device Event Suppression: written by the device, read by the driver
        return 16 * self.q + 4

    @property
    def size(self) -> int:
        return 16 * self.q + 8


def avail_flags(wrap: int) -> int:
    return (VIRTQ_DESC_F_AVAIL if wrap else 0) | (0 if wrap else VIRTQ_DESC_F_USED)


def used_flags(wrap: int) -> int:
    return (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED) if wrap else 0


def is_avail(flags: int, wrap: int) -> bool:
    a = bool(flags & VIRTQ_DESC_F_AVAIL)
    u = bool(flags & VIRTQ_DESC_F_USED)
    return a == bool(wrap) and u != bool(wrap)


def is_used(flags: int, wrap: int) -> bool:
    a = bool(flags & VIRTQ_DESC_F_AVAIL)
    u = bool(flags & VIRTQ_DESC_F_USED)
    return a == u == bool(wrap)


def advance(pos: int, wrap: int, n: int, q: int) -> Tuple[int, int]:
    """Move a ring position forward by n slots, flipping the wrap counter at each lap."""
    pos += n
    while pos >= q:
        pos, wrap = pos - q, wrap ^ 1
    return pos, wrap


def off_wrap(pos: int, wrap: int) -> int:
    return pos | (wrap << VRING_PACKED_EVENT_F_WRAP_CTR)


def event_needed(off_wrap_: int, flags: int, new: int, wrap_at_new: int, count: int, q: int) -> bool:
    """Should the side that just moved its position by `count` descriptors, to `new` (whose wrap counter is
    `wrap_at_new`), notify the other side, given the other side's event suppression area?

    As Linux virtqueue_kick_prepare_packed(): DISABLE -> no, ENABLE -> yes, DESC -> vring_need_event() with
    the event offset moved back one lap when its wrap counter differs from ours. With a lap or more since
    the last decision the event position is ambiguous, so we notify (a spurious notification is allowed,
    a missed one is not).
    """
    if count == 0 or flags == RING_EVENT_FLAGS_DISABLE:
        return False
    if flags != RING_EVENT_FLAGS_DESC or count >= q:
        return True
    event, ev_wrap = off_wrap_ & 0x7FFF, off_wrap_ >> VRING_PACKED_EVENT_F_WRAP_CTR
    if ev_wrap != wrap_at_new:
        event -= q
    return vring_need_event(u16(event), new, u16(new - count))


def _check_event_setting(mode: int, at: int, q: int, event_idx: bool) -> None:
    if mode not in (RING_EVENT_FLAGS_ENABLE, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_DESC):
        raise ValueError(f"event flags {mode!r}: must be ENABLE (0), DISABLE (1) or DESC (2); 3 is reserved")
    if mode == RING_EVENT_FLAGS_DESC and not event_idx:
        raise ValueError("RING_EVENT_FLAGS_DESC is only valid if VIRTIO_F_EVENT_IDX has been negotiated")
    if not 0 <= at < q:
        raise ValueError(f"event offset {at} outside the ring of {q} descriptors")


@dataclass(eq=False)   # chains are compared by identity (two buffers can look alike)
class PackedChain:
    buffer_id: int
    ndesc: int                 # ring descriptors the buffer occupies (1 for an indirect buffer)
    readable: List[Tuple[int, int]] = field(default_factory=list)
    writable: List[Tuple[int, int]] = field(default_factory=list)
    indirect: bool = False

    @property
    def write_capacity(self) -> int:
        return sum(n for _, n in self.writable)


class PackedDriver:
    def __init__(self, mem: GuestMemory, base: int, q: int, event_idx: bool = True, indirect: bool = True,
                 in_order: bool = False):
        self.mem, self.base, self.q, self.L = mem, base, q, PackedLayout(q)
        self.event_idx, self.indirect_ok, self.in_order = event_idx, indirect, in_order
        self.next_avail = 0
        self.avail_wrap = 1
        self.last_used = 0
        self.used_wrap = 1
        self.num_free = q
        self.free_ids = list(range(q - 1, -1, -1))
        self.inflight = {}         # buffer id -> (token, ring descriptors, device-writable bytes)
        self.order = deque()       # ids in the order they were made available (IN_ORDER batches)
        self.pending = deque()     # the rest of an IN_ORDER batch already reclaimed, handed out one by one
        self.added_since_kick = 0
        self.kicks = 0
        self.event_flags = RING_EVENT_FLAGS_ENABLE   # shadow of the driver area's flags
        for i in range(q):
            PDESC.pack_into(mem.buf, base + 16 * i, 0, 0, 0, 0)
        EVT.pack_into(mem.buf, base + self.L.driver_event, 0, RING_EVENT_FLAGS_ENABLE)

    def add(self, out: Sequence[Tuple[int, int]] = (), in_: Sequence[Tuple[int, int]] = (), token=None,
            indirect: Optional[bool] = None) -> int:
        """Expose one buffer; returns its buffer id. indirect=None: a table for several pieces if negotiated.

        Raises ChainTooLong for more pieces than the ring has descriptors ("A driver MUST NOT create a
        descriptor list longer than the Queue Size", packed-ring.tex), DescriptorError for other forbidden
        buffers, RingFull when waiting for used buffers can help.
        """
        pieces = check_pieces(self.mem, out, in_, self.q)
        use_indirect, need = plan_buffer(pieces, indirect, self.indirect_ok, self.num_free, self.q)
        if use_indirect:   # the table: only WRITE is a valid flag there, the id is ignored
            table = self.mem.alloc(16 * len(pieces), 16)
            for j, (a, n, f) in enumerate(pieces):
                PDESC.pack_into(self.mem.buf, table + 16 * j, a, n, 0, f)
            descs = [(table, 16 * len(pieces), VRING_DESC_F_INDIRECT)]
        else:
            descs = with_next(pieces)
        bid = self.free_ids.pop()
        head_pos, head_flags = self.next_avail, None
        pos, wrap = self.next_avail, self.avail_wrap
        for j, (a, n, f) in enumerate(descs):
            flags = f | avail_flags(wrap)
            if j == 0:   # the head's flags are written last, so the device never sees half a chain
                head_flags = flags
                PDESC.pack_into(self.mem.buf, self.base + 16 * pos, a, n, bid, avail_flags(wrap ^ 1))
            else:
                PDESC.pack_into(self.mem.buf, self.base + 16 * pos, a, n, bid, flags)
            pos, wrap = advance(pos, wrap, 1, self.q)
        # (write barrier) then publish the head
        struct.pack_into("<H", self.mem.buf, self.base + 16 * head_pos + 14, head_flags)
        self.next_avail, self.avail_wrap = pos, wrap
        self.num_free -= need
        self.inflight[bid] = (token, need, sum(n for _, n, f in pieces if f & VRING_DESC_F_WRITE))
        if self.in_order:
            self.order.append(bid)
        self.added_since_kick += need
        return bid

    def kick_needed(self) -> bool:
        """Read the Device Event Suppression area (Linux virtqueue_kick_prepare_packed)."""
        added, self.added_since_kick = self.added_since_kick, 0
        area = EVT.unpack_from(self.mem.buf, self.base + self.L.device_event)
        need = event_needed(*area, self.next_avail, self.avail_wrap, added, self.q)
        self.kicks += need
        return need

    # --- used-buffer notifications: the driver writes the Driver Event Suppression area ----------
    def _write_driver_event(self, ow: int, flags: int) -> None:
        self.event_flags = flags
        EVT.pack_into(self.mem.buf, self.base + self.L.driver_event, ow, flags)

    def set_interrupts(self, mode: int, at: int = 0, wrap: Optional[int] = None) -> None:
        """Raw setter: ENABLE, DISABLE, or DESC ("interrupt me when descriptor `at` of lap `wrap` is used")."""
        _check_event_setting(mode, at, self.q, self.event_idx)
        self._write_driver_event(off_wrap(at, self.used_wrap if wrap is None else wrap), mode)

    def disable_interrupts(self) -> None:
        """Linux virtqueue_disable_cb_packed: the device need not interrupt (the driver polls)."""
        self._write_driver_event(0, RING_EVENT_FLAGS_DISABLE)

    def enable_interrupts(self) -> bool:
        """Linux virtqueue_enable_cb_prepare_packed: interrupt at the next used descriptor.

        Returns True when used buffers are already waiting: no interrupt will come for them, so poll again
        (the spec's "re-checking for more used buffers after notifications are re-enabled").
        """
        if self.event_idx:
            self._write_driver_event(off_wrap(self.last_used, self.used_wrap), RING_EVENT_FLAGS_DESC)
        else:
            self._write_driver_event(0, RING_EVENT_FLAGS_ENABLE)
        return self.has_used()

    def enable_interrupts_delayed(self, bufs: Optional[int] = None) -> bool:
        """Linux virtqueue_enable_cb_delayed_packed: interrupt only after `bufs` more descriptors are used
        (default 3/4 of those outstanding). Returns True when used buffers are already waiting."""
        if not self.event_idx:
            return self.enable_interrupts()
        if bufs is None:
            bufs = (self.q - self.num_free) * 3 // 4
        pos, wrap = advance(self.last_used, self.used_wrap, min(bufs, self.q - 1), self.q)
        self._write_driver_event(off_wrap(pos, wrap), RING_EVENT_FLAGS_DESC)
        return self.has_used()

    # --- reclaiming --------------------------------------------------------------------------------
    def has_used(self) -> bool:
        flags = PDESC.unpack_from(self.mem.buf, self.base + 16 * self.last_used)[3]
        return bool(self.pending) or is_used(flags, self.used_wrap)

    def get_used(self):
        """(token, written length) of the next used buffer, or None.

        With VIRTIO_F_IN_ORDER one used descriptor may stand for a batch: every buffer made available up to
        the one it names is used, the skipped ones "completely" (their whole writable size is reported).
        Raises RingError (and changes nothing) for an id not in flight or a len larger than the buffer.
        """
        if self.pending:
            return self.pending.popleft()
        _a, length, bid, flags = PDESC.unpack_from(self.mem.buf, self.base + 16 * self.last_used)
        if not is_used(flags, self.used_wrap):
            return None
        if bid not in self.inflight:
            raise RingError(f"device returned buffer id {bid}, which is not in flight")
        written = length if flags & VRING_DESC_F_WRITE else 0   # len is reserved without WRITE
        token, ndesc, writable = self.inflight[bid]
        if written > writable:
            raise RingError(f"device reported len {written} for buffer {bid}, which has only {writable} "
                            f"device-writable bytes")
        batch = [bid]
        if self.in_order:
            batch = [self.order[i] for i in range(self.order.index(bid) + 1)]
            for _ in batch:
                self.order.popleft()
        results = []
        for b in batch:
            token, ndesc, writable = self.inflight.pop(b)
            results.append((token, written if b == bid else writable))
            self.last_used, self.used_wrap = advance(self.last_used, self.used_wrap, ndesc, self.q)
            self.num_free += ndesc
            self.free_ids.append(b)
        if self.event_flags == RING_EVENT_FLAGS_DESC:   # as Linux virtqueue_get_buf_ctx_packed()
            EVT.pack_into(self.mem.buf, self.base + self.L.driver_event, off_wrap(self.last_used, self.used_wrap),
                          RING_EVENT_FLAGS_DESC)
        self.pending.extend(results[1:])
        return results[0]


class PackedDevice:
    def __init__(self, mem: GuestMemory, base: int, q: int, event_idx: bool = True, indirect: bool = True,
                 in_order: bool = False):
        self.mem, self.base, self.q, self.L = mem, base, q, PackedLayout(q)
        self.event_idx, self.indirect_ok, self.in_order = event_idx, indirect, in_order
        self.next_avail = 0
        self.avail_wrap = 1
        self.next_used = 0
        self.used_wrap = 1
        self.popped = deque()            # chains popped and not yet used, in ring order
        self.used_since_signal = 0
        self.interrupts = 0
        EVT.pack_into(mem.buf, base + self.L.device_event, 0, RING_EVENT_FLAGS_ENABLE)

    def _desc(self, pos: int):
        return PDESC.unpack_from(self.mem.buf, self.base + 16 * pos)

    def _piece(self, chain: PackedChain, a: int, n: int, writable: bool, where: str) -> None:
        try:
            self.mem.check(a, n, f"{where}'s buffer")
        except GuestMemoryError as e:
            raise RingError(str(e)) from None
        if writable:
            chain.writable.append((a, n))
        elif chain.writable:
            raise RingError("device-readable descriptor after a device-writable one: 'The driver MUST place any "
                            "device-writable descriptor elements after any device-readable descriptor elements'")
        else:
            chain.readable.append((a, n))

    def _indirect(self, chain: PackedChain, a: int, n: int) -> None:
        if not self.indirect_ok:
            raise RingError("VIRTQ_DESC_F_INDIRECT used but VIRTIO_F_INDIRECT_DESC was not negotiated")
        if n == 0 or n % 16:
            raise RingError(f"indirect table length {n} is not a positive multiple of 16")
        if n // 16 > self.q:
            raise RingError(f"indirect table of {n // 16} descriptors, longer than the queue size {self.q}: "
                            f"{CHAIN_RULE}")
        try:
            self.mem.check(a, n, "indirect table")
        except GuestMemoryError as e:
            raise RingError(str(e)) from None
        for j in range(n // 16):   # only WRITE is valid in the table; the other flags and the id are ignored
            ea, en, _id, ef = PDESC.unpack_from(self.mem.buf, a + 16 * j)
            self._piece(chain, ea, en, bool(ef & VRING_DESC_F_WRITE), f"indirect descriptor {j}")
        chain.indirect = True

    def pop(self) -> Optional[PackedChain]:
        """Take the next available buffer, or None. Raises RingError for anything the spec forbids."""
        pos, wrap = self.next_avail, self.avail_wrap
        a, n, bid, flags = self._desc(pos)
        if not is_avail(flags, wrap):
            return None
        chain = PackedChain(buffer_id=bid, ndesc=0)
        while True:
            chain.ndesc += 1
            if chain.ndesc > self.q:
                raise RingError(f"packed descriptor list longer than the queue size {self.q}: {CHAIN_RULE}")
            if flags & VRING_DESC_F_INDIRECT:
                if flags & VRING_DESC_F_NEXT or chain.ndesc > 1:
                    raise RingError("INDIRECT in a list linked by NEXT: 'A driver MUST NOT write direct descriptors "
                                    "with DESC_F_INDIRECT set in a scatter-gather list linked by VIRTQ_DESC_F_NEXT'")
                self._indirect(chain, a, n)
            else:
                self._piece(chain, a, n, bool(flags & VRING_DESC_F_WRITE), f"ring descriptor {pos}")
            chain.buffer_id = bid   # the id that counts is the one in the list's last descriptor
            pos, wrap = advance(pos, wrap, 1, self.q)
            if not flags & VRING_DESC_F_NEXT:
                break
            a, n, bid, flags = self._desc(pos)
            if not is_avail(flags, wrap):
                raise RingError("chain continues into a descriptor that is not available")
        self.next_avail, self.avail_wrap = pos, wrap
        self.popped.append(chain)
        return chain

    def read_out(self, chain: PackedChain) -> bytes:
        return read_chain(self.mem, chain)

    def write_in(self, chain: PackedChain, data: bytes) -> int:
        return write_chain(self.mem, chain, data)

    def _write_used(self, bid: int, written: int, ndesc: int) -> None:
        PDESC.pack_into(self.mem.buf, self.base + 16 * self.next_used, 0, written, bid,
                        used_flags(self.used_wrap) | (VRING_DESC_F_WRITE if written else 0))
        self.next_used, self.used_wrap = advance(self.next_used, self.used_wrap, ndesc, self.q)
        self.used_since_signal += ndesc

    def push(self, chain: PackedChain, written: int) -> None:
        """Mark one buffer used: one used descriptor at the device's position, then skip the chain's slots."""
        if chain not in self.popped:
            raise ValueError(f"buffer {chain.buffer_id} was not popped, or is already used")
        if self.in_order and chain is not self.popped[0]:
            raise ValueError("VIRTIO_F_IN_ORDER was negotiated: buffers must be used in the order they were "
                             "made available")
        if not 0 <= written <= chain.write_capacity:
            raise ValueError(f"written {written} outside 0..{chain.write_capacity} (the buffer's writable bytes)")
        self.popped.remove(chain)
        self._write_used(chain.buffer_id, written, chain.ndesc)

    def push_batch(self, chains: Sequence[PackedChain], written_last: int) -> None:
        """VIRTIO_F_IN_ORDER: one used descriptor (the last buffer's id) for a batch of buffers, then skip
        all of their slots ("In-order use of descriptors", packed-ring.tex). The others count as fully used."""
        if not self.in_order:
            raise ValueError("batched used descriptors need VIRTIO_F_IN_ORDER")
        chains = list(chains)
        if not chains or [id(c) for c in chains] != [id(c) for c in list(self.popped)[:len(chains)]]:
            raise ValueError("a batch must be the oldest popped buffers, in the order they were made available")
        last = chains[-1]
        if not 0 <= written_last <= last.write_capacity:
            raise ValueError(f"written {written_last} outside 0..{last.write_capacity}")
        for _ in chains:
            self.popped.popleft()
        self._write_used(last.buffer_id, written_last, sum(c.ndesc for c in chains))

    # --- available-buffer notifications: the device writes the Device Event Suppression area -------
    def set_notifications(self, mode: int, at: int = 0, wrap: Optional[int] = None) -> None:
        """Raw setter: ENABLE, DISABLE, or DESC (notify when descriptor `at` of lap `wrap` is made available)."""
        _check_event_setting(mode, at, self.q, self.event_idx)
        w = self.avail_wrap if wrap is None else wrap
        EVT.pack_into(self.mem.buf, self.base + self.L.device_event, off_wrap(at, w), mode)

    def disable_notifications(self) -> None:
        """The device polls the ring (a busy vhost/vDPA thread): no kicks please."""
        self.set_notifications(RING_EVENT_FLAGS_DISABLE)

    def enable_notifications(self) -> bool:
        """QEMU virtio_queue_packed_set_notification(enable): kick me for the next descriptor I have not seen.
        Returns True when a buffer is already available (no kick will come for it: pop again)."""
        if self.event_idx:
            self.set_notifications(RING_EVENT_FLAGS_DESC, self.next_avail, self.avail_wrap)
        else:
            self.set_notifications(RING_EVENT_FLAGS_ENABLE)
        return is_avail(self._desc(self.next_avail)[3], self.avail_wrap)

    def interrupt_needed(self) -> bool:
        """Read the Driver Event Suppression area: interrupt for the descriptors used since the last decision?"""
        count, self.used_since_signal = self.used_since_signal, 0
        area = EVT.unpack_from(self.mem.buf, self.base + self.L.driver_event)
        need = event_needed(*area, self.next_used, self.used_wrap, count, self.q)
        self.interrupts += need
        return need


def make_packed(q: int = 256, mem_size: int = 1 << 20, event_idx: bool = True, indirect: bool = True,
                in_order: bool = False):
    mem = GuestMemory(mem_size)
    base = mem.alloc(PackedLayout(q).size, 4096)
    return (mem, PackedDriver(mem, base, q, event_idx, indirect, in_order),
            PackedDevice(mem, base, q, event_idx, indirect, in_order))
