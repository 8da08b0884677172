"""Benchmark of the retrieval side: text-query latency with and without the text-embedding
cache, and the size of the HTML gallery and PNG contact sheet.

Run: ``python -m bench.retrieval [--queries 50] [--latencies 0,100] [--out file.json]``.

Everything is local: the Titan EMULATOR (with the given per-call latency standing in for
Bedrock's), an embedded Chroma store of synthetic photo-like images, the real library code.
For each latency, ``--queries`` searches of one text are timed three ways:

- ``no cache``: ``search_text`` with a ready embedder and no cache (every query calls Bedrock);
- ``cache miss``: a new text each time, cache on (Bedrock call + one cache write);
- ``cache hit``: ``run_search`` as the query task runs it (opens the cache, builds no Bedrock
  client, makes no Bedrock call).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.normalize import synthetic_photo
from imgrag.embedders import make_embedder
from imgrag.emulators.bedrock import FakeBedrock
from imgrag.gallery import contact_sheet, render_html
from imgrag.pipeline import Runtime, process_batch
from imgrag.query import SearchRequest, open_text_cache, run_search, search_text
from imgrag.settings import Settings
from imgrag.store import ImageStore
from imgrag.thumbnails import ThumbnailLoader

PHOTOS = 24
PHOTO_SIZE = (1600, 1200)


def _hermetic_env() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["ANONYMIZED_TELEMETRY"] = "False"


def _timed_ms(fn: Callable[[int], object], n: int) -> dict[str, float]:
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"mean_ms": round(statistics.fmean(times), 2),
            "p50_ms": round(statistics.median(times), 2),
            "p95_ms": round(times[min(n - 1, int(0.95 * n))], 2)}


def write_photos(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i in range(PHOTOS):
        buffer = io.BytesIO()
        synthetic_photo(PHOTO_SIZE, seed=i).save(buffer, "JPEG", quality=90)
        (folder / f"photo-{i:02d}.jpg").write_bytes(buffer.getvalue())


def measure_latency(settings: Settings, bedrock: FakeBedrock, latency_ms: float,
                    queries: int) -> dict[str, Any]:
    bedrock.latency_ms = latency_ms
    store = ImageStore.open(settings, create=False)
    embedder = make_embedder(settings)
    cache = open_text_cache(settings)
    text = f"a sunny street at latency {latency_ms}"
    result = {
        "no cache": _timed_ms(lambda i: search_text(store, embedder, text, 8), queries),
        "cache miss": _timed_ms(lambda i: search_text(store, embedder, f"{text} #{i}", 8,
                                                      cache=cache), queries),
    }
    run_search(settings, SearchRequest(text=text), store=store)  # fill the cache
    before = bedrock.stats.text_calls
    result["cache hit"] = _timed_ms(
        lambda i: run_search(settings, SearchRequest(text=text), store=store), queries)
    result["bedrock calls during cache hits"] = bedrock.stats.text_calls - before
    cache.close()
    return result


def measure_outputs(settings: Settings, out_dir: Path) -> dict[str, Any]:
    hits = run_search(settings, SearchRequest(text="a sunny street", k=8))
    thumbs = ThumbnailLoader(settings).load(hits)
    html_path = out_dir / "gallery.html"
    html_path.write_text(render_html(hits, thumbs, '"a sunny street"'), encoding="utf-8")
    sheet = contact_sheet(hits, thumbs, '"a sunny street"')
    png_path = out_dir / "sheet.png"
    sheet.save(png_path, "PNG", optimize=True)
    return {
        "hits": len(hits),
        "source_images": f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG",
        "thumbnail_kb_mean": round(statistics.fmean(len(t.data or b"") for t in thumbs) / 1024,
                                   1),
        "html_kb": round(html_path.stat().st_size / 1024, 1),
        "png_px": f"{sheet.width}x{sheet.height}",
        "png_kb": round(png_path.stat().st_size / 1024, 1),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--latencies", default="0,100", help="emulated Bedrock ms per call")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    _hermetic_env()
    results: dict[str, Any] = {"queries": args.queries, "latency": {}}
    with tempfile.TemporaryDirectory(prefix="imgrag-bench-") as tmp, FakeBedrock() as bedrock:
        os.environ["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = bedrock.url
        work = Path(tmp)
        write_photos(work / "photos")
        settings = Settings(chroma_path=work / "store", collection="bench")
        rt = Runtime.open(settings, str(work / "photos"))
        process_batch(rt, list(rt.source.list_objects()), "bench")
        rt.close()
        for latency in (float(x) for x in args.latencies.split(",")):
            results["latency"][f"{latency:g} ms"] = measure_latency(settings, bedrock, latency,
                                                                   args.queries)
        results["outputs"] = measure_outputs(settings, work)
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
