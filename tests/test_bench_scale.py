"""Smoke test of ``python -m bench.scale``: both stores at a tiny size, the real code."""

from __future__ import annotations

import json

from bench import scale


def test_scale_benchmark_measures_each_store_at_each_size(tmp_path, postgres_url, capsys,
                                                          monkeypatch):
    out = tmp_path / "scale.json"
    monkeypatch.setattr(scale, "TIMED", 300)  # the pgvector bulk path runs too

    assert scale.main(["--stores", "chroma,pgvector", "--records", "400", "--queries", "5",
                       "--postgres-url", postgres_url, "--out", str(out)]) == 0

    rows = json.loads(out.read_text())["rows"]
    assert [(r["store"], r["records"]) for r in rows] == [("chroma", 400), ("pgvector", 400)]
    for row in rows:
        assert row["upsert_per_s"] > 0 and row["manifest_s"] > 0
        assert row["plan_ms_per_object"] > 0 and 0 < row["base_rss_mb"] <= row["plan_rss_mb"]
        assert 0 < row["prefix_p50_ms"] <= row["prefix_p95_ms"]
    assert rows[-1]["index_build_s"] >= 0
    assert "plan_ms_per_object" in capsys.readouterr().out


def test_the_listing_streams_the_index_in_key_order():
    assert [o.key for o in scale.listing(250)] == sorted(scale.key(i) for i in range(250))
