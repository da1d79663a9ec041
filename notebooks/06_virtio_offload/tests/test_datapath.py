import random

import vq_datapath as dp


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
