"""Prefect artifacts of a run: counts, failures, progress, query hits."""

from __future__ import annotations

import re
from typing import Any
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
from imgrag.settings import Settings
from imgrag.thumbnails import Thumbnail, ThumbnailLoader

MAX_FAILURE_ROWS = 200
THUMBNAIL_SIDE = 96  # px: ~3 KB of base64 per hit in the artifact
MAX_THUMBNAILS = 24  # hits beyond this are listed without a picture


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
def publish_query_hits(
    label: str, settings: dict[str, Any], hits: list[Hit], text_tokens: int = 0
) -> None:
    """A markdown artifact of a query's hits with thumbnails, and its estimated cost.

    Thumbnails are small JPEGs fetched from the source (at the indexed ETag) and inlined as
    ``data:`` URIs: the artifact lives in the Prefect database, with no file server to
    link to. Prefect's UI renders ``data:image/`` sources in markdown artifacts.
    """
    s = Settings(**settings)
    thumbs = ThumbnailLoader(s).load(hits[:MAX_THUMBNAILS], side=THUMBNAIL_SIDE)
    cost = text_tokens * s.price_per_1k_text_tokens / 1000
    lines = [
        f"### Query: {' '.join(label.split())}",
        "",
        f"Collection `{s.collection}`, {len(hits)} hits; Bedrock text tokens {text_tokens},"
        f" estimated cost ${cost:.6f}.",
        "",
        "| rank | distance | image | source | size |",
        "|---|---|---|---|---|",
    ]
    for i, hit in enumerate(hits):
        picture = _thumbnail_cell(thumbs[i]) if i < len(thumbs) else ""
        lines.append(f"| {hit.rank} | {hit.distance:.4f} | {picture} | {_code(hit.id)} |"
                     f" {hit.metadata.get('size', '')} |")
    create_markdown_artifact("\n".join(lines), key=_key("query-hits", s.collection),
                             description=f"Hits of: {label[:200]}")


def _thumbnail_cell(thumb: Thumbnail) -> str:
    if thumb.data_url is None:
        return f"(no preview: {_cell_text(thumb.error or 'unavailable')})"
    return f"![thumbnail]({thumb.data_url})"


def _code(text: str) -> str:
    """``text`` as an inline code span that survives a table cell (pipes, backticks)."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {_cell_text(text)} {fence}"


def _cell_text(text: str) -> str:
    """One line, with pipes escaped: GFM splits table cells on ``|`` even inside code."""
    return " ".join(text.split()).replace("|", "\\|")
