"""Smoke test of ``python -m bench.ingest``: the real command on a tiny bucket, every phase
(``--quick``: cheap phases once, no import or ephemeral-mode timings).

It proves the benchmark still runs end to end and that its counters count (images, Bedrock
calls, S3 GETs, peak RSS of the CLI children); the full-size figures are not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.ingest import nesting

REPO = Path(__file__).resolve().parent.parent


def test_nested_prefixes_hold_exactly_the_first_n_objects():
    keys, prefixes = nesting(10, [3, 7])

    for size, prefix in prefixes.items():
        assert sum(key.startswith(prefix) for key in keys) == size
        assert all(key.startswith(prefix) for key in keys[:size])
    assert len(set(keys)) == 10


def test_ingest_benchmark_runs_every_phase_and_counts_what_it_claims(tmp_path):
    out = tmp_path / "ingest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--images", "6", "--latency-ms", "0",
         "--rss-images", "3,6", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    phases = {p["name"]: p for p in results["phases"]}

    assert (phases["baseline"]["images"], phases["baseline"]["s3_gets"]) == (6, 6)
    first = phases["first"]
    assert (first["images"], first["bedrock_calls"], first["s3_gets"], first["failed"]) == (
        6, 6, 6, 0)
    assert (phases["rerun"]["bedrock_calls"], phases["rerun"]["s3_gets"]) == (0, 0)
    assert phases["rerun"]["s3_lists"] >= 1
    assert phases["empty"]["images"] == 0
    assert results["changed_objects"] == 1
    assert phases["changed"]["bedrock_calls"] == phases["changed"]["images"] == 1
    assert [m["embedded"] for m in results["memory"]] == [3, 6]
    assert all(50 < m["peak_rss_mb"] < 4000 for m in results["memory"])
    assert results["prefect"]["cli_empty_with_server_s"] > 0
    assert {t["target"] for t in results["targets"]} >= {"rerun Bedrock calls + S3 GETs"}
    assert "targets" in done.stdout
