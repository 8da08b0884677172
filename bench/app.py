"""Search app benchmark: HTTP latency of the app beside the CLI's terminal query, one store.

Run: ``python -m bench.app [--vectors 100000] [--requests 300] [--clients 50] [--seconds 30]
[--out file.json]``.

Builds a collection of random unit vectors (dim 1024, as ``bench.query``) plus a few real
photo files indexed through the pipeline (so thumbnails have a source), starts the Titan
emulator and ``python -m imgrag.app`` in their own processes on loopback, and measures:

- ``GET /api/search`` with a text whose vector is cached (after one warm-up that embeds it);
- ``GET /api/similar/{id}`` (stored vector) and ``GET /api/thumbnail/{id}`` once cached;
- ``--clients`` concurrent clients (threads with keep-alive connections) for ``--seconds``,
  alternating a cached search and a cached thumbnail: errors and latency percentiles;
- ``python -m flows.query TEXT`` in a terminal against a running Prefect server, same
  store and same cached text: wall time of the whole command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from bench.common import (
    PhotoFactory,
    clean_environ,
    format_table,
    hermetic_env,
    machine_load,
    run_child,
    start_fake_bedrock,
    start_prefect_server,
    wait_http_ok,
    write_results,
)
from bench.query import build, percentile
from imgrag.emulators.chroma_server import free_port
from imgrag.settings import Settings
from imgrag.store import ImageStore

COLLECTION = "bench-app"
PHOTOS = 24
TEXTS = [f"red photo {i}" for i in range(10)]
TARGETS_MS = {"search": (20.0, 50.0), "thumbnail": (10.0, None)}  # p50, p95 at 100k vectors


def index_photos(settings: Settings, folder: Path) -> list[str]:
    """Write photo-like JPEGs and index them through the pipeline; their record ids."""
    from imgrag.pipeline import Runtime, process_batch

    factory = PhotoFactory()
    folder.mkdir(parents=True)
    for i in range(PHOTOS):
        (folder / f"photo-{i:03d}.jpg").write_bytes(factory.photo(i % 4))  # small sizes only
    rt = Runtime.open(settings, str(folder))
    try:
        objects = list(rt.source.list_objects())
        result = process_batch(rt, objects, "bench")
    finally:
        rt.close()
    assert result.upserted == PHOTOS, result.failures[:1]
    return [o.uri for o in objects]


def timed(fn: Callable[[], httpx.Response], count: int) -> list[float]:
    """Milliseconds of ``count`` calls, each answered 200."""
    out = []
    for _ in range(count):
        started = time.perf_counter()
        response = fn()
        out.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return out


def summary(name: str, ms: Sequence[float]) -> dict[str, Any]:
    return {"measure": name, "n": len(ms), "p50_ms": round(percentile(ms, 50), 2),
            "p95_ms": round(percentile(ms, 95), 2), "p99_ms": round(percentile(ms, 99), 2)}


def load_test(url: str, clients: int, seconds: float, photo_ids: list[str]
              ) -> dict[str, Any]:
    """``clients`` threads alternate a cached search and a cached thumbnail for ``seconds``."""
    latencies: dict[str, list[float]] = {"search": [], "thumbnail": []}
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            i = n
            while time.monotonic() < stop:
                i += 1
                kind = "search" if i % 2 else "thumbnail"
                path = (f"/api/search?q={quote(TEXTS[i % len(TEXTS)])}&k=8" if kind == "search"
                        else f"/api/thumbnail/{quote(photo_ids[i % PHOTOS], safe='')}")
                started = time.perf_counter()
                try:
                    status = http.get(path).status_code
                except httpx.HTTPError as exc:
                    status, detail = 0, type(exc).__name__
                ms = (time.perf_counter() - started) * 1000
                with lock:
                    if status == 200:
                        latencies[kind].append(ms)
                    else:
                        errors.append(f"{kind}: {status or detail}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    everything = latencies["search"] + latencies["thumbnail"]
    return {"clients": clients, "seconds": round(wall, 1), "requests": len(everything),
            "requests_per_s": round(len(everything) / wall, 1), "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "all": summary("all", everything), "search": summary("search", latencies["search"]),
            "thumbnail": summary("thumbnail", latencies["thumbnail"])}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    env = clean_environ(hermetic_env(work))
    bedrock = start_fake_bedrock(latency_ms=100, quota_rps=None, env=env)
    env["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = bedrock.url
    services = [bedrock]
    try:
        settings = Settings(chroma_path=work / "store", collection=COLLECTION, dim=1024)
        store = ImageStore.open(settings, create=True)
        build_s = build(store, args.vectors, np.random.default_rng(0))
        os.environ.update(env)  # the pipeline in this process reaches the same emulator
        photo_ids = index_photos(settings, work / "photos")
        vectors = store.count()
        del store
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        app = subprocess.Popen(
            [sys.executable, "-m", "imgrag.app", "--port", str(port), "--chroma-path",
             str(settings.chroma_path), "--collection", COLLECTION],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http_ok(f"{url}/healthz", app, timeout=120)
            results = measure(args, url, photo_ids)
        finally:
            app.terminate()
            app.wait(timeout=30)
        prefect = start_prefect_server(env)
        services.append(prefect)
        wait_http_ok(f"{prefect.url}/health", prefect.proc, timeout=180)
        query = [sys.executable, "-m", "flows.query", TEXTS[0], "-k", "8", "--chroma-path",
                 str(settings.chroma_path), "--collection", COLLECTION]
        cli = [run_child(query, env | {"PREFECT_API_URL": prefect.url}) for _ in range(4)]
        assert all(c.returncode == 0 for c in cli), cli[0].stderr[-500:]
        cli = cli[1:]  # the first run warms the new server's database up
        walls = sorted(c.wall_s for c in cli)
    finally:
        for service in services:
            service.stop()
    return {"vectors": vectors, "build_s": round(build_s, 1), **results,
            "cli_query_s": {"median": round(walls[1], 2), "min": round(walls[0], 2),
                            "max": round(walls[2], 2)}}


def measure(args: argparse.Namespace, url: str, photo_ids: list[str]) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=30) as http:
        started = time.perf_counter()
        first = http.get("/api/search", params={"q": TEXTS[0], "k": 8}).json()
        miss_ms = (time.perf_counter() - started) * 1000
        assert not first["embedding_cached"]
        for text in TEXTS[1:]:
            http.get("/api/search", params={"q": text, "k": 8}).raise_for_status()
        for rid in photo_ids:  # the first request of each makes its thumbnail
            http.get(f"/api/thumbnail/{quote(rid, safe='')}").raise_for_status()
        n = args.requests
        search = timed(lambda: http.get("/api/search", params={"q": TEXTS[0], "k": 8}), n)
        similar_path = f"/api/similar/{quote(photo_ids[0], safe='')}"
        similar = timed(lambda: http.get(similar_path, params={"k": 8}), n)
        thumb_path = f"/api/thumbnail/{quote(photo_ids[1], safe='')}"
        thumbnail = timed(lambda: http.get(thumb_path), n)
        stats = timed(lambda: http.get("/api/stats"), max(n // 5, 20))
    rows = [summary("GET /api/search (cached text)", search),
            summary("GET /api/similar/{id}", similar),
            summary("GET /api/thumbnail/{id} (cached)", thumbnail),
            summary("GET /api/stats", stats)]
    return {"search_uncached_ms": round(miss_ms, 1), "endpoints": rows,
            "concurrent": load_test(url, args.clients, args.seconds, photo_ids)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.app",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300, help="per endpoint, sequential")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="imgrag-bench-app-"))
    try:
        load_before = machine_load()
        results = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results |= {"load_before": load_before, "load_after": machine_load()}
    print(f"\nimgrag search app benchmark: {results['vectors']} vectors of dim 1024, top-8, "
          f"loopback; load before {load_before}, after {results['load_after']}\n")
    print(format_table(results["endpoints"], ("measure", "n", "p50_ms", "p95_ms", "p99_ms")))
    c = results["concurrent"]
    print(f"\n{c['clients']} concurrent clients for {c['seconds']} s: {c['requests']} requests "
          f"({c['requests_per_s']}/s), {c['errors']} errors"
          + (f" (first: {c['first_error']})" if c["errors"] else ""))
    print(format_table([c["all"], c["search"], c["thumbnail"]],
                       ("measure", "n", "p50_ms", "p95_ms", "p99_ms")))
    cli = results["cli_query_s"]
    print(f"\nfirst search of a new text (one Titan call, emulator at 100 ms): "
          f"{results['search_uncached_ms']} ms")
    print(f"CLI terminal query (python -m flows.query, Prefect server running, cached text): "
          f"median {cli['median']} s (min {cli['min']}, max {cli['max']})")
    search = results["endpoints"][0]
    thumb = results["endpoints"][2]
    (search_p50, search_p95), (thumb_p50, _) = TARGETS_MS["search"], TARGETS_MS["thumbnail"]
    ok = (search["p50_ms"] <= search_p50 and search["p95_ms"] <= search_p95
          and thumb["p50_ms"] <= thumb_p50 and c["errors"] == 0)
    print(f"targets (search p50 ≤ 20 ms, p95 ≤ 50 ms; thumbnail p50 ≤ 10 ms; no error): "
          f"{'met' if ok else 'NOT met'}")
    write_results(args.out, results | {"ok": ok})
    return 0


if __name__ == "__main__":
    sys.exit(main())
