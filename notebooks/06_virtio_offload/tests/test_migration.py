from dataclasses import replace

import vq_migration as mg


def test_precopy_converges_and_respects_the_limit():
    p = mg.MigrationParams()
    r = mg.precopy(p, device_tracked=True)
    assert r["rounds"] < p.max_rounds and r["stop_copy_ms"] <= p.downtime_limit_ms
    assert r["precopy_s"] > p.mem_gib * 1.07 / (p.link_gbps / 8) * 0.99   # at least one full copy


def test_precopy_does_not_converge_when_dirtying_faster_than_the_link():
    p = replace(mg.MigrationParams(), guest_dirty_gbs=10.0, guest_wss_gib=16.0, max_rounds=5)
    r = mg.precopy(p, device_tracked=True)
    assert r["rounds"] == 5 and r["stop_copy_ms"] > p.downtime_limit_ms


def test_ordering_of_the_cases():
    rows = {r["case"]: r for r in mg.compare()}
    assert rows["virtio_sw"]["network_outage_ms"] <= rows["vdpa"]["network_outage_ms"]
    assert rows["vdpa"]["network_outage_ms"] < rows["sriov_failover"]["network_outage_ms"]
    assert rows["sriov_failover"]["network_outage_ms"] < rows["sriov_no_standby"]["network_outage_ms"]
    assert rows["sriov_failover"]["slow_path_s"] > rows["vdpa"]["slow_path_s"] >= 0


def test_outage_grows_with_device_dma_when_tracked():
    lo = mg.migrate("vdpa", replace(mg.MigrationParams(), rx_wss_mib=1))["parts_ms"]["stop-and-copy"]
    hi = mg.migrate("vdpa", replace(mg.MigrationParams(), rx_wss_mib=512))["parts_ms"]["stop-and-copy"]
    assert hi > lo
