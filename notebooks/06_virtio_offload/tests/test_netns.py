"""The namespace measurement: runs where namespaces can be created (root, iproute2), skips with a reason otherwise."""
import subprocess

import pytest

import vq_netns as nn
from vq_datapath import build_udp_frame, ip_checksum

OK, WHY = nn.netns_available()
needs_netns = pytest.mark.skipif(not OK, reason=f"network namespaces unavailable here: {WHY}")


def test_forward_frame_rewrites_macs_ttl_and_checksum():
    f = build_udp_frame("10.201.1.1", "10.201.2.1", 1, 2, 20)
    src, dst = nn._mac(nn.MAC["r2"]), nn._mac(nn.MAC["b0"])
    g = nn.forward_frame(f, src, dst)
    assert g[:6] == dst and g[6:12] == src and g[22] == f[22] - 1
    assert ip_checksum(g[14:34]) == 0 and g[34:] == f[34:]
    ttl1 = f[:22] + b"\x01" + f[23:]
    assert nn.forward_frame(ttl1, src, dst) is None
    assert nn.forward_frame(b"\x00" * 12 + b"\x86\xdd" + b"\x00" * 40, src, dst) is None   # IPv6: not ours


@needs_netns
def test_topology_is_removed_even_when_the_body_fails():
    before = set(nn.our_namespaces())
    with pytest.raises(RuntimeError):
        with nn.Topology(tag="tfail") as topo:
            assert set(topo.ns.values()) <= set(nn.our_namespaces())
            out = subprocess.run(["ip", "-n", topo.ns["a"], "-4", "addr", "show", "dev", "a0"],
                                 capture_output=True, text=True, check=True).stdout
            assert "10.201.1.1/24" in out
            raise RuntimeError("boom")
    assert set(nn.our_namespaces()) == before


@needs_netns
def test_kernel_and_user_forwarding_measured_and_cleaned_up():
    before = set(nn.our_namespaces())
    try:
        rows = nn.run_comparison(sizes=(1000,), seconds=1.0, max_packets=200_000)
    finally:
        assert set(nn.our_namespaces()) == before
    by = {r["mode"]: r for r in rows}
    assert set(by) == {"kernel", "user"}
    for r in rows:
        assert r["received"] > 0 and r["sent"] >= r["received"] and r["gbps"] > 0
    assert by["user"]["forwarder_cpu_s"] > 0 and by["kernel"]["forwarder_cpu_s"] == 0
    # with forwarding off, the kernel does not forward: everything that arrived went through user space
    assert by["user"]["received"] <= by["user"]["sent"]


def test_unavailable_reason_is_a_sentence():
    assert isinstance(WHY, str) and WHY


def test_a_machine_without_iproute2_gets_defined_answers(monkeypatch):
    """A GPU container without `ip` (seen on the H200 image): no crash, the notebook shows recorded numbers."""
    import shutil
    import vq_netns
    monkeypatch.setattr(shutil, "which", lambda name: None)

    def no_ip(*args, **kw):
        raise FileNotFoundError(2, "No such file or directory", "ip")
    monkeypatch.setattr(vq_netns, "_ip", no_ip)
    ok, why = vq_netns.netns_available()
    assert not ok and "iproute2" in why
    assert vq_netns.our_namespaces() == []
