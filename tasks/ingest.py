"""Prefect tasks of the ingest flow: one task run per batch, never per image.

A task's settings are the flow's (public) settings passed as a parameter plus the worker's
environment for what they leave out: secrets never travel as parameters."""

from __future__ import annotations

from collections import Counter
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from imgrag.pipeline import process_batch, runtime_for
from imgrag.records import BatchResult, SourceObject
from imgrag.settings import Settings
from tasks.retry import retry_unless_run_error


# Upserts must happen: no result cache here. The store is the checkpoint: a re-run plans
# only what is not stored yet, so a crashed run resumes without repeating finished batches.
# No task retries: a batch run again pays Bedrock again. Each step retries on its own
# (Bedrock calls, S3 reads, store writes); what still fails is a per-item failure or ends
# the run, and the next run plans what is not stored.
@task(
    name="ingest-batch",
    task_run_name="ingest-batch-{number}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def ingest_batch(
    settings: dict[str, Any], source: str, objects: list[SourceObject], run_id: str, number: int
) -> BatchResult:
    """Download → normalize → embed → upsert one batch (per-item failures are returned)."""
    result = process_batch(runtime_for(Settings(**settings), source), objects, run_id)
    if result.failures:  # one line per batch, not per image; all of them are in the report
        stages = Counter(f.stage for f in result.failures)
        first = result.failures[0]
        get_run_logger().warning(
            "batch %d: %d failed (%s); first: %s at %s: %s", number, len(result.failures),
            ", ".join(f"{stage} {n}" for stage, n in sorted(stages.items())),
            first.id, first.stage, first.reason,
        )
    return result


@task(name="delete-records", cache_policy=NO_CACHE, persist_result=False, retries=2,
      retry_condition_fn=retry_unless_run_error)  # the store retries its own writes
def delete_records(
    settings: dict[str, Any], source: str, ids: list[str], failed_ids: list[str]
) -> int:
    """Remove the records of sources (``ids``: an image's record, a video's frames) and
    failure-ledger entries (``failed_ids``) by URI."""
    rt = runtime_for(Settings(**settings), source)
    rt.store.delete_sources(ids)
    rt.ledger.forget(failed_ids)
    return len(ids)
