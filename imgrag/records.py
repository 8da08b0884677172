"""Pydantic records passed between the layers: source objects, failures, plans, reports, hits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

Stage = Literal["download", "normalize", "decode", "embed"]


class SourceObject(BaseModel):
    """One image object as listed by a source; ``uri`` is also its record id."""

    model_config = ConfigDict(frozen=True)

    uri: str
    bucket: str  # "" for a local folder
    key: str
    etag: str
    size: int
    last_modified: datetime | None = None

    @property
    def last_modified_text(self) -> str:
        """``last_modified`` as stored in record metadata: ISO 8601, or "" when unknown."""
        return self.last_modified.isoformat() if self.last_modified else ""


class Indexed(NamedTuple):
    """What the store holds for one record, as change detection needs it."""

    etag: str
    normalize_version: int  # 0 when the record does not say
    last_modified: str = ""  # as stored ("" when the record does not say)
    size: int = -1  # -1 when the record does not say
    ocr_version: int = 0  # 0: the record holds no OCR text


class Failure(BaseModel):
    """One item that could not be indexed in this run, and why."""

    id: str
    etag: str = ""
    stage: Stage
    reason: str
    permanent: bool = Field(
        description="True: the same bytes will fail again (recorded in the ledger, not retried)."
    )


class BatchResult(BaseModel):
    """What one batch did: counts for the report, never image bytes."""

    upserted: int = 0
    stale_removed: int = 0  # records of changed objects that now fail permanently
    failures: list[Failure] = Field(default_factory=list)
    billed_images: int = 0  # images embedded by calls that succeeded (what Bedrock bills)
    batch_images: int = 0  # of those, images billed at the batch inference price
    bytes_downloaded: int = 0
    ocr_read: int = 0  # images OCR'd (embedded ones and back-filled ones)
    ocr_backfilled: int = 0  # unchanged records given their text, without a model call
    ocr_cpu_s: float = 0.0
    seconds: float = 0.0
    videos: list[VideoResult] = Field(default_factory=list)


class IngestPlan(BaseModel):
    """Change detection counts for one listed scope (bucket + prefix [+ shard])."""

    scope: str
    listed: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    skipped: int = 0  # known permanent failures with the same ETag
    ocr_backfill: int = 0  # unchanged records whose OCR text is missing or stale


class IngestReport(BaseModel):
    """The outcome of one ingest run, as printed by ``--json`` and published as artifacts."""

    run_id: str
    source: str
    collection: str
    model_id: str
    dim: int
    listed: int = 0
    ignored: int = 0
    new: int = 0
    changed: int = 0
    deleted: int = 0
    refreshed: int = 0  # unchanged records whose listing facts (last_modified, size) moved
    deletions_withheld: int = 0  # listing looked wrong (empty, or too much gone): see warnings
    stale_removed: int = 0  # records of changed objects whose new bytes fail permanently
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0
    embedded: int = 0
    billed_images: int = 0  # images in successful model calls: the cost estimate's basis
    batch_images: int = 0  # of those, images embedded by batch jobs (at the batch price)
    batch_jobs: list[str] = Field(default_factory=list)  # names of the jobs submitted
    bytes_downloaded: int = 0
    duration_s: float = 0.0
    images_per_s: float = 0.0
    estimated_cost_usd: float = 0.0
    unreadable: int = 0  # paths the listing could not read; records under them were kept
    ocr_read: int = 0  # images OCR'd (--ocr)
    ocr_backfilled: int = 0  # of them, unchanged records given their text (no Bedrock call)
    ocr_cpu_s: float = 0.0  # CPU seconds spent in OCR
    failures: list[Failure] = Field(default_factory=list)
    videos: list[VideoResult] = Field(default_factory=list)  # frames and cost per video
    warnings: list[str] = Field(default_factory=list)  # what the run chose not to do, and why

    def add_batch(self, result: BatchResult) -> None:
        """Count one finished batch into the run's totals."""
        self.embedded += result.upserted
        self.billed_images += result.billed_images
        self.batch_images += result.batch_images
        self.bytes_downloaded += result.bytes_downloaded
        self.stale_removed += result.stale_removed
        self.ocr_read += result.ocr_read
        self.ocr_backfilled += result.ocr_backfilled
        self.ocr_cpu_s = round(self.ocr_cpu_s + result.ocr_cpu_s, 3)
        self.failures += result.failures
        self.videos += result.videos

    def summary(self) -> dict[str, Any]:
        """The report without its failure and warning lists, stamped with the time now: what
        the collection keeps of its last run (``ImageStore.record_last_ingest``)."""
        return self.model_dump(mode="json", exclude={"failures", "warnings"}) | {
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}


class VideoResult(BaseModel):
    """What indexing one video did (or would have) cost."""

    uri: str
    frames: int = 0  # frames kept and stored
    billed_images: int = 0  # Bedrock image calls that succeeded for it
    duration_s: float = 0.0  # the video's declared duration


class Hit(BaseModel):
    """One search result. A video's hit (grouped by video) is its best frame; ``times``
    holds the timestamps of its other matching frames."""

    rank: int
    id: str
    distance: float
    metadata: dict[str, Any] = Field(default_factory=dict)
    times: list[float] = Field(default_factory=list)
    matched: list[str] | None = None  # hybrid search: "vector", "text" or both
    snippet: str | None = None  # the OCR text around the match, matched words in [brackets]
    reason: str | None = None  # --rerank: the vision model's one-line reason

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` shape: ``{id, distance, metadata}``, plus ``times`` for a video hit
        with other matching frames, and ``matched``, ``snippet`` and ``reason`` when the
        search produced them."""
        extra = {name: value for name in ("matched", "snippet", "reason")
                 if (value := getattr(self, name)) is not None}
        shape = {"id": self.id, "distance": self.distance, "metadata": self.metadata, **extra}
        return shape | {"times": self.times} if self.times else shape
