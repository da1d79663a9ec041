from dataclasses import replace

import pytest

import vq_model as m


@pytest.fixture(scope="module")
def calibrated_runs():
    return m.reproduce(n_packets=60_000, seed=0)


def test_calibrated_set_reproduces_the_seed_within_10_percent(calibrated_runs):
    metrics = m.metrics_from(calibrated_runs)
    assert set(metrics) == set(m.SEED_FIGURES)
    errs = m.relative_errors(metrics)
    assert max(errs.values()) < 0.10, errs


def test_mechanism_software_is_datapath_bound_offload_is_app_bound(calibrated_runs):
    sw, hw = calibrated_runs["sw"], calibrated_runs["hw"]
    assert sw.dp_util > 0.9 and sw.app_util < 0.6
    assert hw.app_util > 0.9 and hw.dropped == 0
    assert sw.dropped > 0 and sw.sent == sw.processed + sw.dropped


def test_event_accounting():
    r = m.simulate("hw", n_packets=5000)
    assert r.processed == 5000 and r.events == r.sent + 2 * r.processed   # arrival, datapath, app


def test_more_cores_do_not_help_a_single_vhost_thread_but_do_help_offload():
    p = m.calibrated()
    sw4, sw12 = (m.simulate("sw", replace(p, cores=c), 20_000) for c in (4, 12))
    hw4, hw12 = (m.simulate("hw", replace(p, cores=c), 20_000) for c in (4, 12))
    assert abs(sw12.gbps - sw4.gbps) / sw4.gbps < 0.05
    assert hw12.gbps > 2 * hw4.gbps


def test_offload_table_smaller_than_flow_count_sends_traffic_to_the_slow_path():
    p = replace(m.calibrated(), flows=250_000)
    small = m.simulate("hw", replace(p, offload_table=16_384), 20_000)
    big = m.simulate("hw", replace(p, offload_table=1 << 20), 20_000)
    assert small.slow_path_pct > 80 and big.slow_path_pct < 5
    assert big.gbps > 1.5 * small.gbps


def test_no_drops_with_few_tokens():
    r = m.simulate("sw", replace(m.calibrated(), tokens=200), 20_000)
    assert r.dropped == 0 and r.processed_pct == pytest.approx(100.0)


def test_bad_mode():
    with pytest.raises(ValueError):
        m.simulate("dpdk")
