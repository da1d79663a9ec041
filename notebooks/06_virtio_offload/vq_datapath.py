"""A software VirtIO-net datapath: guest TX virtqueue -> device loop -> virtual switch -> guest RX virtqueue.

This is the work that software VirtIO puts on host cores (vhost + OVS) and that vDPA/DPU offload moves
into the NIC:
- ring handling: pop available chains, push used entries, decide on notifications (EVENT_IDX);
- classification: parse headers, look the flow up in an exact-match cache; on a miss, an "upcall" to
  a wildcard classifier (tuple-space search, as OVS's slow path does) whose answer is installed in the
  cache, so the next packet of that flow takes the fast path;
- copy: the packet bytes leave the sender's buffer and land in the receiver's buffer.
`Switch.run` measures the time spent in each part with perf_counter_ns.
"""
from __future__ import annotations

import ipaddress
import random
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from vq_split import GuestMemory, RingFull, SplitDevice, SplitDriver, SplitLayout

ETH_HLEN = 14

VNET_HDR_LEN = 12   # struct virtio_net_hdr_v1 (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers)
ETH = struct.Struct("!6s6sH")
IPV4 = struct.Struct("!BBHHHBBH4s4s")
UDP = struct.Struct("!HHHH")

# a flow key: (in_port, eth_type, ip_proto, ip_src, ip_dst, tp_src, tp_dst)
FIELDS = ("in_port", "eth_type", "ip_proto", "ip_src", "ip_dst", "tp_src", "tp_dst")
FULL = (0xFFFF, 0xFFFF, 0xFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFF, 0xFFFF)


def build_udp_frame(src_ip: str, dst_ip: str, sport: int, dport: int, payload_len: int,
                    src_mac: bytes = b"\x02\x00\x00\x00\x00\x01", dst_mac: bytes = b"\x02\x00\x00\x00\x00\x02") -> bytes:
    payload = bytes(payload_len)
    udp = UDP.pack(sport, dport, 8 + payload_len, 0)
    total = 20 + 8 + payload_len
    ip = IPV4.pack(0x45, 0, total, 0, 0x4000, 64, 17, 0,
                   ipaddress.IPv4Address(src_ip).packed, ipaddress.IPv4Address(dst_ip).packed)
    csum = ip_checksum(ip)
    ip = ip[:10] + struct.pack("!H", csum) + ip[12:]
    return ETH.pack(dst_mac, src_mac, 0x0800) + ip + udp + payload


def ip_checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def parse_key(frame: bytes, in_port: int) -> Tuple[int, ...]:
    """Extract the flow key from an Ethernet/IPv4/UDP-or-TCP frame (other frames: L2 fields only)."""
    eth_type = struct.unpack_from("!H", frame, 12)[0]
    if eth_type != 0x0800 or len(frame) < 34:
        return (in_port, eth_type, 0, 0, 0, 0, 0)
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    src, dst = struct.unpack_from("!II", frame, 26)
    sport = dport = 0
    if proto in (6, 17) and len(frame) >= 14 + ihl + 4:
        sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
    return (in_port, eth_type, proto, src, dst, sport, dport)


@dataclass(order=True)
class Rule:
    priority: int
    mask: Tuple[int, ...] = field(compare=False)
    match: Tuple[int, ...] = field(compare=False)
    action: str = field(compare=False)      # "output:<port>" or "drop"


def prefix_mask(bits: int) -> int:
    return (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF if bits else 0


def rule(priority: int, action: str, **fields) -> Rule:
    """rule(10, "output:2", in_port=1, ip_dst="10.0.2.0/24", tp_dst=443): unspecified fields are wildcards."""
    mask, match = [0] * len(FIELDS), [0] * len(FIELDS)
    for name, value in fields.items():
        i = FIELDS.index(name)
        if name in ("ip_src", "ip_dst"):
            net = ipaddress.IPv4Network(value, strict=False)
            mask[i], match[i] = prefix_mask(net.prefixlen), int(net.network_address)
        else:
            mask[i], match[i] = FULL[i], int(value)
    return Rule(priority, tuple(mask), tuple(match), action)


class WildcardClassifier:
    """Tuple-space search: rules grouped by mask; one hash lookup per distinct mask; best priority wins."""

    def __init__(self, rules: List[Rule]):
        self.tables: Dict[Tuple[int, ...], Dict[Tuple[int, ...], Rule]] = {}
        for r in rules:
            t = self.tables.setdefault(r.mask, {})
            old = t.get(r.match)
            if old is None or r.priority > old.priority:
                t[r.match] = r
        self.lookups = 0

    def lookup(self, key: Tuple[int, ...]) -> Optional[Rule]:
        self.lookups += 1
        best = None
        for mask, table in self.tables.items():
            r = table.get(tuple(k & m for k, m in zip(key, mask)))
            if r is not None and (best is None or r.priority > best.priority):
                best = r
        return best


class ExactMatchCache:
    """Key -> action with a capacity and least-recently-used eviction (OVS's EMC/microflow cache)."""

    def __init__(self, capacity: int = 8192):
        self.capacity = capacity
        self.d: "OrderedDict[Tuple[int, ...], str]" = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def get(self, key):
        a = self.d.get(key)
        if a is None:
            self.misses += 1
        else:
            self.hits += 1
            self.d.move_to_end(key)
        return a

    def install(self, key, action: str) -> None:
        if key not in self.d and len(self.d) >= self.capacity:
            self.d.popitem(last=False)
            self.evictions += 1
        self.d[key] = action


@dataclass
class Port:
    """One VM's virtio-net device: its TX queue (guest -> switch) and RX queue (switch -> guest)."""
    number: int
    mem: GuestMemory
    tx_drv: SplitDriver
    tx_dev: SplitDevice
    rx_drv: SplitDriver
    rx_dev: SplitDevice
    rx_bufs: int = 0
    rx_length_errors: int = 0

    @classmethod
    def create(cls, number: int, q: int = 256, buf_size: int = 2048, mem_size: int = 1 << 23) -> "Port":
        mem = GuestMemory(mem_size)
        L = SplitLayout(q)
        tx_base, rx_base = mem.alloc(L.size, 4096), mem.alloc(L.size, 4096)
        p = cls(number, mem, SplitDriver(mem, tx_base, q), SplitDevice(mem, tx_base, q),
                SplitDriver(mem, rx_base, q), SplitDevice(mem, rx_base, q))
        p.buf_size = buf_size
        p.tx_pool = [mem.alloc(buf_size) for _ in range(q)]
        for _ in range(q):   # the guest pre-posts receive buffers, as virtio-net does
            addr = mem.alloc(buf_size)
            p.rx_drv.add(in_=[(addr, buf_size)], token=addr)
        return p

    def guest_send(self, frame: bytes) -> bool:
        """Guest driver: copy a frame (with its virtio-net header) into a TX buffer and expose it.

        Returns False when no TX buffer or descriptor is free (the guest would stop its TX queue).
        """
        if VNET_HDR_LEN + len(frame) > self.buf_size:
            raise ValueError(f"frame of {len(frame)} bytes + {VNET_HDR_LEN}-byte virtio-net header does not fit "
                             f"a {self.buf_size}-byte TX buffer")
        self.reclaim_tx()   # completed TX buffers go back to the pool (as virtio_net's free_old_xmit)
        if not self.tx_pool:
            return False
        addr = self.tx_pool.pop()
        self.mem.write(addr, bytes(VNET_HDR_LEN) + frame)
        try:
            self.tx_drv.add(out=[(addr, VNET_HDR_LEN + len(frame))], token=addr)
        except RingFull:
            self.tx_pool.append(addr)
            return False
        return True

    def reclaim_tx(self) -> int:
        """Return every completed TX buffer to tx_pool; returns how many."""
        n = 0
        while (u := self.tx_drv.get_used()) is not None:
            self.tx_pool.append(u[0])
            n += 1
        return n

    def guest_receive(self, keep: bool = False) -> List:
        """Guest driver: take received frames (without their virtio-net header) and re-post the buffers.

        keep=True returns the frames' bytes, otherwise their used lengths. A used length shorter than the
        virtio-net header plus an Ethernet header is dropped and counted in rx_length_errors, as Linux's
        virtio_net receive_buf() does ("short packet"); a length larger than the posted buffer never gets
        here (SplitDriver.get_used raises RingError).
        """
        out = []
        while True:
            u = self.rx_drv.get_used()
            if u is None:
                return out
            addr, n = u
            if n < VNET_HDR_LEN + ETH_HLEN:
                self.rx_length_errors += 1
            else:
                out.append(self.mem.read(addr + VNET_HDR_LEN, n - VNET_HDR_LEN) if keep else n)
                self.rx_bufs += 1
            self.rx_drv.add(in_=[(addr, self.buf_size)], token=addr)


@dataclass
class CostSplit:
    ring_ns: int = 0
    classify_ns: int = 0
    copy_ns: int = 0
    packets: int = 0
    delivered: int = 0
    dropped: int = 0
    upcalls: int = 0
    total_ns: int = 0

    def per_packet(self) -> Dict[str, float]:
        n = max(1, self.packets)
        return {"ring_ns": self.ring_ns / n, "classify_ns": self.classify_ns / n,
                "copy_ns": self.copy_ns / n, "total_ns": self.total_ns / n}


class Switch:
    """The device loop plus the virtual switch (fast path: exact-match cache; slow path: classifier)."""

    def __init__(self, ports: List[Port], rules: List[Rule], cache_capacity: int = 8192,
                 upcall_cost_s: float = 0.0):
        self.ports = {p.number: p for p in ports}
        self.classifier = WildcardClassifier(rules)
        self.cache = ExactMatchCache(cache_capacity)
        self.upcall_cost_s = upcall_cost_s   # optional extra latency of a real upcall (netlink round trip)
        self.cost = CostSplit()

    def classify(self, key) -> str:
        action = self.cache.get(key)
        if action is None:                  # miss -> upcall -> install
            self.cost.upcalls += 1
            r = self.classifier.lookup(key)
            action = r.action if r else "drop"
            if self.upcall_cost_s:
                t_end = time.perf_counter() + self.upcall_cost_s
                while time.perf_counter() < t_end:
                    pass
            self.cache.install(key, action)
        return action

    def poll(self, port: Port, budget: int = 64) -> int:
        """Drain up to `budget` TX chains of `port` (one NAPI-style poll). Returns packets handled."""
        clock = time.perf_counter_ns
        t_poll = clock()
        n = self._poll(port, budget, clock)
        self.cost.total_ns += clock() - t_poll
        return n

    def _poll(self, port: Port, budget: int, clock) -> int:
        c = self.cost
        done = 0
        while done < budget:
            t0 = clock()
            chain = port.tx_dev.pop()
            t1 = clock()
            c.ring_ns += t1 - t0
            if chain is None:
                break
            data = port.tx_dev.read_out(chain)              # copy out of the sender's memory
            frame = data[VNET_HDR_LEN:]
            t2 = clock()
            key = parse_key(frame, port.number)
            action = self.classify(key)
            t3 = clock()
            c.copy_ns += t2 - t1
            c.classify_ns += t3 - t2
            delivered = False
            if action.startswith("output:"):
                dst = self.ports.get(int(action[7:]))
                if dst is not None:
                    rx = dst.rx_dev.pop()                   # ring handling on the receiver's RX queue
                    t4 = clock()
                    c.ring_ns += t4 - t3
                    if rx is not None:
                        n = dst.rx_dev.write_in(rx, data)   # copy into the receiver's buffer
                        t5 = clock()
                        c.copy_ns += t5 - t4
                        dst.rx_dev.push(rx.head, n)
                        delivered = True
                        t3 = clock()
                        c.ring_ns += t3 - t5
                    else:
                        t3 = t4
            t6 = clock()
            port.tx_dev.push(chain.head, 0)
            t7 = clock()
            c.ring_ns += t7 - t6
            c.packets += 1
            c.delivered += delivered
            c.dropped += not delivered
            done += 1
        t8 = clock()
        port.tx_dev.interrupt_needed()
        for p in self.ports.values():
            p.rx_dev.interrupt_needed()
        c.ring_ns += clock() - t8
        return done


def default_rules(n_ports: int = 2) -> List[Rule]:
    """A small policy: traffic to 10.0.<p>.0/24 goes to port p, DNS is dropped, the rest is dropped."""
    rules = [rule(100, f"output:{p}", eth_type=0x0800, ip_dst=f"10.0.{p}.0/24") for p in range(1, n_ports + 1)]
    rules.append(rule(200, "drop", eth_type=0x0800, ip_proto=17, tp_dst=53))
    rules.append(rule(150, "output:2", in_port=1, eth_type=0x0800, ip_proto=6, tp_dst=443))
    rules.append(rule(0, "drop"))
    return rules


def make_flows(n_flows: int, rng: random.Random, dst_port: int = 2) -> List[Tuple[str, str, int, int]]:
    return [(f"10.0.1.{1 + rng.randrange(250)}", f"10.0.{dst_port}.{1 + rng.randrange(250)}",
             1024 + rng.randrange(60000), rng.choice((80, 443, 4789, 8080))) for _ in range(n_flows)]


def run_traffic(n_packets: int = 20000, n_flows: int = 200, payload: int = 1024, q: int = 256,
                cache_capacity: int = 8192, seed: int = 0, progress=None) -> Tuple[CostSplit, Switch, Dict]:
    """Guest on port 1 sends `n_packets` UDP frames over `n_flows` flows (Zipf-like popularity) to port 2.

    Returns the cost split, the switch, and counters (received frames, kicks, interrupts).
    """
    rng = random.Random(seed)
    p1, p2 = Port.create(1, q=q), Port.create(2, q=q)
    sw = Switch([p1, p2], default_rules(2), cache_capacity=cache_capacity)
    flows = make_flows(n_flows, rng)
    weights = [1.0 / (i + 1) for i in range(n_flows)]
    frames = [build_udp_frame(s, d, sp, dp, payload) for s, d, sp, dp in flows]
    order = rng.choices(range(n_flows), weights=weights, k=n_packets)
    received = 0
    sent = 0
    batch = 32
    it = range(0, n_packets, batch)
    if progress is not None:
        it = progress(it, desc="datapath", total=(n_packets + batch - 1) // batch)
    for start in it:
        for i in order[start:start + batch]:
            if not p1.guest_send(frames[i]):
                break
            sent += 1
        p1.tx_drv.kick_needed()
        sw.poll(p1, budget=batch)
        received += len(p2.guest_receive())
    return sw.cost, sw, {"sent": sent, "received": received, "tx_kicks": p1.tx_drv.kicks,
                         "tx_interrupts": p1.tx_dev.interrupts, "rx_interrupts": p2.rx_dev.interrupts}
