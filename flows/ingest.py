"""``python -m flows.ingest``: the ingest CLI. It runs ``ingest_flow`` (flows/ingest_flow.py)
as a Prefect flow, against the configured Prefect API or a temporary server.

Start-up stays cheap: ``--help``, flag errors and preflight errors import neither Prefect
nor Chroma; Prefect is imported only once the run starts.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flows.cli import (
    add_store_arguments,
    print_error,
    print_interrupted,
    quiet_gc,
    run_cli,
    safe_text,
    settings_from_cli,
)
from flows.prefect_api import prefect_errors, prepare_flow_run
from imgrag.errors import ImgragError

if TYPE_CHECKING:
    from imgrag.records import IngestReport

MAX_PRINTED_FAILURES = 20  # the text report's failure lines; --json has them all


def __getattr__(name: str) -> Any:
    """``flows/ingest.py:ingest_flow``, the entrypoint of deployments made before the flow
    moved to flows/ingest_flow.py, keeps loading."""
    if name == "ingest_flow":
        from flows.ingest_flow import ingest_flow

        return ingest_flow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.ingest",
        description=(
            "Index the images under an S3 prefix or a local folder into a Chroma collection "
            "with an Amazon Bedrock embedding model (--model). Incremental: only new or changed "
            "objects (by ETag) are embedded; records of objects deleted from the listed "
            "scope are removed. Settings also come from IMGRAG_* environment variables; AWS "
            "configuration is boto3's own (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL_S3, "
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME, ...)."
        ),
        epilog="Every run is a Prefect flow run, recorded with its artifacts (counts, "
        "failures, cost) in the Prefect API named by PREFECT_API_URL. Without one, a "
        "temporary Prefect server is started for the run (slow: tens of seconds on a busy "
        "machine) and its records are kept in PREFECT_HOME. Exit status: 0 when the run "
        "finished (per-item failures are reported); 2 when it could not run (bad input, "
        "source, store or Prefect API unreachable, no credentials); 130 when interrupted.",
    )
    parser.add_argument("--source", required=True,
                        help="s3://BUCKET/PREFIX or a local folder path")
    add_store_arguments(parser)
    parser.add_argument("--inventory", metavar="S3_URI",
                        help="s3://…/manifest.json of the bucket's S3 Inventory (CSV) report:"
                        " read instead of listing the bucket (IMGRAG_INVENTORY)")
    parser.add_argument("--batch-size", type=int, help="objects per batch task (default 128)")
    parser.add_argument("--concurrency", type=int,
                        help="parallel downloads/Bedrock calls (default 32)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="retry objects recorded as permanently failed")
    parser.add_argument("--shard", metavar="I/N",
                        help="ingest only shard I of N (stable hash of the object URI)")
    parser.add_argument("--allow-mass-delete", action="store_true",
                        help="delete records even when the listing is empty or more than "
                        "IMGRAG_MAX_DELETE_FRACTION (default 0.5) of them are gone; "
                        "otherwise such deletions are withheld with a warning")
    parser.add_argument("--mode", choices=("on-demand", "batch", "auto"),
                        help="InvokeModel calls, a Bedrock batch inference job at the batch "
                        "price, or a job from IMGRAG_BATCH_AUTO_THRESHOLD images (IMGRAG_MODE)")
    parser.add_argument("--video", choices=("on", "off"),
                        help="index videos (.mp4 .mov .m4v .webm .mkv .avi) as frames "
                        "(IMGRAG_VIDEO, default on); off: images only")
    parser.add_argument("--ocr", action="store_true", default=None,
                        help="read the text in images (imgrag[ocr]; IMGRAG_OCR=1): new and "
                        "changed images, and indexed ones lacking it (no Bedrock call); "
                        "about 0.3-1.5 CPU s per image, on IMGRAG_OCR_THREADS cores (1)")
    parser.add_argument("--json", action="store_true",
                        help="print the run report as JSON on stdout")
    return parser


def print_report(report: IngestReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
        return
    print(f"source      {safe_text(report.source)}\ncollection  {report.collection}")
    for name in ("listed", "new", "changed", "deleted", "unchanged", "refreshed", "skipped",
                 "failed", "embedded", "ignored"):
        print(f"{name:<11} {getattr(report, name)}")
    if report.ocr_read:
        print(f"ocr         {report.ocr_read} images read ({report.ocr_backfilled} back-filled),"
              f" {report.ocr_cpu_s:.1f} CPU s")
    print(f"duration    {report.duration_s:.1f}s ({report.images_per_s:.1f} images/s), "
          f"Bedrock images billed {report.billed_images},"
          f" est. cost ${report.estimated_cost_usd:.4f}")
    if report.batch_images or report.batch_jobs:
        print(f"batch       {report.batch_images} images at the batch price; jobs submitted:"
              f" {', '.join(report.batch_jobs) or 'none'}")
    if report.videos:
        frames = sum(v.frames for v in report.videos)
        billed = sum(v.billed_images for v in report.videos)
        print(f"videos      {len(report.videos)} ({frames} frames, Bedrock images billed "
              f"{billed})")
    for video in report.videos[:MAX_PRINTED_FAILURES]:
        print(f"VIDEO {safe_text(video.uri)}  {video.duration_s:.1f}s  frames {video.frames}"
              f"  billed {video.billed_images}")
    for failure in report.failures[:MAX_PRINTED_FAILURES]:
        print(f"FAILED {safe_text(failure.id)} [{failure.stage}] {safe_text(failure.reason)}")
    if len(report.failures) > MAX_PRINTED_FAILURES:
        print(f"... and {len(report.failures) - MAX_PRINTED_FAILURES} more (see --json)")
    for warning in report.warnings:
        print(f"WARNING {safe_text(warning)}")


def preflight(params: dict[str, Any]) -> None:
    """Reject what would stop the run before starting Prefect: fast one-line errors, and
    nothing written (no store directory, no state files). Cheapest checks first."""
    with quiet_gc():
        from imgrag.sources import check_source
        from imgrag.stores import check_writer_free
        from imgrag.sync import parse_shard

    settings = settings_from_cli(store_url=params["store"], **{
        k: v for k, v in params.items()
        if k not in ("source", "retry_failed", "shard", "allow_mass_delete", "store")})
    shard = parse_shard(params["shard"])
    check_source(params["source"], settings)
    if not settings.chroma_url:  # the embedded store's file lock, or PostgreSQL's
        check_writer_free(settings, shard)
    with quiet_gc():
        from imgrag.embedders import check_embedder
    check_embedder(settings)
    if settings.ocr:
        from imgrag.ocr import check_ocr

        check_ocr()
    if settings.chroma_url:
        check_writer_free(settings, shard)  # reachable (the HTTP client checks on creation)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params: dict[str, Any] = {
        "source": args.source, "collection": args.collection, "dim": args.dim,
        "chroma_path": args.chroma_path, "chroma_url": args.chroma_url, "region": args.region,
        "batch_size": args.batch_size, "concurrency": args.concurrency,
        "retry_failed": args.retry_failed, "shard": args.shard,
        "allow_mass_delete": args.allow_mass_delete, "model": args.model, "mode": args.mode,
        "video": None if args.video is None else args.video == "on",
        "ocr": args.ocr,
        "store": args.store, "inventory": args.inventory,
    }
    try:
        preflight(params)
        prepare_flow_run("ingest")
        with prefect_errors():
            with quiet_gc():
                from flows.cli import hide_run_error_tracebacks
                from flows.ingest_flow import ingest_flow
            hide_run_error_tracebacks()
            report = ingest_flow(**params)
    except ImgragError as exc:
        return print_error(exc)
    except KeyboardInterrupt:
        return print_interrupted("ingest")
    print_report(report, args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
