"""Model benchmark: Titan, Nova (inline and s3Location) and Cohere at one quota, and a
backfill on-demand vs Bedrock batch inference, against the loopback emulators.

Run: ``python -m bench.models [--images 300] [--quota-rps 20] [--backfill 5000]``.

Starts the Bedrock EMULATOR (per-call latency L, a token-bucket quota of Q requests/s
shared by all models), a moto S3 server and a Prefect API server, each in its own process,
and fills a bucket with small synthetic photos. Then, in this process:

- ``models``: each model embeds the same ``--images`` objects through imgrag's pipeline
  (``process_batch``, batches of 128, 32 threads, a fresh store each) at quota Q: wall time,
  images/s, InvokeModel calls per image, 429s and bytes downloaded. Cohere takes up to 96
  images a call, so at the same requests/s it goes up to 96× further; Nova with
  ``IMGRAG_S3_LOCATION`` downloads and normalizes nothing.
- ``backfill``: ``--backfill`` new objects through the real ingest flow
  (``flows.ingest.ingest_flow``) with ``--mode on-demand`` at ``--backfill-quota-rps``, then
  with ``--mode batch`` (the emulator's jobs take ``--job-delay-s``; real jobs queue for
  minutes to hours): wall time and the billed cost the run's summary artifact reports.

Prints a table per part and the ratios; ``--out FILE`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import (
    BedrockMeter,
    Service,
    clean_environ,
    format_table,
    hermetic_env,
    machine_load,
    parallel,
    start_fake_bedrock,
    start_moto,
    start_prefect_server,
    synthetic_photo,
    wait_http_ok,
    write_results,
)

BUCKET = "bench-models"
ROLE = "arn:aws:iam::123456789012:role/imgrag-batch"
PHOTO_SIZE = (320, 240)
MODELS = [  # (label, model, dim, s3_location)
    ("titan", "titan", 256, False),
    ("nova", "nova", 256, False),
    ("nova s3Location", "nova", 256, True),
    ("cohere", "cohere", 256, False),
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="objects per model run")
    parser.add_argument("--quota-rps", type=float, default=20.0,
                        help="the emulator's request quota in the model runs")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="per-call latency")
    parser.add_argument("--backfill", type=int, default=5000,
                        help="objects of the backfill comparison (0: skip it)")
    parser.add_argument("--backfill-quota-rps", type=float, default=100.0)
    parser.add_argument("--job-delay-s", type=float, default=5.0,
                        help="seconds an emulated batch job waits before running")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    return parser.parse_args(argv)


class Bench:
    """The emulators, the bucket and the environment of one run."""

    def __init__(self, args: argparse.Namespace, workdir: Path, stack: ExitStack) -> None:
        self.args, self.workdir = args, workdir
        base = clean_environ(hermetic_env(workdir))
        os.environ.clear()
        os.environ.update(base)  # before Prefect, boto3 or Chroma are imported
        moto = self._start(stack, start_moto(base, workdir / "moto.jsonl"))
        wait_http_ok(f"{moto.url}/moto-api/", moto.proc, timeout=60)
        env = base | {"AWS_ENDPOINT_URL_S3": moto.url}
        self.bedrock = self._start(stack, start_fake_bedrock(
            args.latency_ms, args.quota_rps, env))
        self.backfill_bedrock = self._start(stack, start_fake_bedrock(
            args.latency_ms, args.backfill_quota_rps, env,
            ["--batch-delay-s", str(args.job_delay_s)])) if args.backfill else None
        self.prefect = self._start(stack, start_prefect_server(base)) if args.backfill else None
        os.environ.update(env | {"AWS_ENDPOINT_URL_BEDROCK_RUNTIME": self.bedrock.url})

    @staticmethod
    def _start(stack: ExitStack, service: Service) -> Service:
        stack.callback(service.stop)
        return service

    def fill(self, prefix: str, count: int) -> None:
        import boto3
        from botocore.config import Config

        s3 = boto3.client("s3", config=Config(max_pool_connections=16))
        base = [synthetic_photo(*PHOTO_SIZE, seed=i) for i in range(16)]

        def put(i: int) -> None:  # a COM segment makes every object's bytes unique
            text = f"object {i}".encode()
            body = base[i % 16][:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
            s3.put_object(Bucket=BUCKET, Key=f"{prefix}{i:06}.jpg",
                          Body=body + base[i % 16][2:])

        parallel(range(count), put, workers=8)

    # -- part 1 ------------------------------------------------------------------------

    def model_run(self, label: str, model: str, dim: int, s3_location: bool) -> dict[str, Any]:
        from imgrag.pipeline import Runtime, process_batch
        from imgrag.settings import Settings

        settings = Settings(model=model, dim=dim, s3_location=s3_location,
                            chroma_path=self.workdir / f"store-{label.replace(' ', '-')}")
        meter = BedrockMeter(self.bedrock.url)
        rt = Runtime.open(settings, f"s3://{BUCKET}/models/")
        try:
            objects = list(rt.source.list_objects())
            meter.reset()
            started = time.perf_counter()
            results = [process_batch(rt, objects[i : i + settings.batch_size], "bench")
                       for i in range(0, len(objects), settings.batch_size)]
            wall = time.perf_counter() - started
        finally:
            rt.close()
        stats = meter.read()
        embedded = sum(r.upserted for r in results)
        return {"model": label, "images": embedded,
                "failed": sum(len(r.failures) for r in results), "wall_s": round(wall, 2),
                "images_per_s": round(embedded / wall, 1),
                "calls": stats["image_calls"], "calls_per_image": round(
                    stats["image_calls"] / max(embedded, 1), 3),
                "throttled": stats["throttled"],
                "downloaded_mb": round(sum(r.bytes_downloaded for r in results) / 1e6, 2)}

    # -- part 2 ------------------------------------------------------------------------

    def backfill_run(self, mode: str) -> dict[str, Any]:
        assert self.prefect is not None and self.backfill_bedrock is not None
        os.environ.update({
            "PREFECT_API_URL": self.prefect.url,
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": self.backfill_bedrock.url,
            "AWS_ENDPOINT_URL_BEDROCK": self.backfill_bedrock.url,
            "IMGRAG_BATCH_ROLE_ARN": ROLE,
            "IMGRAG_BATCH_STAGING_URI": f"s3://{BUCKET}/staging-{mode}/",
            "IMGRAG_BATCH_POLL_S": "1",
            "IMGRAG_CHROMA_PATH": str(self.workdir / f"store-backfill-{mode}"),
        })
        from flows.ingest import ingest_flow  # imported once the environment is set

        started = time.perf_counter()
        report = ingest_flow(source=f"s3://{BUCKET}/backfill/", mode=mode, dim=256)
        wall = time.perf_counter() - started
        return {"mode": mode, "images": report.embedded, "failed": report.failed,
                "wall_s": round(wall, 1), "images_per_s": round(report.embedded / wall, 1),
                "billed_images": report.billed_images, "at_batch_price": report.batch_images,
                "cost_usd": report.estimated_cost_usd}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with ExitStack() as stack:
        bench = Bench(args, workdir, stack)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        bench.fill("models/", args.images)
        models = [bench.model_run(*spec) for spec in MODELS]
        backfill = []
        if args.backfill:
            bench.fill("backfill/", args.backfill)
            assert bench.prefect is not None
            wait_http_ok(f"{bench.prefect.url}/health", bench.prefect.proc, timeout=120)
            backfill = [bench.backfill_run(mode) for mode in ("on-demand", "batch")]
    return {"settings": vars(args) | {"out": str(args.out) if args.out else None},
            "machine": machine_load(), "models": models, "backfill": backfill}


def print_results(results: dict[str, Any]) -> None:
    s = results["settings"]
    print(f"\nmodels at {s['quota_rps']:g} requests/s, {s['latency_ms']:g} ms per call,"
          f" {s['images']} images of {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} — {results['machine']}")
    rows = results["models"]
    print(format_table(rows, ["model", "images", "failed", "wall_s", "images_per_s", "calls",
                              "calls_per_image", "throttled", "downloaded_mb"]))
    by = {r["model"]: r for r in rows}
    titan = by["titan"]["images_per_s"]
    for label in ("nova", "nova s3Location", "cohere"):
        print(f"{label} / titan images/s: {by[label]['images_per_s'] / titan:.2f}×")
    if results["backfill"]:
        print(f"\nbackfill of {s['backfill']} images: on-demand at {s['backfill_quota_rps']:g}"
              f" requests/s vs a batch job (emulated queue {s['job_delay_s']:g} s)")
        rows = results["backfill"]
        print(format_table(rows, ["mode", "images", "failed", "wall_s", "images_per_s",
                                  "billed_images", "at_batch_price", "cost_usd"]))
        on_demand, batch = rows
        print(f"batch / on-demand: cost {batch['cost_usd'] / on_demand['cost_usd']:.2f}×,"
              f" wall {batch['wall_s'] / on_demand['wall_s']:.2f}×")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="imgrag-bench-models-"))
    saved = dict(os.environ)
    try:
        results = run(args, workdir)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(workdir, ignore_errors=True)
    print_results(results)
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
