"""Property tests: random operation sequences (seeded; hypothesis is not in the venv) checked against the
spec's invariants after every step, for the split and the packed ring.

Each run draws adds (1..Q+2 pieces, direct/indirect/auto), pops, pushes in random order (or in order and in
batches under VIRTIO_F_IN_ORDER), reclaims, and notification decisions with random event settings. Checked:
- a buffer is refused with ChainTooLong iff it has more pieces than Q, with RingFull iff it fits the queue but
  not the free descriptors, and accepted otherwise;
- the device sees exactly the pieces the driver added, in order, readable before writable;
- the driver gets back exactly what the device pushed, in ring order (an IN_ORDER batch: every buffer of it);
- descriptors are conserved: free + in flight = Q; the split free list and the chains in flight partition the
  table (IN_ORDER: the chains in flight are one run in ring order); the packed wrap counters equal the parity
  of the laps each side has gone round;
- every kick/interrupt decision equals a brute-force "was the event slot among those just written".
"""
import random
from collections import deque

import pytest

import vq_packed as vp
import vq_split as vs

u16 = vs.u16


def _pieces(rng, base, n):
    k_out = rng.randint(0, n)
    ps = [(base + 64 * rng.randrange(60), rng.randint(1, 64)) for _ in range(n)]
    return ps[:k_out], ps[k_out:]


def _try_add(drv, rng, base, token, q):
    """Add a random buffer and check the refusal rules. Returns (out, in_, descriptors used) or None."""
    n = rng.randint(1, q + 2)
    out, in_ = _pieces(rng, base, n)
    ind = rng.choice([None, True, False])
    need = 1 if (ind is True or (ind is None and n > 1 and drv.num_free > 0)) else n
    free = drv.num_free
    try:
        drv.add(out=out, in_=in_, token=token, indirect=ind)
    except vs.ChainTooLong:
        assert n > q
        return None
    except vs.RingFull:
        assert n <= q and need > free
        return None
    assert n <= q and need <= free and drv.num_free == free - need
    return out, in_, need


def _split_free_list_partitions_the_table(mem, drv, q):
    seen = set()
    for head, (_tok, ndesc, _table, _w) in drv.tokens.items():
        i = head
        for j in range(ndesc):
            assert i not in seen
            seen.add(i)
            if j < ndesc - 1:
                i = drv._read_desc(i)[3]
    i = drv.free_head
    for _ in range(drv.num_free):
        assert 0 <= i < q and i not in seen
        seen.add(i)
        i = drv._read_desc(i)[3]
    assert len(seen) == q


def _split_in_order_descriptors_are_contiguous(drv, q):
    """IN_ORDER: the descriptors in flight are one run in ring order, from the oldest head to next_desc."""
    n = q - drv.num_free
    start = drv.order[0] if drv.order else drv.next_desc
    run = [(start + j) % q for j in range(n)]
    assert (start + n) % q == drv.next_desc
    pos = 0
    for h in drv.order:               # each buffer starts where the previous one ended
        assert h == run[pos]
        pos += drv.tokens[h][1]
    assert pos == n


@pytest.mark.parametrize("q,seed,in_order", [(1, 0, False), (2, 1, False), (4, 2, False), (8, 3, False),
                                             (16, 4, False), (4, 5, True), (8, 6, True)])
def test_split_ring_random_operations_keep_the_spec_invariants(q, seed, in_order):
    rng = random.Random(seed)
    mem, drv, dev = vs.make_queue(q=q, mem_size=1 << 18, start_index=rng.randrange(65536), in_order=in_order)
    base = mem.alloc(4096)
    added, popped, pushed = deque(), [], deque()
    token = 0
    for _ in range(3000):
        r = rng.random()
        if r < 0.35:
            got = _try_add(drv, rng, base, token, q)
            if got:
                added.append((token, got[0], got[1]))
                token += 1
            if rng.random() < 0.5:     # the kick decision against brute force
                old, new, ev = drv.kicked_at, drv.avail_idx, mem.u16(drv.a_avail_event)
                assert drv.kick_needed() == any(u16(old + j) == ev for j in range(u16(new - old)))
        elif r < 0.6:
            ch = dev.pop()
            if not added:
                assert ch is None
            else:
                tok, out, in_ = added.popleft()
                assert (ch.readable, ch.writable) == (list(out), list(in_))
                popped.append((ch, tok))
        elif r < 0.8:
            if popped and in_order:    # in order, sometimes one used entry for a batch
                k = rng.randint(1, len(popped))
                batch, popped[:k] = popped[:k], []
                w = rng.randint(0, batch[-1][0].write_capacity)
                if k > 1 or rng.random() < 0.5:
                    dev.push_batch([c.head for c, _t in batch], w)
                else:
                    dev.push(batch[0][0].head, w)
                pushed.extend([(t, c.write_capacity) for c, t in batch[:-1]] + [(batch[-1][1], w)])
            elif popped:               # devices may complete out of order
                ch, tok = popped.pop(rng.randrange(len(popped)))
                w = rng.randint(0, ch.write_capacity)
                dev.push(ch.head, w)
                pushed.append((tok, w))
            if rng.random() < 0.3:
                drv.set_used_event(u16(drv.last_used_idx + rng.randrange(q + 1)))
            old, new, ev = dev.signalled_at, dev.used_idx, mem.u16(drv.a_used_event)
            assert dev.interrupt_needed() == any(u16(old + j) == ev for j in range(u16(new - old)))
        else:
            u = drv.get_used()
            assert u == (pushed.popleft() if pushed else None)
        in_flight = sum(nd for _t, nd, _tb, _w in drv.tokens.values())
        assert drv.num_free + in_flight == q
        assert u16(mem.u16(drv.a_avail_idx) - mem.u16(drv.a_used_idx)) <= q
        if in_order:
            _split_in_order_descriptors_are_contiguous(drv, q)
        else:
            _split_free_list_partitions_the_table(mem, drv, q)
    assert token > 100     # the run did real work


def _slots(pos, wrap, n, q):
    out = []
    for _ in range(n):
        out.append((pos, wrap))
        pos, wrap = vp.advance(pos, wrap, 1, q)
    return out


def _expected_notify(area, covered, q):
    ow, flags = area
    if not covered or flags == vp.RING_EVENT_FLAGS_DISABLE:
        return False
    if flags != vp.RING_EVENT_FLAGS_DESC or len(covered) >= q:
        return True
    return (ow & 0x7FFF, ow >> 15) in covered


def _random_event(rng, q):
    mode = rng.choice([vp.RING_EVENT_FLAGS_ENABLE, vp.RING_EVENT_FLAGS_DISABLE, vp.RING_EVENT_FLAGS_DESC])
    return mode, rng.randrange(q), rng.randrange(2)


@pytest.mark.parametrize("q,seed,in_order", [(1, 0, False), (3, 1, False), (5, 2, True), (8, 3, False),
                                             (8, 4, True), (13, 5, True)])
def test_packed_ring_random_operations_keep_the_spec_invariants(q, seed, in_order):
    rng = random.Random(seed)
    mem, drv, dev = vp.make_packed(q=q, mem_size=1 << 18, in_order=in_order)
    base = mem.alloc(4096)
    added, popped, expected = deque(), [], deque()
    ndesc = {}
    made_avail = used = reclaimed = 0
    kick_cover, irq_cover = [], []
    token = 0
    for _ in range(3000):
        r = rng.random()
        if r < 0.3:
            pos, wrap = drv.next_avail, drv.avail_wrap
            got = _try_add(drv, rng, base, token, q)
            if got:
                added.append((token, got[0], got[1]))
                ndesc[token] = got[2]
                kick_cover += _slots(pos, wrap, got[2], q)
                made_avail += got[2]
                token += 1
        elif r < 0.5:
            ch = dev.pop()
            if not added:
                assert ch is None
            else:
                tok, out, in_ = added.popleft()
                assert (ch.readable, ch.writable) == (list(out), list(in_)) and ch.ndesc == ndesc[tok]
                popped.append((ch, tok))
        elif r < 0.7 and popped:
            k = rng.randint(1, len(popped)) if in_order else 1
            batch = popped[:k] if in_order else [popped[rng.randrange(len(popped))]]
            for b in batch:
                popped.remove(b)
            w = rng.randint(0, batch[-1][0].write_capacity)
            n = sum(c.ndesc for c, _t in batch)
            irq_cover += _slots(dev.next_used, dev.used_wrap, n, q)
            if in_order and (k > 1 or rng.random() < 0.5):
                dev.push_batch([c for c, _t in batch], w)
            else:
                dev.push(batch[0][0], w)
            expected.extend([(t, c.write_capacity) for c, t in batch[:-1]] + [(batch[-1][1], w)])
            used += n
        elif r < 0.8:
            if rng.random() < 0.5:
                mode, at, wrap = _random_event(rng, q)
                dev.set_notifications(mode, at, wrap)
            area = vp.EVT.unpack_from(mem.buf, drv.base + drv.L.device_event)
            assert drv.kick_needed() == _expected_notify(area, kick_cover, q)
            kick_cover = []
        elif r < 0.9:
            if rng.random() < 0.5:
                mode, at, wrap = _random_event(rng, q)
                drv.set_interrupts(mode, at, wrap)
            area = vp.EVT.unpack_from(mem.buf, drv.base + drv.L.driver_event)
            assert dev.interrupt_needed() == _expected_notify(area, irq_cover, q)
            irq_cover = []
        else:
            u = drv.get_used()
            assert u == (expected.popleft() if expected else None)
            if u:
                reclaimed += ndesc.pop(u[0])
        assert drv.num_free + sum(nd for _t, nd, _w in drv.inflight.values()) == q
        # each side's position and wrap counter say how many laps it went round (counters start at 1)
        for pos, wrap, total in ((drv.next_avail, drv.avail_wrap, made_avail), (dev.next_used, dev.used_wrap, used)):
            assert (pos, wrap) == (total % q, 1 ^ ((total // q) & 1))
        if not drv.pending:
            assert (drv.last_used, drv.used_wrap) == (reclaimed % q, 1 ^ ((reclaimed // q) & 1))
    assert token > 100 and used > 2 * q
