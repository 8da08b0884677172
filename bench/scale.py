"""Scale benchmark: each store as the index grows (10k, 100k, 1M records of dim 256).

Run: ``python -m bench.scale [--stores chroma,pgvector] [--records 10000,100000,1000000]
[--postgres-url URL] [--max-fill-s 2400] [--out file.json]``.

Per store, the collection is filled step by step to each size with the store's own
``upsert`` (batches of 1,000 records with ingest's metadata, random unit vectors), and at
each size it measures:

- ``upsert_per_s``: records written per second by ``upsert`` into the indexed collection
  (the first 10,000 records of each step);
- ``manifest_s``: reading the whole manifest (``iter_manifest``) once;
- ``plan_ms_per_object`` and ``plan_rss_mb``: a no-change re-run planned in a fresh child
  process: the store opened, then the listing (an in-process stream of the same objects,
  sorted, as S3 would list them) planned against the streamed manifest, the sweep included.
  The figure is that planning time over the number of objects (the child's start-up and
  the store's opening are not in it); RSS is the child's peak, next to its RSS before
  planning (``base_rss_mb``), so growth with the index shows;
- ``query_p50/p95_ms`` (top-8, embedding call excluded), with and without a prefix filter
  that keeps 1% of the records (one folder of 100).

The PostgreSQL server is ``--postgres-url`` or one started from the pgserver wheel. A fill
that would go past ``--max-fill-s`` stops the run for that store (sizes not reached are
left out); an HNSW build past ``--max-index-s`` leaves that size's queries untimed. On
pgvector the rest of a step (past its first 10,000 records) is loaded with the HNSW index
dropped and the index is built again at the end (``index_build_s``), as a bulk load
would: inserting into HNSW row by row is what ``upsert_per_s`` measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from bench.common import format_table, machine_load, write_results
from bench.query import percentile
from imgrag.filters import QueryFilters
from imgrag.normalize import NORMALIZE_VERSION
from imgrag.records import SourceObject
from imgrag.settings import Settings
from imgrag.stores import VectorStore, open_store, vector_space

DIM = 256
BATCH = 1000
FOLDERS = 100
TIMED = 10_000  # records of each step upserted into the indexed collection, timed
TARGET_MS_PER_OBJECT = 0.05
BUCKET = "bench"
SCOPE = f"s3://{BUCKET}/photos/"
MODIFIED = datetime(2026, 1, 1, tzinfo=UTC)


def key(i: int) -> str:
    return f"photos/d{i % FOLDERS:03d}/img-{i:08d}.jpg"


def etag(i: int) -> str:
    return f'"{i:032x}"'


def metadata(i: int) -> dict[str, Any]:
    """What ``imgrag.pipeline.record_metadata`` writes for one image."""
    k = key(i)
    return {"source_uri": f"s3://{BUCKET}/{k}", "bucket": BUCKET, "key": k, "etag": etag(i),
            "size": 250_000 + i % 1000, "last_modified": MODIFIED.isoformat(),
            "width": 1920, "height": 1440, "format": "JPEG", "model_id": "bench",
            "dim": DIM, "normalize_version": NORMALIZE_VERSION,
            "ingested_at": MODIFIED.isoformat(), "run_id": "bench",
            "dirs": ["photos/", k[: k.rfind("/") + 1]], "last_modified_ts": MODIFIED.timestamp()}


def unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.standard_normal((count, DIM), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def listing(count: int) -> Iterator[SourceObject]:
    """The objects of a ``count``-record index as S3 would list them (sorted by key),
    generated one by one (the listing itself holds no memory)."""
    for folder in range(FOLDERS):
        for i in range(folder, count, FOLDERS):
            k = key(i)
            yield SourceObject(uri=f"s3://{BUCKET}/{k}", bucket=BUCKET, key=k, etag=etag(i),
                               size=250_000 + i % 1000, last_modified=MODIFIED)


def upsert_range(store: VectorStore, start: int, stop: int, rng: np.random.Generator,
                 deadline: float) -> bool:
    """Upsert records ``start..stop`` in batches; False when the deadline passed."""
    for first in range(start, stop, BATCH):
        last = min(first + BATCH, stop)
        ids = [f"s3://{BUCKET}/{key(i)}" for i in range(first, last)]
        store.upsert(ids, unit_vectors(rng, last - first).tolist(),
                     [metadata(i) for i in range(first, last)])
        if time.monotonic() > deadline:
            return False
    return True


def fill(store: VectorStore, settings: Settings, start: int, stop: int,
         rng: np.random.Generator, deadline: float, max_index_s: float) -> dict[str, Any] | None:
    """Upsert records ``start..stop``: the first ``TIMED`` timed, the rest as a bulk load
    on pgvector; the figures, or None past the deadline."""
    timed = min(stop, start + TIMED)
    started = time.perf_counter()
    if not upsert_range(store, start, timed, rng, deadline):
        return None
    figures: dict[str, Any] = {"upsert_per_s": round((timed - start)
                                                      / (time.perf_counter() - started))}
    bulk = settings.store_kind == "pgvector" and stop > timed
    index = f"{settings.collection}_embedding_hnsw"
    if bulk:
        store.conn.execute(f"DROP INDEX {index}")
    if not upsert_range(store, timed, stop, rng, deadline):
        return None
    if bulk:
        started = time.perf_counter()
        store.conn.execute("SET maintenance_work_mem = '2GB'")
        store.conn.execute(f"SET statement_timeout = '{int(max_index_s)}s'")
        try:
            store.conn.execute(f"CREATE INDEX {index} ON {settings.collection}"
                               " USING hnsw (embedding vector_cosine_ops)")
        except psycopg.errors.QueryCanceled:
            print(f"HNSW build past --max-index-s at {stop} records: queries not timed")
            figures["index_build_s"] = None
        else:
            figures["index_build_s"] = round(time.perf_counter() - started, 1)
        store.conn.execute("SET statement_timeout = 0")
    return figures


def time_manifest(store: VectorStore) -> tuple[float, int]:
    started = time.perf_counter()
    count = sum(1 for _ in store.iter_manifest(BUCKET, SCOPE))
    return time.perf_counter() - started, count


def time_queries(store: VectorStore, rng: np.random.Generator, where: dict[str, Any] | None,
                 queries: int) -> tuple[float, float, float]:
    """p50, p95 (ms) and hits per query of top-8 queries."""
    probes = unit_vectors(rng, 10 + queries).tolist()
    for probe in probes[:10]:
        store.query(probe, k=8, where=where)
    latencies, hits = [], 0
    for probe in probes[10:]:
        started = time.perf_counter()
        hits += len(store.query(probe, k=8, where=where))
        latencies.append((time.perf_counter() - started) * 1000)
    return percentile(latencies, 50), percentile(latencies, 95), hits / queries


def rss_mb(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident memory, MB; unlike
    ``ru_maxrss``, not inherited from the process that started this one."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def rerun(settings_json: str, count: int) -> dict[str, Any]:
    """The no-change re-run, in this (fresh) process: plan ``count`` listed objects."""
    from imgrag.sync import ScopePlanner

    settings = Settings.model_validate_json(settings_json)
    model_id, dim = vector_space(settings)  # as a query would: the collection's own
    store = open_store(settings.model_copy(update={"model": model_id, "dim": dim}),
                       create=False)
    base = rss_mb("VmRSS")
    started = time.perf_counter()
    planner = ScopePlanner(SCOPE, store.iter_manifest(BUCKET, SCOPE))
    todo = sum(1 for _ in planner.todo(listing(count)))
    sweep = planner.sweep()
    seconds = time.perf_counter() - started
    plan = planner.plan
    assert (todo, plan.unchanged, len(sweep.deleted)) == (0, count, 0), plan
    return {"plan_s": round(seconds, 3), "base_rss_mb": round(base, 1),
            "plan_rss_mb": round(rss_mb(), 1)}


def measure(store: VectorStore, settings: Settings, count: int, rng: np.random.Generator,
            queries: int, indexed: bool) -> dict[str, Any]:
    manifest_s, listed = time_manifest(store)
    assert listed == count, (listed, count)
    child = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--rerun", str(count),
         "--settings", settings.model_dump_json()],
        capture_output=True, text=True, check=True)
    planned = json.loads(child.stdout)
    row = {"manifest_s": round(manifest_s, 3),
           "plan_ms_per_object": round(planned["plan_s"] * 1000 / count, 4), **planned}
    if not indexed:
        return row
    folder = QueryFilters(prefix="photos/d007/").conditions()[0]
    p50, p95, _ = time_queries(store, rng, None, queries)
    p50_prefix, p95_prefix, hits = time_queries(store, rng, folder, queries)
    assert hits == min(8, count // FOLDERS), hits  # exact within the filter
    return row | {"query_p50_ms": round(p50, 2), "query_p95_ms": round(p95, 2),
                  "prefix_p50_ms": round(p50_prefix, 2), "prefix_p95_ms": round(p95_prefix, 2)}


def run_store(kind: str, sizes: Sequence[int], workdir: Path, postgres_url: str | None,
              limits: argparse.Namespace) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    if kind == "pgvector":
        settings = Settings(store_url=f"{postgres_url}{'&' if '?' in postgres_url else '?'}"
                                      "table=bench_scale", dim=DIM)
    else:
        settings = Settings(chroma_path=workdir / "chroma", collection="bench-scale",
                            dim=DIM)
    store = open_store(settings)
    rows, filled = [], 0
    deadline = time.monotonic() + limits.max_fill_s
    for size in sizes:
        figures = fill(store, settings, filled, size, rng, deadline, limits.max_index_s)
        if figures is None:
            print(f"{kind}: filling to {size} records went past --max-fill-s; stopped",
                  flush=True)
            break
        filled = size
        row = {"store": kind, "records": size, **figures}
        indexed = figures.get("index_build_s", 0) is not None
        row |= measure(store, settings, size, rng, limits.queries, indexed)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if kind == "pgvector":
        store.conn.execute(f"DROP TABLE {settings.collection}")
        store.conn.execute("DELETE FROM imgrag_catalog WHERE name = %s", [settings.collection])
    store.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="chroma,pgvector")
    parser.add_argument("--records", default="10000,100000,1000000")
    parser.add_argument("--postgres-url", help="a PostgreSQL with pgvector (default: pgserver)")
    parser.add_argument("--max-fill-s", type=float, default=2400.0,
                        help="stop filling a store after this many seconds")
    parser.add_argument("--max-index-s", type=float, default=1800.0,
                        help="give up building pgvector's HNSW index after this many seconds")
    parser.add_argument("--queries", type=int, default=100, help="timed queries per kind")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--rerun", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rerun:
        print(json.dumps(rerun(args.settings, args.rerun)))
        return 0

    sizes = sorted(int(n) for n in args.records.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="imgrag-bench-scale-"))
    load_before, rows = machine_load(), []
    try:
        for kind in args.stores.split(","):
            if kind == "pgvector" and not args.postgres_url:
                from imgrag.emulators.postgres import PostgresServer

                with PostgresServer(workdir / "pg") as server:
                    rows += run_store(kind, sizes, workdir, server.url, args)
            else:
                rows += run_store(kind, sizes, workdir, args.postgres_url, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = {"dim": DIM, "rows": rows, "load_before": load_before,
               "load_after": machine_load(), "target_ms_per_object": TARGET_MS_PER_OBJECT}
    print(f"\nimgrag scale benchmark, dim {DIM}; load before {load_before},"
          f" after {results['load_after']}\n")
    print(format_table(rows, ("store", "records", "upsert_per_s", "index_build_s", "manifest_s",
                              "plan_ms_per_object", "base_rss_mb", "plan_rss_mb",
                              "query_p50_ms", "query_p95_ms", "prefix_p50_ms",
                              "prefix_p95_ms")))
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    sys.exit(main())
