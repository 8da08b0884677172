"""Prefect artifacts of a run: counts, failures, progress, query hits."""

from __future__ import annotations

from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from imgrag.records import Hit, IngestReport

MAX_FAILURE_ROWS = 200


def _key(prefix: str, collection: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    safe = "".join(c if c.isalnum() else "-" for c in collection.lower()).strip("-")
    return f"{prefix}-{safe}"[:100]


def start_progress(collection: str) -> UUID:
    """A progress artifact updated after every batch."""
    return create_progress_artifact(
        0.0, key=_key("ingest-progress", collection), description="Batches embedded so far"
    )


def update_progress(artifact_id: UUID, done: int, total: int, listing_done: bool) -> None:
    """Progress as done / known to-do (the listing streams, so the total can still grow)."""
    pct = 100.0 * done / total if total else 100.0
    note = "" if listing_done else " (listing still running)"
    update_progress_artifact(artifact_id, pct, description=f"{done} of {total} objects{note}")


@task(name="publish-ingest-report", cache_policy=NO_CACHE, persist_result=False)
def publish_ingest_report(report: IngestReport) -> None:
    """Table artifacts: the run's counts and cost, and its failures (capped)."""
    counts = report.model_dump(exclude={"failures", "run_id"})
    create_table_artifact(
        [{"metric": k, "value": v} for k, v in counts.items()],
        key=_key("ingest-summary", report.collection),
        description=f"Ingest of {report.source} into {report.collection}",
    )
    rows = [f.model_dump(include={"id", "stage", "reason", "permanent"}) for f in report.failures]
    if len(rows) > MAX_FAILURE_ROWS:
        rest = len(rows) - MAX_FAILURE_ROWS
        rows = rows[:MAX_FAILURE_ROWS]
        rows.append({"id": f"... and {rest} more", "stage": "", "reason": "", "permanent": ""})
    create_table_artifact(
        rows or [{"id": "(none)", "stage": "", "reason": "", "permanent": ""}],
        key=_key("ingest-failures", report.collection),
        description=f"{report.failed} failed objects",
    )


@task(name="publish-query-hits", cache_policy=NO_CACHE, persist_result=False)
def publish_query_hits(text: str, collection: str, hits: list[Hit]) -> None:
    """A markdown artifact listing the hits of a query."""
    lines = [f"### Query: {text}", "", "| rank | distance | source | size |", "|---|---|---|---|"]
    lines += [
        f"| {h.rank} | {h.distance:.4f} | `{h.id}` | {h.metadata.get('size', '')} |" for h in hits
    ]
    create_markdown_artifact("\n".join(lines), key=_key("query-hits", collection))
