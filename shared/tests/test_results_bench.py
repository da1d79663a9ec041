import json
import math

import pytest

import labkit
from labkit import results


def test_record_writes_the_contract(build_root):
    path = labkit.record("99_demo", "smoke", {"psnr_db": 31.5, "steps": 10})
    assert path == build_root / "results" / "99_demo.smoke.json"
    doc = json.loads(path.read_text())
    assert set(doc) >= {"notebook", "profile", "created", "machine", "metrics"}
    assert doc["metrics"] == {"psnr_db": 31.5, "steps": 10}
    assert {"cpu", "gpu", "gpu_count", "versions"} <= set(doc["machine"])


@pytest.mark.parametrize("bad", [{"x": "fast"}, {"x": math.nan}, {"x": True}, {"x": [1]}])
def test_record_refuses_non_numbers(build_root, bad):
    with pytest.raises((TypeError, ValueError)):
        labkit.record("99_demo", "smoke", bad)


def test_compare_table_puts_run_reference_and_source_side_by_side():
    ref = {"created": "2026-11-26", "machine": {"gpu": "NVIDIA H100"}, "metrics": {"psnr_db": 35.2}}
    table = labkit.compare_table({"psnr_db": 30.04}, ref, {"psnr_db": "33.18 (Instant-NGP paper)"}, digits=1)
    row = table.loc["psnr_db"]
    assert row["this run"] == 30.0
    assert any("H100" in c for c in table.columns)
    assert row["source (paper/blog)"].startswith("33.18")


def test_missing_reference_is_none():
    assert results.load_reference("no_such_notebook") is None


def test_time_it_counts_repeats_and_orders_percentiles():
    calls = []
    t = labkit.time_it(lambda: calls.append(1), repeat=7, warmup=2)
    assert len(calls) == 9 and len(t.samples) == 7
    assert t.percentile(0) <= t.median <= t.percentile(100)


def test_stopwatch_measures_something():
    with labkit.Stopwatch() as sw:
        sum(range(10000))
    assert sw.seconds > 0
