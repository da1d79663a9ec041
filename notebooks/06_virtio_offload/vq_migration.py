"""Live-migration downtime: software VirtIO, vDPA and SR-IOV passthrough, as a pre-copy model.

Pre-copy migration (QEMU's default): copy all guest memory while the VM runs, then repeatedly copy what
was dirtied during the previous round, until the remainder can be sent within the downtime limit; then
stop the VM, send the remainder and the device state, start it at the destination and announce its MAC
(gratuitous ARP/RARP). Two things decide whether a NIC can take part:

- Dirty tracking. Memory the *device* writes by DMA (received packets, used-ring entries) must be seen
  as dirty. vhost (software VirtIO) logs its writes; a vDPA device either tracks them in hardware or
  QEMU relays its rings through a "shadow virtqueue" during migration (data path back in software for
  that time). An SR-IOV VF writes guest memory behind the hypervisor's back and has vendor-private state.
- Device state. VirtIO's state is standard and tiny (negotiated features, ring addresses, and the
  avail/used indices from vq_split): vDPA can suspend the device, read it and load it into a device on
  the destination, so the guest keeps its virtio-net driver. A VF's state cannot be moved, so it is
  hot-unplugged before migration (the guest fails over to a standby virtio-net path, if it has one) and
  a VF at the destination is hot-plugged afterwards.

All parameter values are assumptions for illustration (stated in `MigrationParams`), not measurements.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List


@dataclass(frozen=True)
class MigrationParams:
    mem_gib: float = 16.0              # guest memory
    link_gbps: float = 25.0            # migration network
    downtime_limit_ms: float = 300.0   # QEMU's default migrate downtime-limit
    max_rounds: int = 30
    guest_dirty_gbs: float = 0.4       # rate at which guest CPUs dirty memory (GB/s)
    guest_wss_gib: float = 2.0         # ... within this working set
    rx_gbps: float = 16.0              # traffic the NIC writes into guest buffers by DMA
    rx_wss_mib: float = 64.0           # the receive buffers it writes to
    state_transfer_ms: float = 5.0     # CPU + device state serialisation at the switchover
    announce_ms: float = 20.0          # start at destination + gratuitous ARP reaching the switch
    vdpa_suspend_ms: float = 10.0      # suspend the vDPA device, read ring indices
    vdpa_restore_ms: float = 30.0      # program the destination vDPA device with the same state
    sriov_unplug_ms: float = 500.0     # hot-unplug of the VF (guest driver teardown)
    failover_ms: float = 100.0         # guest switches its bond/net_failover to the standby virtio path
    sriov_plug_ms: float = 2000.0      # hot-plug + VF driver probe + link up at the destination
    sw_path_gbps: float = 5.0          # throughput while traffic runs on the software path


def precopy(p: MigrationParams, device_tracked: bool) -> Dict[str, float]:
    """Rounds of pre-copy; returns total copy time, rounds, and the stop-and-copy remainder (GB)."""
    bw = p.link_gbps / 8.0                    # GB/s
    mem = p.mem_gib * 1.073741824             # GB
    guest_wss = p.guest_wss_gib * 1.073741824
    rx_wss = p.rx_wss_mib * 1.048576e-3
    rx_rate = p.rx_gbps / 8.0 if device_tracked else 0.0
    to_send, total_t, rounds = mem, 0.0, 0
    limit = p.downtime_limit_ms * 1e-3 * bw   # GB that fit into the downtime limit
    while rounds < p.max_rounds:
        t = to_send / bw
        total_t += t
        rounds += 1
        dirty = min(guest_wss, p.guest_dirty_gbs * t) + (min(rx_wss, rx_rate * t) if device_tracked else 0.0)
        to_send = dirty
        if to_send <= limit:
            break
    return {"rounds": rounds, "precopy_s": total_t, "remainder_gb": to_send, "stop_copy_ms": 1e3 * to_send / bw}


def migrate(case: str, p: MigrationParams = MigrationParams()) -> Dict[str, float]:
    """Downtime breakdown (ms), network outage (ms) and the time spent on the slow path (s).

    case: "virtio_sw" (vhost), "vdpa" (suspend/resume of a standard virtio device), "sriov_failover"
    (VF unplugged, standby virtio path), "sriov_no_standby" (VF unplugged, no standby: no network).
    """
    if case == "virtio_sw":
        pc = precopy(p, device_tracked=True)
        parts = {"stop-and-copy": pc["stop_copy_ms"], "state": p.state_transfer_ms, "announce": p.announce_ms}
        outage, slow_s = sum(parts.values()), 0.0   # it *is* the software path all the time
    elif case == "vdpa":
        pc = precopy(p, device_tracked=True)
        parts = {"stop-and-copy": pc["stop_copy_ms"], "state": p.state_transfer_ms,
                 "device suspend": p.vdpa_suspend_ms, "device restore": p.vdpa_restore_ms, "announce": p.announce_ms}
        outage = sum(parts.values())
        slow_s = pc["precopy_s"]                    # worst case: shadow virtqueue while copying
    elif case in ("sriov_failover", "sriov_no_standby"):
        if case == "sriov_failover":   # VF gone; the standby virtio path (tracked) carries software-rate traffic
            pc = precopy(replace(p, rx_gbps=p.sw_path_gbps), device_tracked=True)
        else:                          # no NIC at all while memory is copied
            pc = precopy(p, device_tracked=False)
        parts = {"stop-and-copy": pc["stop_copy_ms"], "state": p.state_transfer_ms, "announce": p.announce_ms}
        vm_down = sum(parts.values())
        if case == "sriov_failover":
            parts = {**parts, "failover out": p.failover_ms, "failover back": p.failover_ms}
            outage = vm_down + 2 * p.failover_ms
            slow_s = p.sriov_unplug_ms / 1e3 + pc["precopy_s"] + p.sriov_plug_ms / 1e3
        else:
            parts = {**parts, "VF unplug": p.sriov_unplug_ms, "pre-copy without a NIC": 1e3 * pc["precopy_s"],
                     "VF plug + probe": p.sriov_plug_ms}
            outage = sum(parts.values())
            slow_s = 0.0
    else:
        raise ValueError(f"unknown case {case!r}")
    return {"case": case, "rounds": pc["rounds"], "precopy_s": pc["precopy_s"],
            "vm_downtime_ms": sum(v for k, v in parts.items() if k in ("stop-and-copy", "state", "announce",
                                                                         "device suspend", "device restore")),
            "network_outage_ms": outage, "slow_path_s": slow_s, "parts_ms": parts}


CASES = ("virtio_sw", "vdpa", "sriov_failover", "sriov_no_standby")


def compare(p: MigrationParams = MigrationParams()) -> List[Dict]:
    return [migrate(c, p) for c in CASES]


def outage_vs_dirty_rate(rates_gbs, p: MigrationParams = MigrationParams()) -> Dict[str, List[float]]:
    return {c: [migrate(c, replace(p, guest_dirty_gbs=r))["network_outage_ms"] for r in rates_gbs] for c in CASES}
