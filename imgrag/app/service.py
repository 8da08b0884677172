"""The search app's work without HTTP: searches, records, thumbnails, stats and summaries
over one collection, reusing :mod:`imgrag.query`, :mod:`imgrag.thumbnails` and
:mod:`imgrag.summarize`. Safe to call from many threads at once."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from imgrag.errors import ConfigError, ImgragError
from imgrag.filters import QueryFilters
from imgrag.lock import LOCK_NAME, check_unlocked
from imgrag.query import (
    LazyEmbedder,
    cut_by_gap,
    embed_image_bytes,
    embed_query_text,
    open_text_cache,
    resolve_filters,
    search_vector,
    subtract,
    with_text_matches,
)
from imgrag.records import Hit
from imgrag.request import GroupBy, SearchRequest
from imgrag.settings import Settings
from imgrag.store import chroma_errors, forget_embedded_clients, server_address
from imgrag.stores import VectorStore, open_store
from imgrag.summarize import DEFAULT_SUMMARY_IMAGES, Summary, summarize_hits
from imgrag.thumbnails import Thumbnail, ThumbnailLoader

MAX_K = 100
THUMBNAIL_SIZES = (128, 256, 512, 1024)  # px; a fixed set, so clients cannot fill the cache
_KEPT_VECTORS = 256  # query vectors kept in memory: texts, and uploads for their URLs


class AppSettings(BaseSettings):
    """Settings of the search app itself (env prefix ``IMGRAG_APP_``)."""

    model_config = SettingsConfigDict(env_prefix="IMGRAG_APP_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    token: SecretStr | None = Field(None, description="Bearer token every API call needs.")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_upload_pixels: int = Field(50_000_000, ge=1)


class NotFoundError(ImgragError):
    """No record (or kept upload) with that id."""


class TooLargeError(ImgragError):
    """An upload over the app's size or pixel bounds."""


class ImageUnavailableError(ImgragError):
    """A record's image cannot be read from its source (gone, changed or unreadable)."""


class SearchParams(BaseModel):
    """How many hits and which: the CLI's filters, and whether a video's frames are one hit."""

    k: int = Field(24, ge=1, le=MAX_K)
    filters: QueryFilters = Field(default_factory=QueryFilters)
    max_distance: float | None = Field(None, ge=0, le=2)
    group_by: GroupBy = "video"
    cutoff: Literal["gap"] | None = None
    text_match: Literal["auto", "on", "off"] = "auto"


class SearchResult(BaseModel):
    """Hits of one search, how long it took and whether the query vector was at hand."""

    hits: list[Hit]
    took_ms: float
    embedding_cached: bool
    upload_id: str | None = None


class Stats(BaseModel):
    """What the collection holds and where it lives."""

    collection: str
    store: str
    records: int
    model_id: str | None
    dim: int | None
    last_ingest: dict[str, Any] | None
    summaries: bool


class VectorMemo:
    """The last ``size`` query vectors by key, in memory (least recently used dropped)."""

    def __init__(self, size: int = _KEPT_VECTORS) -> None:
        self.size = size
        self._vectors: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> list[float] | None:
        with self._lock:
            vector = self._vectors.get(key)
            if vector is not None:
                self._vectors.move_to_end(key)
            return vector

    def put(self, key: str, vector: list[float]) -> None:
        with self._lock:
            self._vectors[key] = vector
            while len(self._vectors) > self.size:
                self._vectors.popitem(last=False)


class StoreView:
    """The collection as it is now. An embedded store is refused (StoreLockedError) while an
    ingest holds its writer lock, and re-opened after one: an open embedded client does not
    see another process's writes. A Chroma server is always current."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: VectorStore | None = None
        self._seen: tuple[int, int] | None = None  # the writer lock file's (inode, mtime)
        self._lock = threading.Lock()

    def _lock_stamp(self) -> tuple[int, int] | None:
        try:
            stat = (self.settings.chroma_path / LOCK_NAME).stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns  # an ingest rewrites it when it starts

    def get(self) -> VectorStore:
        embedded = not self.settings.chroma_url and self.settings.store_kind == "chroma"
        if embedded:
            check_unlocked(self.settings.chroma_path)
        stamp = self._lock_stamp() if embedded else None
        with self._lock:
            if self._store is None or stamp != self._seen:
                if self._store is not None:
                    forget_embedded_clients()
                self._store = open_store(self.settings, create=False)
                self._seen = stamp
            return self._store


def summaries_available() -> bool:
    """True when summaries can be asked for: the openai package and an API key."""
    return bool(os.environ.get("OPENAI_API_KEY")) and importlib.util.find_spec("openai") is not None


class SearchService:
    """Searches and records of the collection named by ``settings``."""

    def __init__(self, settings: Settings, app_settings: AppSettings) -> None:
        self.settings = settings
        self.app_settings = app_settings
        self.store = StoreView(settings)
        self.embedder = LazyEmbedder(settings)
        self.cache = open_text_cache(settings)
        self.thumbnails = ThumbnailLoader(settings)
        self.texts = VectorMemo()  # before the disk cache, whose hits each write a row
        self.uploads = VectorMemo()

    def close(self) -> None:
        self.cache.close()

    def _search(self, vector: Callable[[], tuple[list[float], bool]], params: SearchParams,
                exclude: str | None = None, text: str = "") -> SearchResult:
        started = time.perf_counter()
        store = self.store.get()
        where = resolve_filters(store, params.filters)
        query_vector, cached = vector()
        hits = [] if where == {} else search_vector(
            store, query_vector, params.k, where, exclude=exclude,
            max_distance=params.max_distance, group_by=params.group_by)
        if params.cutoff == "gap":
            hits = cut_by_gap(hits)
        if text and where != {}:
            hits = with_text_matches(store, query_vector, hits, text, params.k, where,
                                     mode=params.text_match, exclude=exclude)
        took = round((time.perf_counter() - started) * 1000, 2)
        return SearchResult(hits=hits, took_ms=took, embedding_cached=cached)

    def search_text(self, text: str, params: SearchParams) -> SearchResult:
        """The hits nearest to a text, its ``-word`` terms subtracted (each term's vector
        cached after the first time: in memory, and on disk for the CLI and the next
        start), fused with OCR text matches (``params.text_match``)."""
        request = SearchRequest(text=text)

        def term(part: str) -> tuple[list[float], bool]:
            kept = self.texts.get(part)
            if kept is not None:
                return kept, True
            found, cached = embed_query_text(self.embedder, part, self.cache)
            self.texts.put(part, found)
            return found, cached

        def vector() -> tuple[list[float], bool]:
            found, cached = term(request.positive_text)
            negatives = [term(n) for n in request.negatives]
            if not negatives:
                return found, cached
            return (subtract(found, [v for v, _ in negatives]),
                    cached and all(c for _, c in negatives))

        return self._search(vector, params, text=request.positive_text)

    def similar(self, record_id: str, params: SearchParams) -> SearchResult:
        """The hits nearest to a record's stored vector, itself left out (no Bedrock call)."""
        def stored() -> tuple[list[float], bool]:
            vector = self.store.get().get_embedding(record_id)
            if vector is None:
                raise NotFoundError(f"no record {record_id!r} in the collection")
            return vector, True

        return self._search(stored, params, exclude=record_id)

    def search_upload(self, data: bytes, params: SearchParams) -> SearchResult:
        """The hits nearest to an uploaded image, normalized as at ingest; the image's
        vector is kept under the returned ``upload_id`` for :meth:`search_uploaded`."""
        upload_id = hashlib.sha256(data).hexdigest()[:24]

        def embedded() -> tuple[list[float], bool]:
            kept = self.uploads.get(upload_id)
            if kept is not None:
                return kept, True
            self._check_upload(data)
            limits = self.settings.model_copy(update={"max_source_pixels": min(
                self.settings.max_source_pixels, self.app_settings.max_upload_pixels)})
            vector = embed_image_bytes(data, self.embedder, limits)
            self.uploads.put(upload_id, vector)
            return vector, False

        result = self._search(embedded, params)
        return result.model_copy(update={"upload_id": upload_id})

    def search_uploaded(self, upload_id: str, params: SearchParams) -> SearchResult:
        """:meth:`search_upload` again, by the id it returned (while the app keeps it)."""
        def kept() -> tuple[list[float], bool]:
            vector = self.uploads.get(upload_id)
            if vector is None:
                raise NotFoundError("that uploaded image is no longer kept: upload it again")
            return vector, True

        return self._search(kept, params).model_copy(update={"upload_id": upload_id})

    def _check_upload(self, data: bytes) -> None:
        limits = self.app_settings
        if len(data) > limits.max_upload_bytes:
            raise TooLargeError(f"the upload is larger than {limits.max_upload_bytes} bytes")
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except Exception:  # not an image, or a bomb Pillow refuses: normalize says which
            return
        if width * height > limits.max_upload_pixels:
            raise TooLargeError(f"the image has {width}x{height} pixels, more than"
                                f" {limits.max_upload_pixels:,}")

    def record(self, record_id: str) -> Hit:
        """One record as a hit of rank 0 (distance 0); NotFoundError if it is not stored."""
        found = self.store.get().get([record_id])
        if record_id not in found:
            raise NotFoundError(f"no record {record_id!r} in the collection")
        return Hit(rank=0, id=record_id, distance=0.0, metadata=found[record_id] or {})

    def thumbnail(self, record_id: str, side: int) -> Thumbnail:
        """A JPEG of a stored record at one of ``THUMBNAIL_SIZES`` (cached after the first)."""
        thumb = self.thumbnails.load_one(self.record(record_id), side)
        if thumb.data is None:
            raise ImageUnavailableError(f"image unavailable: {thumb.error}")
        return thumb

    def stats(self) -> Stats:
        store = self.store.get()
        if self.settings.store_kind == "pgvector":
            where = self.settings.postgres_address
        elif self.settings.chroma_url:
            where = server_address(self.settings.chroma_url)
        else:
            where = str(Path(self.settings.chroma_path).resolve())
        with chroma_errors("count the records"):
            records = store.count()
        return Stats(collection=self.settings.collection, store=where, records=records,
                     model_id=store.model_id, dim=store.dim, last_ingest=store.last_ingest(),
                     summaries=summaries_available())

    def summarize(self, text: str, params: SearchParams,
                  n_images: int = DEFAULT_SUMMARY_IMAGES) -> Summary:
        """The OpenAI vision summary of a text search's top hits."""
        if not summaries_available():
            raise ConfigError("summaries are not configured: set OPENAI_API_KEY (and install"
                              " imgrag[summaries])")
        hits = self.search_text(text, params).hits
        return summarize_hits(text, hits, self.settings, n_images=n_images,
                              loader=self.thumbnails)
