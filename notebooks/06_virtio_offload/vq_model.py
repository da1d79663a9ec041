"""A discrete-event model of the seed's F5 BIG-IP VE scenario: software VirtIO versus vDPA/DPU offload.

What is modelled (every packet is an entity; events come off one heap in time order):

    load generator (U closed-loop "tokens" = sessions x window, network round trip, loss recovery)
        |  one packet per token in flight; a dropped packet comes back after the loss-recovery delay
        v
    [bounded NIC/DPU buffer, Q_nic]  ->  datapath stage  ->  [bounded guest virtqueue, Q_vq]  ->  app (SSL) on cores
                                         software: vhost + OVS thread(s) on host cores (shared with the app)
                                         offload:  DPU pipeline at line rate; a flow's first packet, and flows
                                                   that do not fit the offload table, go to the DPU's slow path
                                                   (OVS on its Arm cores: upcall, then software forwarding)

A datapath stage whose output virtqueue is full holds its packet (back-pressure), so the NIC buffer fills
and new arrivals are dropped: drops are what "packets processed" counts. The run ends when every packet of
the (scaled) workload has been processed; completion time is scaled back to the full workload.

The numbers in `calibrated()` are one stated parameter set, chosen by hand from rules of thumb
(REFERENCE.md section 6) and then adjusted so that the two runs land within 10% of the seed's six
figures. They are assumptions, not measurements of a BIG-IP or a BlueField.
"""
from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional

SEED_FIGURES = {  # the seed post's published numbers (F5 BIG-IP VE SSL termination, BlueField-2)
    "model_sw_gbps": 5.0, "model_hw_gbps": 16.0,
    "model_sw_seconds": 187.0, "model_hw_seconds": 62.0,
    "model_sw_processed_pct": 80.0, "model_hw_processed_pct": 100.0,
}


@dataclass(frozen=True)
class ModelParams:
    # workload and generator
    workload_gbit: float = 963.0      # total data; sqrt(16*62 * 5*187) Gbit: the geometric mean of the seed's two products
    pkt_bytes: int = 1500             # MTU-sized packets of SSL records
    tokens: int = 2500                # packets in flight from the generator (sessions x window)
    rtt_us: float = 1000.0            # generator <-> server round trip outside the server
    retry_us: float = 10000.0         # time for the generator to notice a loss and resend (calibrated)
    flows: int = 10_000               # concurrently active flows (TCP connections)
    # host and guest
    cores: int = 8                    # host cores for the VM and, in software mode, its datapath
    app_pkt_ns: float = 1000.0        # SSL termination: per packet ...
    app_ns_per_byte: float = 3.33     # ... and per byte (about 300 MB/s per core of record processing)
    notify_sw_ns: float = 200.0       # guest cost of kicks/interrupts per packet with software VirtIO (exits)
    notify_hw_ns: float = 50.0        # with vDPA (doorbells and interrupts go to the device)
    q_vq: int = 256                   # guest RX virtqueue size
    q_nic: int = 1024                 # NIC ring (software) / DPU input buffer (offload)
    # software datapath (vhost-net + OVS kernel datapath)
    dp_threads: int = 1               # one vhost worker for the single queue pair; takes a host core
    dp_pkt_ns: float = 1400.0         # ring handling + classification + notifications, per packet
    dp_ns_per_byte: float = 0.6       # the copy between host and guest buffers
    sw_flow_limit: int = 200_000      # kernel datapath flow-table limit (OVS default flow-limit)
    sw_upcall_ns: float = 20_000.0    # first packet of a flow: upcall to ovs-vswitchd and back
    # offload (vDPA on a DPU)
    line_gbps: float = 25.0           # the DPU port's line rate
    offload_table: int = 65_536       # flows the hardware table holds
    arm_threads: int = 4              # DPU Arm cores running the slow path
    arm_pkt_ns: float = 8000.0        # software forwarding of a packet on an Arm core
    arm_upcall_ns: float = 50_000.0   # classifying a new flow and programming the hardware table
    q_arm: int = 1024                 # slow-path queue

    @property
    def total_packets(self) -> float:
        return self.workload_gbit * 1e9 / (8 * self.pkt_bytes)


def calibrated() -> ModelParams:
    """The one calibrated parameter set used everywhere in the notebook."""
    return ModelParams()


@dataclass
class SimResult:
    mode: str
    gbps: float
    seconds: float           # completion time scaled to the full workload
    processed_pct: float
    sim_seconds: float
    sent: int
    processed: int
    dropped: int
    events: int
    slow_path_pct: float
    app_util: float
    dp_util: float

    def as_dict(self) -> Dict:
        return asdict(self)


ARRIVE, DONE_DP, DONE_SLOW, DONE_APP = 0, 1, 2, 3


def simulate(mode: str, p: Optional[ModelParams] = None, n_packets: int = 100_000, seed: int = 0) -> SimResult:
    """Simulate `n_packets` unique packets of the workload in mode "sw" (software VirtIO) or "hw" (offload)."""
    if mode not in ("sw", "hw"):
        raise ValueError("mode is 'sw' or 'hw'")
    p = p or calibrated()
    rng = random.Random(seed)
    rnd = rng.random
    hw = mode == "hw"
    B = p.pkt_bytes
    # service times (seconds)
    if hw:
        dp_servers = 1
        s_dp = (B + 20) * 8 / (p.line_gbps * 1e9)                 # wire time incl. preamble + gap
        app_servers = p.cores
        s_app = (p.app_pkt_ns + p.app_ns_per_byte * B + p.notify_hw_ns) * 1e-9
        p_slow = max(0.0, 1.0 - p.offload_table / p.flows)        # flows that did not fit the table
        s_slow = p.arm_pkt_ns * 1e-9
        s_upcall = p.arm_upcall_ns * 1e-9
    else:
        dp_servers = p.dp_threads
        s_dp = (p.dp_pkt_ns + p.dp_ns_per_byte * B) * 1e-9
        app_servers = max(1, p.cores - p.dp_threads)
        s_app = (p.app_pkt_ns + p.app_ns_per_byte * B + p.notify_sw_ns) * 1e-9
        p_slow = max(0.0, 1.0 - p.sw_flow_limit / p.flows)        # misses that upcall on every packet
        s_slow = 0.0
        s_upcall = p.sw_upcall_ns * 1e-9
    p_new = min(1.0, p.flows / p.total_packets)                   # a packet is its flow's first
    rtt, retry = p.rtt_us * 1e-6, p.retry_us * 1e-6

    heap: List = []
    push, pop = heapq.heappush, heapq.heappop
    seq = 0
    # stage state: 0 = datapath (DPU pipeline or vhost), 1 = slow path (hw only)
    busy = [0, 0]
    nserv = [dp_servers, p.arm_threads]
    cap = [p.q_nic, p.q_arm]
    queues = [deque(), deque()]
    app_busy = 0
    appq: deque = deque()
    blocked: deque = deque()          # (stage) servers holding a finished packet, waiting for virtqueue room
    issued = sent = processed = dropped = events = slow_pkts = 0
    busy_app_time = busy_dp_time = 0.0

    def service(stage: int, slow_kind: int) -> float:
        # slow_kind: 0 fast path, 1 software path for a flow not in the table, 2 first packet (upcall)
        if stage == 0:
            if hw:
                return s_dp
            return s_dp + (s_upcall if slow_kind else 0.0)
        return s_slow + (s_upcall if slow_kind == 2 else 0.0)

    def _start_next(stage: int) -> None:
        """A datapath server is free: start its next queued packet, or go idle."""
        nonlocal seq, busy_dp_time
        q = queues[stage]
        if q:
            sk = q.popleft()
            s = service(stage, sk)
            if stage == 0:
                busy_dp_time += s
            seq += 1
            push(heap, (t + s, seq, DONE_DP if stage == 0 else DONE_SLOW, sk))
        else:
            busy[stage] -= 1

    # tokens enter over two round trips (the generator's ramp-up)
    n_tok = min(p.tokens, n_packets)
    for tok in range(n_tok):
        seq += 1
        push(heap, (rnd() * 2 * rtt, seq, ARRIVE, 0))
        issued += 1
    t = 0.0
    # statistics come from the steady-state window between 20% and 90% of the packets
    w0, w1 = max(1, n_packets // 5), max(2, (9 * n_packets) // 10)
    snaps: List = []
    while processed < n_packets:
        t, _, kind, info = pop(heap)
        events += 1
        if kind == ARRIVE:
            sent += 1
            r = rnd()
            if r < p_new:
                slow_kind = 2
            elif rnd() < p_slow:
                slow_kind = 1
            else:
                slow_kind = 0
            stage = 1 if (hw and slow_kind) else 0
            if slow_kind:
                slow_pkts += 1
            if busy[stage] < nserv[stage]:
                busy[stage] += 1
                s = service(stage, slow_kind)
                if stage == 0:
                    busy_dp_time += s
                seq += 1
                push(heap, (t + s, seq, DONE_DP if stage == 0 else DONE_SLOW, slow_kind))
            elif len(queues[stage]) < cap[stage]:
                queues[stage].append(slow_kind)
            else:
                dropped += 1
                seq += 1
                push(heap, (t + retry * (0.5 + rnd()), seq, ARRIVE, 0))
        elif kind == DONE_DP or kind == DONE_SLOW:
            stage = 0 if kind == DONE_DP else 1
            if app_busy < app_servers:
                app_busy += 1
                busy_app_time += s_app
                seq += 1
                push(heap, (t + s_app, seq, DONE_APP, 0))
            elif len(appq) < p.q_vq:
                appq.append(0)
            else:
                blocked.append(stage)      # the server keeps its packet until the virtqueue has room
                continue
            _start_next(stage)
        else:  # DONE_APP
            processed += 1
            if processed == w0 or processed == w1:
                snaps.append((t, sent, processed, dropped))
            if issued < n_packets:
                issued += 1
                seq += 1
                push(heap, (t + rtt * (0.5 + rnd()), seq, ARRIVE, 0))
            if appq:
                appq.popleft()
                busy_app_time += s_app
                seq += 1
                push(heap, (t + s_app, seq, DONE_APP, 0))
                if blocked:
                    stage = blocked.popleft()
                    appq.append(0)
                    _start_next(stage)
            elif blocked:
                stage = blocked.popleft()
                busy_app_time += s_app
                seq += 1
                push(heap, (t + s_app, seq, DONE_APP, 0))
                _start_next(stage)
            else:
                app_busy -= 1

    sim_t = t
    if len(snaps) == 2 and snaps[1][0] > snaps[0][0]:
        (ta, _sa, pa, da), (tb, _sb, pb, db) = snaps
        pps = (pb - pa) / (tb - ta)
        # every packet sent is, in the end, either processed or dropped (and sent again)
        pct = 100.0 * (pb - pa) / max(1, (pb - pa) + (db - da))
    else:  # too few packets for a window: whole-run averages
        pps, pct = processed / sim_t, 100.0 * processed / max(1, sent)
    return SimResult(
        mode=mode, gbps=pps * B * 8 / 1e9, seconds=p.total_packets / pps,
        processed_pct=pct, sim_seconds=sim_t, sent=sent, processed=processed,
        dropped=dropped, events=events, slow_path_pct=100.0 * slow_pkts / max(1, sent),
        app_util=busy_app_time / (sim_t * app_servers), dp_util=busy_dp_time / (sim_t * dp_servers))



def reproduce(p: Optional[ModelParams] = None, n_packets: int = 200_000, seed: int = 0) -> Dict[str, SimResult]:
    """Both cases with one parameter set."""
    p = p or calibrated()
    return {mode: simulate(mode, p, n_packets, seed) for mode in ("sw", "hw")}


def metrics_from(results: Dict[str, SimResult]) -> Dict[str, float]:
    out = {}
    for mode, r in results.items():
        out[f"model_{mode}_gbps"] = float(r.gbps)
        out[f"model_{mode}_seconds"] = float(r.seconds)
        out[f"model_{mode}_processed_pct"] = float(r.processed_pct)
    return out


def relative_errors(metrics: Dict[str, float]) -> Dict[str, float]:
    """|model - seed| / seed for each of the six figures."""
    return {k: abs(metrics[k] - v) / v for k, v in SEED_FIGURES.items() if k in metrics}


SWEEPS = {
    "cores": [2, 4, 6, 8, 12, 16],
    "pkt_bytes": [256, 512, 1024, 1500, 4096, 9000],
    "flows": [1_000, 10_000, 50_000, 100_000, 250_000, 1_000_000],
    "offload_table": [4_096, 16_384, 65_536, 131_072, 262_144, 1_048_576],
}
SWEEP_FIXED = {"offload_table": {"flows": 250_000}}   # the table sweep runs at 250k concurrent flows


def sweep(name: str, values=None, n_packets: int = 20_000, seed: int = 0, base: Optional[ModelParams] = None,
          progress=None) -> List[Dict]:
    """Vary one parameter; rows of {name: value, mode, gbps, seconds, processed_pct, events}."""
    base = replace(base or calibrated(), **SWEEP_FIXED.get(name, {}))
    values = list(values if values is not None else SWEEPS[name])
    jobs = [(v, mode) for v in values for mode in ("sw", "hw")]
    if progress is not None:
        jobs = progress(jobs, desc=f"sweep {name}")
    rows = []
    for v, mode in jobs:
        r = simulate(mode, replace(base, **{name: v}), n_packets, seed)
        rows.append({name: v, "mode": mode, "gbps": r.gbps, "seconds": r.seconds,
                     "processed_pct": r.processed_pct, "slow_path_pct": r.slow_path_pct, "events": r.events})
    return rows
