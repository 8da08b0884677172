"""Smoke test of ``python -m bench.query``: a tiny collection, the real store and timing code."""

from __future__ import annotations

import json

from bench import query as bench_query


def test_query_benchmark_builds_the_collection_and_reports_latency_percentiles(tmp_path, capsys):
    out = tmp_path / "query.json"

    assert bench_query.main(["--vectors", "300", "--queries", "12", "-k", "5",
                             "--out", str(out)]) == 0

    results = json.loads(out.read_text())
    assert results["vectors"] == 300
    assert results["hits_per_query"] == 5
    assert 0 < results["p50_ms"] <= results["p95_ms"] <= results["p99_ms"]
    assert results["target_applies"] is False
    assert "p50_ms" in capsys.readouterr().out


def test_percentile_picks_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert bench_query.percentile(values, 50) in (50.0, 51.0)
    assert bench_query.percentile(values, 95) == 95.0
    assert bench_query.percentile([7.0], 99) == 7.0
