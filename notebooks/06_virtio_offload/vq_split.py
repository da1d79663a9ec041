"""The split virtqueue (virtio 1.x, section 2.7) in its exact binary layout over one shared buffer.

Nothing here keeps ring state in Python objects that the other side could peek at: the driver (guest)
and the device (host, vhost, or a vDPA NIC) share only the bytes of a `GuestMemory`, exactly as the
real thing shares only guest RAM. Each side keeps its own private counters (the driver's free list and
shadow indices, the device's `last_avail_idx`), as Linux's virtio_ring.c and vhost do.

Layout for a queue of size Q (a power of two, at most 32768), all fields little-endian:

    descriptor table  Q x 16 bytes   {le64 addr, le32 len, le16 flags, le16 next}   (16-byte aligned)
    available ring    6 + 2Q bytes   {le16 flags, le16 idx, le16 ring[Q], le16 used_event}   (2-aligned)
    used ring         6 + 8Q bytes   {le16 flags, le16 idx, {le32 id, le32 len} ring[Q], le16 avail_event}
                                      (4-aligned in virtio 1.x; legacy devices put it on a 4096 boundary)

The indices `avail.idx` and `used.idx` are free-running 16-bit counters: they are never reduced modulo Q
when stored, only when used to address a slot, and they wrap from 65535 to 0.

Rules enforced here, quoted from the VIRTIO 1.2 spec (oasis-tcs/virtio-spec split-ring.tex), each refused with
an error that names the rule:
- 2.7.5.3.1 "A driver MUST NOT create a descriptor chain longer than the Queue Size of the device", indirect
  tables included -> ChainTooLong. (Older Linux enforced this in virtqueue_add() with
  BUG_ON(total_sg > vq->vring.num); today's virtqueue_add_split() only has
  WARN_ON_ONCE(total_sg > vq->split.vring.num && !vq->indirect), so it lets an indirect table exceed the ring.
  We follow the spec.)
- 2.7.5.3.1 no VIRTQ_DESC_F_INDIRECT within an indirect table, not INDIRECT together with NEXT -> RingError;
- 2.7.4.2 device-writable elements after all device-readable ones (vhost: "Descriptor has out after in");
- 2.7.5.2 a chain holds at most 2^32 bytes in total; le32 `len` and le64 `addr` must fit their fields;
- 2.7.8.2 the device writes at least `len` bytes into the writable part, so a used `len` larger than the buffer
  the driver posted is a broken ring (RingError), never bytes from neighbouring memory.

VIRTIO_F_IN_ORDER (2.7.5, 2.7.9; `in_order=True`): the driver uses descriptors in ring order (next = x + 1,
wrapping to 0), and the device may write a single used entry for a batch of buffers, with the head id of the
last one, moving used.idx by the batch size; the driver reclaims the whole batch.
"""
from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

# descriptor flags
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
# ring flags (used when EVENT_IDX is not negotiated)
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1
# feature bits
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29
VIRTIO_F_IN_ORDER = 35

DESC = struct.Struct("<QIHH")     # addr, len, flags, next: 16 bytes
U16 = struct.Struct("<H")
USED_ELEM = struct.Struct("<II")  # id, len: 8 bytes


class RingFull(Exception):
    """Fewer descriptors are free than the buffer needs right now: wait for used buffers, then retry."""


class RingError(Exception):
    """The ring's contents violate the spec (a loop in a chain, an index jump larger than Q, ...)."""


class DescriptorError(ValueError):
    """The driver was asked for a buffer the spec forbids: waiting can never make it valid."""


class ChainTooLong(DescriptorError):
    """More pieces than the queue has entries (2.7.5.3.1), whether direct or through an indirect table."""


class GuestMemoryError(ValueError):
    """An access to guest memory outside the memory that exists."""


CHAIN_RULE = ('"A driver MUST NOT create a descriptor chain longer than the Queue Size of the device" '
              '(VIRTIO 1.2 2.7.5.3.1; the same for packed rings and for indirect tables)')


def check_pieces(mem: "GuestMemory", out: Sequence, in_: Sequence, q: int) -> list:
    """Validate a buffer the driver is asked to expose; returns [(addr, len, WRITE-or-0), ...].

    Everything refused here is refused for good (DescriptorError), never as RingFull.
    """
    pieces = [(a, n, 0) for a, n in out] + [(a, n, VRING_DESC_F_WRITE) for a, n in in_]
    if not pieces:
        raise DescriptorError("a buffer needs at least one piece")
    if len(pieces) > q:
        raise ChainTooLong(f"a buffer of {len(pieces)} pieces needs a chain of {len(pieces)} descriptors, longer "
                           f"than the queue size {q}: {CHAIN_RULE}. Waiting cannot help; use fewer, larger pieces.")
    for a, n, _ in pieces:
        if not (isinstance(a, int) and isinstance(n, int)):
            raise DescriptorError(f"piece ({a!r}, {n!r}): addr and len must be integers")
        if not 0 <= n <= 0xFFFFFFFF:
            raise DescriptorError(f"piece len {n} does not fit the descriptor's le32 len (0..2^32-1)")
        if not 0 <= a <= 0xFFFFFFFFFFFFFFFF:
            raise DescriptorError(f"piece addr {a} does not fit the descriptor's le64 addr")
    total = sum(n for _, n, _ in pieces)
    if total > 1 << 32:
        raise DescriptorError(f"chain of {total} bytes: 'Drivers MUST NOT add a descriptor chain longer than 2^32 "
                              f"bytes in total' (VIRTIO 1.2 2.7.5.2)")
    for a, n, _ in pieces:
        mem.check(a, n, "piece")
    return pieces


def u16(x: int) -> int:
    return x & 0xFFFF


def vring_need_event(event_idx: int, new_idx: int, old: int) -> bool:
    """The EVENT_IDX rule (virtio spec 2.7.10, Linux include/uapi/linux/virtio_ring.h).

    The other side asked to be told once index `event_idx` has been passed. We moved our index from
    `old` to `new_idx`; notify iff event_idx lies in [old, new_idx), all arithmetic in 16 bits:
        (u16)(new_idx - event_idx - 1) < (u16)(new_idx - old)
    """
    return u16(new_idx - event_idx - 1) < u16(new_idx - old)


def align_up(x: int, a: int) -> int:
    return (x + a - 1) & ~(a - 1)


@dataclass(frozen=True)
class SplitLayout:
    """Byte offsets of every part of a split virtqueue of size `q`, relative to its base address."""
    q: int
    used_align: int = 4   # 4 for virtio 1.x; 4096 reproduces the legacy (virtio 0.9.5) layout

    def __post_init__(self):
        if self.q < 1 or self.q > 32768 or self.q & (self.q - 1):
            raise ValueError(f"queue size {self.q} must be a power of two between 1 and 32768")
        a = self.used_align
        if not isinstance(a, int) or a < 4 or a & (a - 1):
            raise ValueError(f"used_align {a!r} must be a power of two >= 4: the used ring is 4-aligned "
                             f"(VIRTIO 1.2 2.7, VRING_USED_ALIGN_SIZE), legacy layouts use 4096")

    # descriptor table
    @property
    def desc(self) -> int:
        return 0

    def desc_entry(self, i: int) -> int:
        return 16 * i

    # available ring
    @property
    def avail(self) -> int:
        return 16 * self.q

    @property
    def avail_flags(self) -> int:
        return self.avail

    @property
    def avail_idx(self) -> int:
        return self.avail + 2

    def avail_ring(self, slot: int) -> int:
        return self.avail + 4 + 2 * slot

    @property
    def used_event(self) -> int:
        return self.avail + 4 + 2 * self.q

    # used ring
    @property
    def used(self) -> int:
        return align_up(self.avail + 6 + 2 * self.q, self.used_align)

    @property
    def used_flags(self) -> int:
        return self.used

    @property
    def used_idx(self) -> int:
        return self.used + 2

    def used_ring(self, slot: int) -> int:
        return self.used + 4 + 8 * slot

    @property
    def avail_event(self) -> int:
        return self.used + 4 + 8 * self.q

    @property
    def size(self) -> int:
        return self.avail_event + 2

    def table(self) -> list:
        """(part, offset, bytes) rows, for printing."""
        return [("descriptor table", self.desc, 16 * self.q),
                ("avail.flags", self.avail_flags, 2), ("avail.idx", self.avail_idx, 2),
                ("avail.ring[Q]", self.avail_ring(0), 2 * self.q), ("avail.used_event", self.used_event, 2),
                ("padding", self.used_event + 2, self.used - self.used_event - 2),
                ("used.flags", self.used_flags, 2), ("used.idx", self.used_idx, 2),
                ("used.ring[Q]", self.used_ring(0), 8 * self.q), ("used.avail_event", self.avail_event, 2)]


class GuestMemory:
    """A flat byte array standing in for guest RAM, with a bump allocator. Addresses are offsets."""

    def __init__(self, size: int):
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self._top = 64  # keep address 0 unused, so a zero address is visibly wrong

    def alloc(self, size: int, align: int = 16) -> int:
        addr = align_up(self._top, align)
        if addr + size > len(self.buf):
            raise MemoryError(f"guest memory exhausted ({len(self.buf)} bytes)")
        self._top = addr + size
        return addr

    def check(self, addr: int, n: int, what: str = "access") -> None:
        """Raise GuestMemoryError unless [addr, addr + n) lies inside guest memory."""
        if addr < 0 or n < 0 or addr + n > len(self.buf):
            raise GuestMemoryError(f"{what} [{addr:#x}, {addr + n:#x}) ({n} bytes) is outside guest memory "
                                   f"[0, {len(self.buf):#x})")

    def write(self, addr: int, data: bytes) -> None:
        self.check(addr, len(data), "write")
        self.view[addr:addr + len(data)] = data

    def read(self, addr: int, n: int) -> bytes:
        self.check(addr, n, "read")
        return bytes(self.view[addr:addr + n])

    def u16(self, addr: int) -> int:
        return U16.unpack_from(self.buf, addr)[0]

    def set_u16(self, addr: int, v: int) -> None:
        U16.pack_into(self.buf, addr, v & 0xFFFF)


@dataclass
class Chain:
    """What the device sees after popping one available entry."""
    head: int
    readable: List[Tuple[int, int]] = field(default_factory=list)   # (addr, len) the device reads
    writable: List[Tuple[int, int]] = field(default_factory=list)   # (addr, len) the device writes
    indirect: bool = False
    ndesc: int = 0

    @property
    def write_capacity(self) -> int:
        return sum(n for _, n in self.writable)


def _absolute_offsets(obj, base: int, L: SplitLayout) -> None:
    """Cache the absolute address of every ring field (the layout arithmetic is done once)."""
    obj.a_avail_flags, obj.a_avail_idx = base + L.avail_flags, base + L.avail_idx
    obj.a_avail_ring, obj.a_used_event = base + L.avail_ring(0), base + L.used_event
    obj.a_used_flags, obj.a_used_idx = base + L.used_flags, base + L.used_idx
    obj.a_used_ring, obj.a_avail_event = base + L.used_ring(0), base + L.avail_event


def plan_buffer(pieces: list, indirect: Optional[bool], indirect_ok: bool, num_free: int, q: int):
    """(use an indirect table?, ring descriptors needed) for a checked buffer, or RingFull / DescriptorError.

    indirect=None is Linux's virtqueue_use_indirect(): a table when VIRTIO_F_INDIRECT_DESC was negotiated,
    the buffer has more than one piece and a descriptor is free.
    """
    if indirect and not indirect_ok:
        raise DescriptorError("indirect=True, but VIRTIO_F_INDIRECT_DESC was not negotiated: 'The driver MUST NOT "
                              "set the VIRTQ_DESC_F_INDIRECT flag unless the VIRTIO_F_INDIRECT_DESC feature was "
                              "negotiated' (VIRTIO 1.2 2.7.5.3.1)")
    use = (indirect_ok and len(pieces) > 1 and num_free > 0) if indirect is None else bool(indirect)
    need = 1 if use else len(pieces)
    if need > num_free:
        raise RingFull(f"{need} descriptor(s) needed, {num_free} free of {q}")
    return use, need


def with_next(pieces: list) -> list:
    """A direct chain: VIRTQ_DESC_F_NEXT on every descriptor but the last."""
    last = len(pieces) - 1
    return [(a, n, f | (VRING_DESC_F_NEXT if j < last else 0)) for j, (a, n, f) in enumerate(pieces)]


def read_chain(mem: GuestMemory, chain) -> bytes:
    """The chain's device-readable bytes (GuestMemoryError if a piece lies outside guest memory)."""
    return b"".join(mem.read(a, n) for a, n in chain.readable)


def write_chain(mem: GuestMemory, chain, data: bytes) -> int:
    """Scatter `data` over the chain's writable pieces; returns bytes written (at most write_capacity).
    Every piece is checked before the first byte is written, so a bad chain writes nothing."""
    for a, n in chain.writable:
        mem.check(a, n, "writable piece")
    off = 0
    for a, n in chain.writable:
        if off >= len(data):
            break
        k = min(n, len(data) - off)
        mem.write(a, data[off:off + k])
        off += k
    return off


class SplitDriver:
    """The driver (guest) side: add buffers, decide whether to kick, reclaim used buffers."""

    def __init__(self, mem: GuestMemory, base: int, q: int, event_idx: bool = True,
                 indirect: bool = True, start_index: int = 0, in_order: bool = False):
        self.mem, self.base, self.L = mem, base, SplitLayout(q)
        self.q = q
        _absolute_offsets(self, base, self.L)
        self.event_idx = event_idx
        self.indirect_ok = indirect             # VIRTIO_F_INDIRECT_DESC negotiated
        self.in_order = in_order                # VIRTIO_F_IN_ORDER negotiated
        self.next_desc = 0                      # IN_ORDER: descriptors are used in ring order from here
        self.order = deque()                    # IN_ORDER: heads in the order they were made available
        self.pending = deque()                  # IN_ORDER: rest of a reclaimed batch, handed out one by one
        # free list threaded through desc.next, as in Linux
        for i in range(q):
            self._write_desc(i, 0, 0, 0, (i + 1) % q)
        self.free_head = 0
        self.num_free = q
        self.avail_idx = u16(start_index)       # shadow of avail.idx
        self.last_used_idx = u16(start_index)   # next used entry to reclaim
        self.kicked_at = u16(start_index)       # avail idx at the previous kick decision
        self.tokens = {}                        # head -> (token, ndesc, indirect table address, writable bytes)
        mem.set_u16(self.a_avail_flags, 0)
        mem.set_u16(self.a_avail_idx, self.avail_idx)
        mem.set_u16(self.a_used_event, self.last_used_idx)
        self.kicks = 0

    # --- raw descriptor access -------------------------------------------------------------------
    def _write_desc(self, i, addr, length, flags, nxt, table=None):
        DESC.pack_into(self.mem.buf, (table if table is not None else self.base) + 16 * i,
                       addr, length, flags, nxt)

    def _read_desc(self, i, table=None):
        return DESC.unpack_from(self.mem.buf, (table if table is not None else self.base) + 16 * i)

    # --- adding buffers --------------------------------------------------------------------------
    def add(self, out: Sequence[Tuple[int, int]] = (), in_: Sequence[Tuple[int, int]] = (),
            token=None, indirect: Optional[bool] = None) -> int:
        """Expose one buffer made of device-readable `out` then device-writable `in_` pieces.

        Returns the head descriptor index. indirect=None follows Linux's virtqueue_use_indirect(): an
        indirect table whenever VIRTIO_F_INDIRECT_DESC was negotiated, the buffer has more than one piece
        and a descriptor is free; True asks for a table (error if not negotiated), False for a direct chain.
        With a table, the pieces go into guest memory and the ring spends one descriptor on it. (The demo
        allocator never frees indirect tables; fine for the notebook, not for millions of indirect buffers.)

        Raises ChainTooLong (a DescriptorError) for more pieces than the queue size, direct or indirect
        (2.7.5.3.1), DescriptorError for other buffers the spec forbids, and RingFull only when waiting
        for used buffers can help.
        """
        pieces = check_pieces(self.mem, out, in_, self.q)
        use_indirect, need = plan_buffer(pieces, indirect, self.indirect_ok, self.num_free, self.q)
        head = self.next_desc if self.in_order else self.free_head
        table_addr = None
        if use_indirect:
            table_addr = self.mem.alloc(16 * len(pieces), 16)
            for j, (a, n, f) in enumerate(pieces):
                last = j == len(pieces) - 1
                self._write_desc(j, a, n, f | (0 if last else VRING_DESC_F_NEXT), 0 if last else j + 1,
                                 table=table_addr)
            descs = [(table_addr, 16 * len(pieces), VRING_DESC_F_INDIRECT)]
        else:
            descs = with_next(pieces)
        i = head
        for a, n, f in descs:
            # the free list's link (Linux), or the next slot in ring order (IN_ORDER: next = x + 1, then 0)
            nxt = (i + 1) % self.q if self.in_order else self._read_desc(i)[3]
            self._write_desc(i, a, n, f, nxt)
            i = nxt
        if self.in_order:
            self.next_desc = i
            self.order.append(head)
        else:
            self.free_head = i
        self.num_free -= need
        writable = sum(n for _, n, f in pieces if f & VRING_DESC_F_WRITE)
        self.tokens[head] = (token, need, table_addr, writable)
        # publish: ring entry first, then (after a write barrier in real code) the index
        self.mem.set_u16(self.a_avail_ring + 2 * (self.avail_idx % self.q), head)
        self.avail_idx = u16(self.avail_idx + 1)
        self.mem.set_u16(self.a_avail_idx, self.avail_idx)
        return head

    def kick_needed(self) -> bool:
        """Decide whether to notify the device about everything added since the last decision."""
        new, old = self.avail_idx, self.kicked_at
        self.kicked_at = new
        if self.event_idx:
            need = vring_need_event(self.mem.u16(self.a_avail_event), new, old)
        else:
            need = new != old and not (self.mem.u16(self.a_used_flags) & VRING_USED_F_NO_NOTIFY)
        self.kicks += need
        return need

    # --- reclaiming ------------------------------------------------------------------------------
    def has_used(self) -> bool:
        return bool(self.pending) or self.last_used_idx != self.mem.u16(self.a_used_idx)

    def get_used(self):
        """(token, written length) of the next used buffer, or None. Frees its descriptors.

        Raises RingError (and changes nothing) when the device broke the ring: used.idx more than Q ahead,
        an id that is not in flight, or a `len` larger than the writable bytes of that buffer. With
        VIRTIO_F_IN_ORDER one used entry may stand for a batch (see get_used_in_order).
        """
        if self.in_order:
            return self.get_used_in_order()
        used_idx = self.mem.u16(self.a_used_idx)
        if self.last_used_idx == used_idx:
            return None
        if u16(used_idx - self.last_used_idx) > self.q:
            raise RingError(f"device moved used.idx {u16(used_idx - self.last_used_idx)} entries ahead of Q={self.q}")
        head, length = USED_ELEM.unpack_from(self.mem.buf, self.a_used_ring + 8 * (self.last_used_idx % self.q))
        if head not in self.tokens:
            raise RingError(f"device returned id {head}, which is not in flight")
        token, ndesc, _table, writable = self.tokens[head]
        if length > writable:
            raise RingError(f"device reported len {length} for buffer {head}, which has only {writable} "
                            f"device-writable bytes (VIRTIO 1.2 2.7.8.2: the device writes at least len bytes "
                            f"into the writable part); refusing to read past the buffer")
        del self.tokens[head]
        # walk to the chain's tail and splice the chain onto the free list
        i = head
        for _ in range(ndesc - 1):
            i = self._read_desc(i)[3]
        a, n, f, _ = self._read_desc(i)
        self._write_desc(i, a, n, f, self.free_head)
        self.free_head = head
        self.num_free += ndesc
        self.last_used_idx = u16(self.last_used_idx + 1)
        if self.event_idx:   # "interrupt me when the next one is used" (virtqueue_enable_cb)
            self.mem.set_u16(self.a_used_event, self.last_used_idx)
        return token, length

    def get_used_in_order(self):
        """IN_ORDER: the used entry at last_used_idx names the head of the *last* buffer of a batch; every
        buffer made available up to it is used (the skipped ones completely, so their whole writable size
        is reported), and the device moved used.idx by the batch size (VIRTIO 1.2 2.7.9)."""
        if self.pending:
            return self.pending.popleft()
        moved = u16(self.mem.u16(self.a_used_idx) - self.last_used_idx)
        if moved == 0:
            return None
        if moved > self.q:
            raise RingError(f"device moved used.idx {moved} entries ahead of Q={self.q}")
        head, length = USED_ELEM.unpack_from(self.mem.buf, self.a_used_ring + 8 * (self.last_used_idx % self.q))
        if head not in self.tokens or head not in self.order:
            raise RingError(f"device returned id {head}, which is not in flight")
        k = self.order.index(head) + 1
        if k > moved:
            raise RingError(f"used entry names the {k}th buffer in flight, but used.idx moved only {moved}")
        writable = self.tokens[head][3]
        if length > writable:
            raise RingError(f"device reported len {length} for buffer {head}, which has only {writable} "
                            f"device-writable bytes (VIRTIO 1.2 2.7.8.2)")
        results = []
        for _ in range(k):
            h = self.order.popleft()
            token, ndesc, _table, w = self.tokens.pop(h)
            results.append((token, length if h == head else w))
            self.num_free += ndesc
        self.last_used_idx = u16(self.last_used_idx + k)
        if self.event_idx:
            self.mem.set_u16(self.a_used_event, self.last_used_idx)
        self.pending.extend(results[1:])
        return results[0]

    def set_used_event(self, idx: int) -> None:
        """Ask for the next interrupt only once used.idx passes `idx` (virtqueue_enable_cb_delayed)."""
        self.mem.set_u16(self.a_used_event, idx)


class SplitDevice:
    """The device side: pop available chains, read/write their buffers, push used entries."""

    def __init__(self, mem: GuestMemory, base: int, q: int, event_idx: bool = True, start_index: int = 0,
                 indirect: bool = True, in_order: bool = False):
        self.mem, self.base, self.L, self.q = mem, base, SplitLayout(q), q
        _absolute_offsets(self, base, self.L)
        self.event_idx = event_idx
        self.indirect_ok = indirect
        self.in_order = in_order
        self.popped = deque()             # heads popped and not yet used, in ring order
        self.last_avail_idx = u16(start_index)
        self.used_idx = u16(start_index)
        self.signalled_at = u16(start_index)
        mem.set_u16(self.a_used_flags, 0)
        mem.set_u16(self.a_used_idx, self.used_idx)
        mem.set_u16(self.a_avail_event, self.last_avail_idx)
        self.interrupts = 0

    def avail_count(self) -> int:
        n = u16(self.mem.u16(self.a_avail_idx) - self.last_avail_idx)
        if n > self.q:
            raise RingError(f"driver moved avail.idx {n} entries ahead of Q={self.q}")
        return n

    def _desc(self, table: int, i: int, where: str):
        try:
            self.mem.check(table + 16 * i, 16, f"{where} descriptor {i}")
        except GuestMemoryError as e:
            raise RingError(str(e)) from None
        return DESC.unpack_from(self.mem.buf, table + 16 * i)

    def pop(self) -> Optional[Chain]:
        """Take the next available chain, or None when the ring is empty.

        Walks zero or more direct descriptors, optionally followed by one INDIRECT descriptor (which the
        device MUST handle, 2.7.5.3.2), and raises RingError for anything the spec forbids.
        """
        if self.avail_count() == 0:
            return None
        head = U16.unpack_from(self.mem.buf, self.a_avail_ring + 2 * (self.last_avail_idx % self.q))[0]
        if head >= self.q:
            raise RingError(f"avail ring names descriptor {head} >= Q={self.q}")
        chain = Chain(head=head)
        table, limit, i, where = self.base, self.q, head, "ring"
        seen_write = False
        while True:
            a, n, f, nxt = self._desc(table, i, where)
            chain.ndesc += 1
            if chain.ndesc > self.q:
                raise RingError(f"descriptor chain loops or is longer than the queue size {self.q}: {CHAIN_RULE}")
            if f & VRING_DESC_F_INDIRECT:
                if chain.indirect:
                    raise RingError("VIRTQ_DESC_F_INDIRECT inside an indirect table: 'The driver MUST NOT set the "
                                    "VIRTQ_DESC_F_INDIRECT flag within an indirect descriptor' (VIRTIO 1.2 2.7.5.3.1)")
                if not self.indirect_ok:
                    raise RingError("VIRTQ_DESC_F_INDIRECT used but VIRTIO_F_INDIRECT_DESC was not negotiated")
                if f & VRING_DESC_F_NEXT:
                    raise RingError("descriptor has both INDIRECT and NEXT: 'A driver MUST NOT set both "
                                    "VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT in flags' (VIRTIO 1.2 2.7.5.3.1)")
                if n % 16 or n == 0:
                    raise RingError(f"indirect table length {n} is not a positive multiple of 16")
                try:
                    self.mem.check(a, n, "indirect table")
                except GuestMemoryError as e:
                    raise RingError(str(e)) from None
                chain.ndesc -= 1          # the table's descriptor carries no data
                chain.indirect = True
                table, limit, i, where = a, n // 16, 0, "indirect"
                continue
            try:
                self.mem.check(a, n, f"{where} descriptor {i}'s buffer")
            except GuestMemoryError as e:
                raise RingError(str(e)) from None
            if f & VRING_DESC_F_WRITE:
                seen_write = True
                chain.writable.append((a, n))
            elif seen_write:
                raise RingError("device-readable descriptor after a device-writable one: 'The driver MUST place "
                                "any device-writable descriptor elements after any device-readable descriptor "
                                "elements' (VIRTIO 1.2 2.7.4.2; vhost: 'Descriptor has out after in')")
            else:
                chain.readable.append((a, n))
            if not f & VRING_DESC_F_NEXT:
                break
            i = nxt
            if i >= limit:
                raise RingError(f"next={i} outside a table of {limit}")
        self.last_avail_idx = u16(self.last_avail_idx + 1)
        self.popped.append(head)
        if self.event_idx:   # "kick me when you add past this one"
            self.mem.set_u16(self.a_avail_event, self.last_avail_idx)
        return chain

    def read_out(self, chain: Chain) -> bytes:
        return read_chain(self.mem, chain)

    def write_in(self, chain: Chain, data: bytes) -> int:
        return write_chain(self.mem, chain, data)

    def push(self, head: int, written: int) -> None:
        """Return a chain to the driver: used.ring[used_idx % Q] = {head, written}, then bump used.idx."""
        if head not in self.popped:
            raise ValueError(f"used id {head} is not a chain the device popped and has not used yet")
        if self.in_order and head != self.popped[0]:
            raise ValueError("VIRTIO_F_IN_ORDER was negotiated: buffers must be used in the order they were "
                             "made available")
        self.popped.remove(head)
        self._write_used(head, written, 1)

    def push_batch(self, heads: Sequence[int], written_last: int) -> None:
        """VIRTIO_F_IN_ORDER: one used entry (the last buffer's head) for a batch of the oldest popped buffers;
        used.idx moves by the batch size (VIRTIO 1.2 2.7.9). The others count as completely used."""
        if not self.in_order:
            raise ValueError("batched used entries need VIRTIO_F_IN_ORDER")
        heads = list(heads)
        if not heads or heads != list(self.popped)[:len(heads)]:
            raise ValueError("a batch must be the oldest popped buffers, in the order they were made available")
        for _ in heads:
            self.popped.popleft()
        self._write_used(heads[-1], written_last, len(heads))

    def _write_used(self, head: int, written: int, n: int) -> None:
        if not 0 <= written <= 0xFFFFFFFF:
            raise ValueError(f"used len {written} does not fit the le32 len field")
        USED_ELEM.pack_into(self.mem.buf, self.a_used_ring + 8 * (self.used_idx % self.q), head, written)
        self.used_idx = u16(self.used_idx + n)      # (write barrier) then publish
        self.mem.set_u16(self.a_used_idx, self.used_idx)

    def interrupt_needed(self) -> bool:
        """Decide whether to interrupt the driver for everything pushed since the last decision."""
        new, old = self.used_idx, self.signalled_at
        self.signalled_at = new
        if self.event_idx:
            need = vring_need_event(self.mem.u16(self.a_used_event), new, old)
        else:
            need = new != old and not (self.mem.u16(self.a_avail_flags) & VRING_AVAIL_F_NO_INTERRUPT)
        self.interrupts += need
        return need


def make_queue(q: int = 256, mem_size: int = 1 << 22, event_idx: bool = True, start_index: int = 0,
               mem: Optional[GuestMemory] = None, indirect: bool = True, in_order: bool = False):
    """A GuestMemory with one split virtqueue in it, and the driver and device that share it."""
    mem = mem or GuestMemory(mem_size)
    L = SplitLayout(q)
    base = mem.alloc(L.size, 4096)
    kw = dict(event_idx=event_idx, start_index=start_index, indirect=indirect, in_order=in_order)
    drv, dev = SplitDriver(mem, base, q, **kw), SplitDevice(mem, base, q, **kw)
    return mem, drv, dev


def hexdump(data: bytes, base: int = 0, width: int = 16) -> str:
    lines = []
    for i in range(0, len(data), width):
        chunk = data[i:i + width]
        lines.append(f"{base + i:06x}  " + " ".join(f"{b:02x}" for b in chunk))
    return "\n".join(lines)
