"""Prefect artifacts of a run: counts, failures, progress, query hits (publishing only:
the hits' markdown is rendered by imgrag.gallery)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from imgrag.gallery import markdown_text, render_markdown
from imgrag.records import Hit, IngestReport
from imgrag.settings import Settings
from imgrag.thumbnails import ThumbnailLoader

MAX_FAILURE_ROWS = 200
ARTIFACT_IMAGE_SIDE = 96  # px, scaled from the cached thumbnail: ~3 KB of base64 per hit
MAX_ARTIFACT_THUMBNAILS = 24  # hits beyond this are listed without a picture


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
    """Table artifacts: the run's counts and cost, and its failures (capped).

    A failure to publish is a warning: the run's records are stored already, and the
    report still reaches the caller."""
    try:
        _create_ingest_tables(report)
    except Exception as exc:  # the Prefect API refused or is unreachable
        _not_published("ingest report artifacts", exc)


def _not_published(what: str, exc: Exception) -> None:
    """A failed artifact upload, as one warning line: the run's results do not need it."""
    get_run_logger().warning("%s not published: %s: %s", what, type(exc).__name__,
                             " ".join(str(exc).split())[:300])


def _create_ingest_tables(report: IngestReport) -> None:
    counts = report.model_dump(exclude={"failures", "run_id", "videos"})
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
    if report.videos:
        videos = [v.model_dump() for v in report.videos[:MAX_FAILURE_ROWS]]
        if len(report.videos) > MAX_FAILURE_ROWS:
            videos.append({"uri": f"... and {len(report.videos) - MAX_FAILURE_ROWS} more",
                           "frames": "", "billed_images": "", "duration_s": ""})
        create_table_artifact(
            videos, key=_key("ingest-videos", report.collection),
            description=f"Frames stored and Bedrock images billed per video "
            f"({len(report.videos)} videos)")


@task(name="publish-query-hits", cache_policy=NO_CACHE, persist_result=False)
def publish_query_hits(
    label: str, settings: dict[str, Any], hits: list[Hit], text_tokens: int = 0
) -> None:
    """A markdown artifact of a query's hits and its estimated cost, with thumbnails of the
    first hits unless ``IMGRAG_ARTIFACT_THUMBNAILS`` is off; a failed upload is a warning.

    Thumbnails come through the thumbnail cache (an original is fetched once, for this and
    any later gallery of the hit) and are inlined as ``data:`` URIs: the artifact lives in
    the Prefect database, with no file server to link to. Prefect's UI renders
    ``data:image/`` sources in markdown artifacts.
    """
    s = Settings(**settings)
    shown = hits[:MAX_ARTIFACT_THUMBNAILS] if s.artifact_thumbnails else []
    thumbs = ThumbnailLoader(s).load(shown, side=ARTIFACT_IMAGE_SIDE)
    cost = text_tokens * s.price_per_1k_text_tokens / 1000
    markdown = render_markdown(
        hits, thumbs, f"Query: {label}",
        subtitle=f"Collection {s.collection}, {len(hits)} hits; Bedrock text tokens "
        f"{text_tokens}, estimated cost ${cost:.6f}.",
    )
    try:
        create_markdown_artifact(markdown, key=_key("query-hits", s.collection),
                                 description=f"Hits of: {markdown_text(label[:200])}")
    except Exception as exc:  # the Prefect API refused or is unreachable
        _not_published("query hits artifact", exc)
