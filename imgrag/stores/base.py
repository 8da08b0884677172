"""The VectorStore protocol: what everything above the store (planner, pipeline, query,
notebook API) may ask of it. Implementations: ``imgrag.store.ImageStore`` (ChromaDB) and
``imgrag.stores.pgvector.PgVectorStore`` (PostgreSQL with pgvector).

Filters are Chroma's ``where`` dialect (``$and``, ``$or``, ``$eq``, ``$ne``, ``$gt``,
``$gte``, ``$lt``, ``$lte``, ``$in``, ``$nin``, ``$contains`` on ``dirs``) on the record
metadata that ingest writes; each store translates them to its own query language.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from imgrag.records import Hit, Indexed


class VectorStore(Protocol):
    """One collection of image vectors (cosine space) with imgrag's record metadata."""

    @property
    def model_id(self) -> str | None:
        """The embedding model the collection was created for."""

    @property
    def dim(self) -> int | None:
        """The vector length the collection was created for."""

    def count(self) -> int:
        """Number of records."""

    def record_last_ingest(self, summary: Mapping[str, Any]) -> None:
        """Keep a finished ingest run's summary (JSON-able) with the collection."""

    def last_ingest(self) -> dict[str, Any] | None:
        """The summary :meth:`record_last_ingest` kept, or None."""

    def manifest(self, bucket: str, scope: str) -> dict[str, Indexed]:
        """Source URI → (ETag, normalize version, last_modified, size) of every image and
        video (its frames as one entry) of ``bucket`` under ``scope`` (a URI prefix)."""

    def iter_manifest(self, bucket: str, scope: str) -> Iterator[tuple[str, Indexed]]:
        """The ``manifest`` as a stream sorted by id (code-point order), for a merge with
        a sorted listing."""

    def iter_metadata(self, where: Mapping[str, Any] | None = None) -> Iterator[tuple[str, dict]]:
        """Every (id, metadata) matching ``where``, read in pages."""

    def upsert(
        self,
        ids: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        metadatas: Sequence[Mapping[str, Any]],
        documents: Sequence[str] | None = None,
    ) -> None:
        """Add or replace records by id; ``documents`` (the OCR text, "" for none) replaces
        a record's text, without them it is kept."""

    def set_texts(
        self, ids: Sequence[str], documents: Sequence[str], metadatas: Sequence[Mapping[str, Any]]
    ) -> None:
        """Replace the text of existing records and merge ``metadatas`` into theirs, vectors
        unchanged."""

    def text_matches(
        self, pattern: str, limit: int, where: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str, dict, list[float]]]:
        """(id, text, metadata, vector) of up to ``limit`` records whose text matches the
        regular expression ``pattern`` (``imgrag.hybrid.terms_pattern``), within ``where``."""

    def has_texts(self) -> bool:
        """Whether any record carries OCR text (``ocr_version`` ≥ 1)."""

    def update_metadata(self, ids: Sequence[str], metadatas: Sequence[Mapping[str, Any]]) -> None:
        """Merge fields into the metadata of existing records (vectors untouched; ids no
        longer stored are skipped)."""

    def delete(self, ids: Sequence[str]) -> None:
        """Remove records by id (absent ids are ignored)."""

    def wait_writable(self) -> None:
        """Return when writes go through (none waits to be retried); StoreError when the
        last write gave up. Called before paying for vectors that will have to be written."""

    def source_ids(self, uris: Sequence[str]) -> dict[str, list[str]]:
        """Source URI → ids of its records (an image's one, a video's frames), for the
        sources that have any."""

    def delete_sources(self, uris: Sequence[str]) -> None:
        """Remove every record of these source objects (all frames of a video)."""

    def replace_source(
        self,
        uri: str,
        ids: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        metadatas: Sequence[Mapping[str, Any]],
    ) -> int:
        """Upsert a source's records, then delete its records not among ``ids`` (a changed
        video's old frames); the number deleted."""

    def get(self, ids: Sequence[str]) -> dict[str, dict]:
        """id → metadata for the ids that exist."""

    def get_embedding(self, record_id: str) -> list[float] | None:
        """The stored vector of one record, or None."""

    def query(
        self, embedding: Sequence[float], k: int = 8, where: Mapping[str, Any] | None = None
    ) -> list[Hit]:
        """The ``k`` nearest records by cosine distance, exact within ``where``."""

    def close(self) -> None:
        """Release the store's connections."""
