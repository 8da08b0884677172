"""Sharded vs single ingest into one Chroma server, run the way a team runs it.

Run: ``python -m bench.sharding [--images N] [--latency-ms L] [--shards S] [--out file.json]``.

Starts, each in its own process, the Titan EMULATOR (per-call latency L), a moto S3 server,
a Prefect API server and a Chroma server (``chroma run``); fills a bucket with N photo-like
JPEGs (mixed sizes, as in ``bench.ingest``); then runs the ingest CLI as separate processes,
as N Prefect workers would (``python -m flows.ingest --chroma-url URL --json``):

- ``single``: one unsharded run into the collection ``single``;
- ``sharded``: S runs ``--shard i/S`` started at once into the collection ``sharded``.

Per phase: wall time from the first start to the last exit (process start-up included),
each run's own flow duration and images embedded, Bedrock invoke requests (the emulator's
counter) and the records in the collection; finally whether both collections hold the
same ids with the same ETags. Each run has its own state directory, as on separate hosts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import (
    BedrockMeter,
    PhotoFactory,
    clean_environ,
    format_table,
    hermetic_env,
    machine_load,
    parallel,
    start_fake_bedrock,
    start_moto,
    start_prefect_server,
    wait_http_ok,
)
from imgrag.emulators.chroma_server import ChromaServer

BUCKET = "imgrag-bench-shards"
PREFIX = "photos/"


def run_ingests(name: str, shards: int, env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Start ``shards`` ingest CLI processes at once (one unsharded run when 1); wait for all."""
    procs = []
    started = time.perf_counter()
    for index in range(shards):
        cmd = [sys.executable, "-m", "flows.ingest", "--source", f"s3://{BUCKET}/{PREFIX}",
               "--collection", name, "--json"]
        if shards > 1:
            cmd += ["--shard", f"{index}/{shards}"]
        run_env = env | {"IMGRAG_STATE_DIR": str(workdir / f"state-{name}-{index}")}
        procs.append(subprocess.Popen(cmd, env=run_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    reports = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: ingest exited {proc.returncode}: {err[-2000:]}")
        reports.append(json.loads(out))
    return {
        "phase": name,
        "runs": shards,
        "wall_s": round(time.perf_counter() - started, 2),
        "flow_s": "/".join(f"{r['duration_s']:.1f}" for r in reports),
        "embedded": "/".join(str(r["embedded"]) for r in reports),
        "failed": sum(r["failed"] for r in reports),
    }


def collection_etags(chroma: ChromaServer, name: str) -> dict[str, str]:
    import chromadb

    client = chromadb.HttpClient(host=chroma.host, port=chroma.port)
    page = client.get_collection(name, embedding_function=None).get(include=["metadatas"])
    return {rid: meta["etag"] for rid, meta in zip(page["ids"], page["metadatas"], strict=True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sharding", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="imgrag-bench-shards-"))
    env = clean_environ(hermetic_env(workdir))
    with ExitStack() as stack:
        bedrock = start_fake_bedrock(args.latency_ms, None, env)
        stack.callback(bedrock.stop)
        moto = start_moto(env, workdir / "moto-requests.jsonl")
        stack.callback(moto.stop)
        prefect = start_prefect_server(env)
        stack.callback(prefect.stop)
        chroma = stack.enter_context(ChromaServer(workdir / "chroma"))
        wait_http_ok(f"{moto.url}/moto-api/", moto.proc, timeout=60)
        wait_http_ok(f"{prefect.url}/health", prefect.proc, timeout=120)
        env |= {"AWS_ENDPOINT_URL_S3": moto.url, "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock.url,
                "PREFECT_API_URL": prefect.url, "IMGRAG_CHROMA_URL": chroma.url}

        import boto3

        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
        s3.create_bucket(Bucket=BUCKET)
        photos = PhotoFactory()
        parallel(range(args.images), lambda i: s3.put_object(
            Bucket=BUCKET, Key=f"{PREFIX}{i:06d}.jpg", Body=photos.photo(i)))

        meter = BedrockMeter(bedrock.url)
        rows = []
        for name, shards in (("single", 1), ("sharded", args.shards)):
            meter.reset()
            row = run_ingests(name, shards, env, workdir)
            row["bedrock_requests"] = meter.read()["requests"]
            row["records"] = len(collection_etags(chroma, name))
            rows.append(row)
        same = collection_etags(chroma, "single") == collection_etags(chroma, "sharded")

    columns = ["phase", "runs", "wall_s", "flow_s", "embedded", "failed", "bedrock_requests",
               "records"]
    print(f"{args.images} images, Titan emulator latency {args.latency_ms:.0f} ms, "
          f"{args.shards} shards; machine {machine_load()}")
    print(format_table(rows, columns))
    print(f"same ids and ETags in both collections: {same}")
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                        "machine": machine_load(), "phases": rows,
                                        "same_collection": same}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
