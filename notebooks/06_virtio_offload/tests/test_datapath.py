import struct

import pytest

import vq_datapath as dp
from vq_split import RingError


def test_parse_key_of_a_built_frame():
    f = dp.build_udp_frame("10.0.1.5", "10.0.2.9", 1234, 443, 100)
    assert len(f) == 14 + 20 + 8 + 100
    key = dp.parse_key(f, in_port=1)
    assert key == (1, 0x0800, 17, 0x0A000105, 0x0A000209, 1234, 443)
    assert dp.ip_checksum(f[14:34]) == 0   # a valid header sums to zero


def test_wildcard_classifier_priorities_and_prefixes():
    rules = [dp.rule(10, "output:2", ip_dst="10.0.2.0/24"), dp.rule(20, "drop", ip_dst="10.0.2.128/25"),
             dp.rule(0, "output:9")]
    c = dp.WildcardClassifier(rules)
    k = lambda dst: dp.parse_key(dp.build_udp_frame("10.0.1.1", dst, 1, 2, 0), 1)  # noqa: E731
    assert c.lookup(k("10.0.2.7")).action == "output:2"
    assert c.lookup(k("10.0.2.200")).action == "drop"
    assert c.lookup(k("192.168.0.1")).action == "output:9"
    assert len(c.tables) == 3   # three distinct masks


def test_miss_upcall_install_then_hit():
    p1, p2 = dp.Port.create(1, q=16), dp.Port.create(2, q=16)
    sw = dp.Switch([p1, p2], dp.default_rules(2))
    frame = dp.build_udp_frame("10.0.1.1", "10.0.2.2", 5000, 80, 64)
    assert p1.guest_send(frame)
    sw.poll(p1)
    assert sw.cost.upcalls == 1 and sw.cache.misses == 1 and sw.cache.hits == 0
    assert len(sw.cache.d) == 1 and sw.classifier.lookups == 1
    for _ in range(5):
        p1.guest_send(frame)
    sw.poll(p1)
    assert sw.cost.upcalls == 1 and sw.cache.hits == 5 and sw.classifier.lookups == 1
    got = p2.guest_receive(keep=True)
    assert got == [frame] * 6   # bytes arrive intact in the other guest's memory


def test_policy_drop_and_dns_rule():
    p1, p2 = dp.Port.create(1, q=16), dp.Port.create(2, q=16)
    sw = dp.Switch([p1, p2], dp.default_rules(2))
    p1.guest_send(dp.build_udp_frame("10.0.1.1", "10.0.2.2", 5000, 53, 10))   # DNS: dropped by priority 200
    p1.guest_send(dp.build_udp_frame("10.0.1.1", "172.16.0.1", 5000, 80, 10))  # no route: default drop
    sw.poll(p1)
    assert sw.cost.dropped == 2 and sw.cost.delivered == 0 and p2.guest_receive() == []


def test_cache_capacity_evicts_lru():
    c = dp.ExactMatchCache(capacity=2)
    c.install("a", 1), c.install("b", 2)
    assert c.get("a") == 1
    c.install("c", 3)              # evicts b (least recently used)
    assert c.get("b") is None and c.get("a") == 1 and c.evictions == 1


def test_run_traffic_counts_and_cost_split():
    cost, sw, info = dp.run_traffic(n_packets=3000, n_flows=50, payload=256, seed=1)
    assert info["sent"] == info["received"] == cost.delivered == 3000
    assert cost.upcalls == len(sw.cache.d) <= 50
    per = cost.per_packet()
    assert per["ring_ns"] > 0 and per["classify_ns"] > 0 and per["copy_ns"] > 0
    assert per["ring_ns"] + per["classify_ns"] + per["copy_ns"] <= per["total_ns"] * 1.05
    # EVENT_IDX: far fewer kicks than packets
    assert info["tx_kicks"] < 3000 / 4


def test_small_cache_means_more_upcalls():
    c_big, _, _ = dp.run_traffic(n_packets=3000, n_flows=400, cache_capacity=4096, seed=2)
    c_small, _, _ = dp.run_traffic(n_packets=3000, n_flows=400, cache_capacity=16, seed=2)
    assert c_small.upcalls > 2 * c_big.upcalls


def test_guest_send_returns_finished_tx_buffers_to_the_pool():
    """The leak: after Q sends the pool was empty forever. Now each send reclaims into tx_pool."""
    p1, p2 = dp.Port.create(1, q=8), dp.Port.create(2, q=8)
    sw = dp.Switch([p1, p2], dp.default_rules(2))
    frame = dp.build_udp_frame("10.0.1.1", "10.0.2.2", 5000, 80, 64)
    sent = 0
    for _ in range(10):                 # 50 frames through an 8-entry queue, no reclaim_tx() by the caller
        for _ in range(5):
            sent += p1.guest_send(frame)
        sw.poll(p1)
        p2.guest_receive()
    assert sent == 50 and sw.cost.delivered == 50
    p1.reclaim_tx()
    assert len(p1.tx_pool) == 8 and p1.tx_drv.num_free == 8


def test_guest_send_refuses_a_frame_larger_than_its_buffer():
    p = dp.Port.create(1, q=4, buf_size=256)
    with pytest.raises(ValueError, match="does not fit"):
        p.guest_send(bytes(256 - dp.VNET_HDR_LEN + 1))
    assert len(p.tx_pool) == 4 and p.tx_drv.num_free == 4


def _device_returns_rx(port, length):
    ch = port.rx_dev.pop()
    port.rx_dev.push(ch.head, min(length, ch.write_capacity))
    struct.pack_into("<II", port.mem.buf, port.rx_drv.base + port.rx_drv.L.used_ring(0), ch.head, length)


def test_rx_len_larger_than_the_posted_buffer_is_an_error_not_neighbouring_memory():
    p = dp.Port.create(2, q=4, buf_size=512)
    _device_returns_rx(p, 5000)
    with pytest.raises(RingError, match="len 5000"):
        p.guest_receive(keep=True)


def test_rx_len_shorter_than_the_headers_is_dropped_and_counted():
    p = dp.Port.create(2, q=4, buf_size=512)
    _device_returns_rx(p, dp.VNET_HDR_LEN - 2)
    assert p.guest_receive(keep=True) == [] and p.rx_length_errors == 1
    assert p.rx_drv.num_free == 0                # the buffer was posted again
