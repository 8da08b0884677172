"""Query benchmark: latency of ``ImageStore.query`` on an embedded Chroma collection.

Run: ``python -m bench.query [--vectors 100000] [--queries 200] [--k 8] [--out file.json]``.

Builds a collection through ``ImageStore`` (cosine space, imgrag's collection metadata) from
random unit vectors of dimension 1024 with small per-record metadata, added in batches of the
client's maximum batch size, then times ``ImageStore.query`` for random unit query vectors
(after a few warm-up queries): p50/p95/p99 in milliseconds. The embedding call of a real
query (one Titan text request) is excluded: this is the store's share of a query.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import format_table, machine_load, write_results
from imgrag.settings import Settings
from imgrag.store import ImageStore

DIM = 1024
WARMUP_QUERIES = 10
TARGET_P50_MS = 15.0  # at 100k vectors


def unit_vectors(rng: np.random.Generator, count: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def build(store: ImageStore, count: int, rng: np.random.Generator) -> float:
    """Add ``count`` random records in batches of the client's maximum; seconds taken."""
    started = time.perf_counter()
    for start in range(0, count, store.max_batch):
        n = min(store.max_batch, count - start)
        ids = [f"s3://bench/photos/img-{i:07d}.jpg" for i in range(start, start + n)]
        metadatas = [{"bucket": "bench", "key": uri[len("s3://bench/"):], "etag": f'"{i:032x}"',
                      "size": 250_000 + i % 1000, "width": 1920, "height": 1440}
                     for i, uri in enumerate(ids, start=start)]
        store.upsert(ids, unit_vectors(rng, n).tolist(), metadatas)
    return time.perf_counter() - started


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run(vectors: int, queries: int, k: int, path: Path, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    settings = Settings(chroma_path=path, collection="bench-query", dim=DIM)
    store = ImageStore.open(settings, create=True)
    build_s = build(store, vectors, rng)
    probes = unit_vectors(rng, WARMUP_QUERIES + queries).tolist()
    for probe in probes[:WARMUP_QUERIES]:
        store.query(probe, k=k)
    latencies_ms, hits = [], 0
    for probe in probes[WARMUP_QUERIES:]:
        started = time.perf_counter()
        hits += len(store.query(probe, k=k))
        latencies_ms.append((time.perf_counter() - started) * 1000)
    return {
        "vectors": store.count(),
        "dim": DIM,
        "k": k,
        "queries": queries,
        "hits_per_query": hits / max(queries, 1),
        "build_s": round(build_s, 2),
        "build_vectors_per_s": round(vectors / build_s, 1) if build_s else None,
        "p50_ms": round(percentile(latencies_ms, 50), 3),
        "p95_ms": round(percentile(latencies_ms, 95), 3),
        "p99_ms": round(percentile(latencies_ms, 99), 3),
        "mean_ms": round(statistics.fmean(latencies_ms), 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.query",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", "--k", type=int, default=8)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="imgrag-bench-query-"))
    try:
        load_before = machine_load()
        results = run(args.vectors, args.queries, args.k, workdir / "store")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results |= {"load_before": load_before, "load_after": machine_load(),
                "target_p50_ms": TARGET_P50_MS,
                "target_applies": args.vectors >= 100_000,
                "ok": results["p50_ms"] <= TARGET_P50_MS}
    print(f"\nimgrag query benchmark: {results['vectors']} vectors of dim {DIM}, top-{args.k}, "
          f"{args.queries} queries (embedding call excluded)")
    print(f"load before {results['load_before']}, after {results['load_after']}\n")
    keys = ("vectors", "build_s", "build_vectors_per_s", "p50_ms", "p95_ms", "p99_ms",
            "mean_ms", "target_p50_ms", "target_applies", "ok")
    print(format_table([{"measure": key, "value": results[key]} for key in keys],
                       ("measure", "value")))
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
