"""The ingest flow: list → plan by ETag → batches (download → normalize → embed → upsert)
→ delete what left the source → report. Its CLI is ``python -m flows.ingest``."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.cli import settings_from_cli
from imgrag.errors import ConfigError, ImgragError
from imgrag.ocr import OCR_VERSION
from imgrag.pipeline import Runtime, close_runtime, hold_runtime, refresh_records
from imgrag.records import BatchResult, IngestReport, SourceObject
from imgrag.sources import is_video_key
from imgrag.stores import writer_lock
from imgrag.sync import ScopePlanner, parse_shard
from tasks.batch import embed_with_batch_jobs
from tasks.guard import exclusive_ingest
from tasks.ingest import delete_records, ingest_batch
from tasks.report import publish_ingest_report, start_progress, update_progress

MAX_BATCHES_IN_FLIGHT = 2  # one embedding while the next downloads/normalizes


def batched(objects: Iterable[SourceObject], size: int) -> Iterator[list[SourceObject]]:
    """Group a stream into lists of ``size`` (the last may be shorter)."""
    batch: list[SourceObject] = []
    for obj in objects:
        batch.append(obj)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@flow(
    name="ingest-images",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_BATCHES_IN_FLIGHT),
    validate_parameters=True,
)
def ingest_flow(
    source: str,
    collection: str | None = None,
    dim: int | None = None,
    chroma_path: str | None = None,
    chroma_url: str | None = None,
    region: str | None = None,
    batch_size: int | None = None,
    concurrency: int | None = None,
    retry_failed: bool = False,
    shard: str | None = None,
    allow_mass_delete: bool = False,
    model: str | None = None,
    mode: str | None = None,
    video: bool | None = None,
    ocr: bool | None = None,
    store: str | None = None,
    inventory: str | None = None,
) -> IngestReport:
    """Make ``source`` (``s3://bucket/prefix`` or a folder) searchable in a Chroma collection.

    Embeds only new or changed objects (by ETag), removes records of deleted objects within
    the listed scope, and records permanent failures so re-runs skip them. Videos are
    indexed as frames unless ``video`` is False (or IMGRAG_VIDEO says so). ``ocr`` (default:
    ``IMGRAG_OCR``) also reads the text in images, back-filling indexed ones that lack it.
    """
    if not source.strip():  # e.g. a deployment made without IMGRAG_SOURCE set
        raise ConfigError("no source given: pass s3://BUCKET/PREFIX or a folder path")
    if shard is not None and not shard.strip():  # the ingest-shard deployment's placeholder
        raise ConfigError("no shard given: pass shard=I/N (e.g. 0/4)")
    settings = settings_from_cli(  # deployment parameters: bad values are one-line errors
        collection=collection, dim=dim, chroma_path=chroma_path, chroma_url=chroma_url,
        region=region, batch_size=batch_size, concurrency=concurrency, model=model, mode=mode,
        video=video, ocr=ocr, store_url=store, inventory=inventory,
    )
    with (
        writer_lock(settings, parse_shard(shard)),
        exclusive_ingest(settings.chroma_url, settings.collection, shard),
    ):
        rt = hold_runtime(settings, source)
        try:
            report = _ingest(rt, source, retry_failed, shard, allow_mass_delete)
        finally:
            close_runtime(settings, source)
    publish_ingest_report(report)
    return report


def _ingest(rt: Runtime, source: str, retry_failed: bool, shard: str | None,
            allow_mass_delete: bool) -> IngestReport:
    logger = get_run_logger()
    started = time.perf_counter()
    run_id = flow_run.get_id() or "local"
    settings = rt.settings
    scope = rt.source.scope
    planner = ScopePlanner(scope, rt.store.iter_manifest(rt.source.bucket, scope),
                           rt.ledger.known(scope), parse_shard(shard), retry_failed,
                           ocr_version=OCR_VERSION if settings.ocr else 0)
    report = IngestReport(run_id=run_id, source=scope, collection=settings.collection,
                          model_id=settings.model_id, dim=settings.dim)
    plain = settings.public_dict()
    progress = start_progress(settings.collection)
    logger.info("listing %s", scope)

    in_flight: deque[tuple[PrefectFuture[BatchResult], int]] = deque()
    queued = done = 0

    def collect(batch: tuple[PrefectFuture[BatchResult], int], listing_done: bool) -> None:
        nonlocal done
        future, size = batch
        result = future.result()
        report.add_batch(result)
        done += size
        elapsed = time.perf_counter() - started
        logger.info(
            "batch done: %d embedded, %d failed in %.1fs | total %d/%d, %.1f images/s",
            result.upserted, len(result.failures), result.seconds, done, queued,
            report.embedded / elapsed if elapsed else 0.0,
        )
        update_progress(progress, done, queued, listing_done)

    listing = rt.source.list_objects()
    todo: Iterable[SourceObject] = planner.todo(listing)
    if settings.batch_staging_uri or settings.mode != "on-demand":  # jobs to collect or make
        planned = list(todo)
        on_demand = [o for o in planned if is_video_key(o.key) or o.uri in planner.text_only]
        images, results, report.batch_jobs = embed_with_batch_jobs(  # frames, OCR only: no job
            settings, source, [o for o in planned if o not in on_demand], run_id)
        todo = [*images, *on_demand]
        finished = sum(r.upserted + len(r.failures) for r in results)
        queued += finished
        done += finished
        for result in results:
            report.add_batch(result)
    try:
        for number, batch in enumerate(batched(todo, settings.batch_size), start=1):
            queued += len(batch)
            in_flight.append((ingest_batch.submit(plain, source, batch, run_id, number),
                              len(batch)))
            # One batch alone until one was stored: a broken store costs one batch's bill.
            if len(in_flight) >= (MAX_BATCHES_IN_FLIGHT if report.embedded else 1):
                collect(in_flight.popleft(), listing_done=False)
        while in_flight:
            collect(in_flight.popleft(), listing_done=True)
    finally:
        for future, _ in in_flight:  # a batch failed: let the others finish their upserts
            future.wait()

    refreshed = refresh_records(rt, planner.refreshed)
    sweep = planner.sweep(listing.unreadable, settings.max_delete_fraction, allow_mass_delete)
    if listing.unreadable:
        report.warnings.append(
            f"{len(listing.unreadable)} paths could not be read (first:"
            f" {listing.unreadable[0]}); records under them were kept")
    if sweep.warning:
        report.warnings.append(sweep.warning)
    if sweep.deleted or sweep.stale or sweep.failures_gone:
        delete_records(plain, source, sweep.deleted + sweep.stale, sweep.failures_gone)
    plan = planner.plan
    elapsed = time.perf_counter() - started
    report = report.model_copy(update={
        "listed": plan.listed, "ignored": listing.ignored, "new": plan.new,
        "changed": plan.changed, "unchanged": plan.unchanged, "skipped": plan.skipped,
        "deleted": len(sweep.deleted), "refreshed": refreshed,
        "deletions_withheld": sweep.withheld,
        "stale_removed": report.stale_removed + len(sweep.stale),
        "failed": len(report.failures),
        "unreadable": len(listing.unreadable),
        "duration_s": round(elapsed, 3),
        "images_per_s": round(report.embedded / elapsed, 2) if elapsed else 0.0,
        "estimated_cost_usd": round(settings.price_per_image * (
            report.billed_images - report.batch_images * (1 - settings.batch_price_factor)), 6),
    })
    logger.info(
        "done: listed %d, new %d, changed %d, deleted %d, unchanged %d, skipped %d, failed %d,"
        " embedded %d in %.1fs", report.listed, report.new, report.changed, report.deleted,
        report.unchanged, report.skipped, report.failed, report.embedded, elapsed,
    )
    try:  # for the search app's stats; the run's work is done either way
        rt.store.record_last_ingest(report.summary())
    except ImgragError as exc:
        report.warnings.append(str(exc))
    for warning in report.warnings:
        logger.warning(warning)
    return report
