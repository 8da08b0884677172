"""The original proof of concept's notebook functions, as thin calls into the library.

The usual flow (``notebooks/image_rag_quickstart.ipynb`` runs it end to end)::

    keys = list_image_keys(BUCKET, PREFIX, max_keys=200)
    paths = download_s3_objects(BUCKET, keys)
    records = build_image_records(keys, paths)
    collection = get_chroma_collection()
    failed = upsert_images_to_chroma(collection, records)
    hits = query_images(collection, "blue t-shirt", k=8)
    show_hit_images(hits, {r.id: r.local_path for r in records})
    print(summarize_images_with_openai("blue t-shirt", hits, n_images=4))

Configuration comes from the environment, as for the CLIs: ``IMGRAG_*`` (store path,
collection, dimension), boto3's ``AWS_*`` and the openai client's ``OPENAI_*``. Records
written here are the same as the ingest flow's (id = source URI, same metadata and
ETags), so a notebook and ``python -m flows.ingest`` can share one collection.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from imgrag.embedders import Embedder, EmbedFailed, make_embedder
from imgrag.errors import EmbeddingError, StoreError
from imgrag.filters import QueryFilters, parse_date
from imgrag.gallery import render_fragment
from imgrag.ledger import FailureLedger
from imgrag.normalize import NormalizeError, normalize_image
from imgrag.pipeline import LEDGER_NAME, Runtime, normalize_for_model, process_batch
from imgrag.query import SearchRequest, run_search
from imgrag.records import Failure, Hit, SourceObject
from imgrag.settings import Settings
from imgrag.sources import FetchError, S3Source, is_image_key
from imgrag.sources.local import content_etag
from imgrag.sources.s3 import fetch_object, make_s3_client
from imgrag.stores import VectorStore, open_store, writer_lock
from imgrag.summarize import (
    DEFAULT_OPENAI_MODEL,
    DEFAULT_SUMMARY_IMAGES,
    SUMMARY_IMAGE_SIDE,
    Summary,
    summarize_hits,
)
from imgrag.thumbnails import ThumbnailLoader

log = logging.getLogger(__name__)

ImageInput = str | Path | bytes
_DOWNLOAD_WORKERS = 8
_embedders: dict[tuple[str, str | None], Embedder] = {}
_embedders_lock = threading.Lock()


class ImageRecord(BaseModel):
    """One downloaded image: its record id (source URI), source facts and local file."""

    id: str
    bucket: str
    key: str
    etag: str
    size: int
    last_modified: datetime | None = None
    local_path: Path

    def source_object(self) -> SourceObject:
        return SourceObject(uri=self.id, bucket=self.bucket, key=self.key, etag=self.etag,
                            size=self.size, last_modified=self.last_modified)


@dataclass
class ImageCollection:
    """A Chroma collection opened for the notebook functions, with the settings it uses."""

    store: VectorStore
    settings: Settings

    @property
    def name(self) -> str:
        return self.settings.collection

    def count(self) -> int:
        """Records in the collection."""
        return self.store.count()

    def __repr__(self) -> str:
        where = self.settings.chroma_url or str(self.settings.chroma_path)
        return f"ImageCollection({self.name!r} at {where}, {self.count()} records)"


def _embedder(settings: Settings) -> Embedder:
    """One embedder (and boto3 client) per settings and Bedrock endpoint in this process."""
    key = (json.dumps(settings.public_dict(), sort_keys=True),
           os.environ.get("AWS_ENDPOINT_URL_BEDROCK_RUNTIME"))
    with _embedders_lock:
        if key not in _embedders:
            _embedders[key] = make_embedder(settings)
        return _embedders[key]


def _read_image(image: ImageInput) -> bytes:
    return image if isinstance(image, bytes) else Path(image).expanduser().read_bytes()


# -- S3 --------------------------------------------------------------------------------


def list_image_keys(
    bucket: str, prefix: str = "", max_keys: int | None = None, *, s3_client: Any = None
) -> list[str]:
    """Keys of the image objects under ``s3://bucket/prefix`` (at most ``max_keys``)."""
    source = S3Source(bucket, prefix, s3_client or make_s3_client(Settings().region))
    source.check()
    return [obj.key for obj in islice(source.list_objects(), max_keys)]


def _download_one(client: Any, bucket: str, key: str, dest: Path, limit: int) -> Path:
    uri = f"s3://{bucket}/{key}"
    fetched = fetch_object(client, bucket, key, limit=limit)
    suffix = Path(key).suffix.lower() if is_image_key(key) else ".img"
    path = dest / (hashlib.sha256(uri.encode()).hexdigest()[:32] + suffix)
    path.write_bytes(fetched.data)
    modified = fetched.last_modified
    facts = {"id": uri, "bucket": bucket, "key": key, "etag": fetched.etag,
             "size": len(fetched.data),
             "last_modified": modified.isoformat() if modified else None}
    Path(f"{path}.json").write_text(json.dumps(facts))
    return path


def download_s3_objects(
    bucket: str, keys: Sequence[str], dest_dir: str | Path = "data/images", *,
    s3_client: Any = None,
) -> list[Path | None]:
    """Download objects to ``dest_dir``; one path per key, None where a download failed.

    Files are named by a hash of their URI (never by key text), each with a ``.json``
    sidecar holding its URI, ETag, size and modification time for ``build_image_records``.
    """
    settings = Settings()
    dest = Path(dest_dir).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    client = s3_client or make_s3_client(settings.region, max_pool=_DOWNLOAD_WORKERS)

    def fetch(key: str) -> Path | None:
        try:
            return _download_one(client, bucket, key, dest, settings.max_object_bytes)
        except FetchError as exc:
            log.warning("skipped s3://%s/%s: %s", bucket, key, exc.reason)
            return None

    with ThreadPoolExecutor(_DOWNLOAD_WORKERS) as pool:
        return list(pool.map(fetch, keys))


def build_image_records(
    image_keys: Sequence[str], local_paths: Sequence[str | Path | None]
) -> list[ImageRecord]:
    """Records for downloaded images (failed downloads, ``None``, are skipped).

    A path from ``download_s3_objects`` keeps its S3 identity (URI, ETag). Any other local
    file becomes a ``file://`` record whose ETag is a hash of its content.
    """
    records = []
    for key, raw in zip(image_keys, local_paths, strict=True):
        if raw is None:
            continue
        path = Path(raw).expanduser()
        sidecar = Path(f"{path}.json")
        if sidecar.is_file():
            records.append(ImageRecord(**json.loads(sidecar.read_text()), local_path=path))
            continue
        stat = path.stat()
        records.append(ImageRecord(
            id=path.resolve().as_uri(), bucket="", key=key,
            etag=content_etag(path.read_bytes()), size=stat.st_size,
            last_modified=datetime.fromtimestamp(stat.st_mtime, UTC), local_path=path,
        ))
    return records


# -- images and embeddings -----------------------------------------------------------


def normalize_image_to_jpeg_bytes(image: ImageInput, max_side: int = 2048) -> bytes:
    """A safe RGB JPEG (≤ ``max_side`` px and within the embedding model's input limits,
    no metadata) of an image file or bytes.

    Raises ``NormalizeError`` (with ``.reason``) for non-images, corrupt files and bombs.
    """
    settings = Settings()
    embedder = _embedder(settings)
    return normalize_image(_read_image(image), max_side=min(max_side, embedder.max_image_side),
                           max_bytes=embedder.max_image_bytes,
                           max_source_pixels=settings.max_source_pixels).data


def titan_embed_image_safe(image: ImageInput, dim: int | None = None) -> list[float] | None:
    """The Titan vector of an image (normalized first), or None if it cannot be embedded."""
    settings = Settings.from_overrides(dim=dim)
    embedder = _embedder(settings)
    try:
        data = normalize_for_model(_read_image(image), embedder, settings).data
        return embedder.embed_images([data])[0]
    except (NormalizeError, EmbedFailed, OSError) as exc:
        log.warning("image not embedded: %s", getattr(exc, "reason", exc))
        return None


def titan_embed_text(text: str, dim: int | None = None) -> list[float]:
    """The Titan vector of a text (truncated to the model's input limit)."""
    try:
        return _embedder(Settings.from_overrides(dim=dim)).embed_text(text)
    except EmbedFailed as exc:
        raise EmbeddingError(f"cannot embed the text: {exc.reason}") from None


# -- the store -------------------------------------------------------------------------


def get_chroma_collection(
    path: str | Path | None = None, name: str | None = None, dim: int | None = None, *,
    url: str | None = None,
) -> ImageCollection:
    """Open (or create) the collection; defaults from ``IMGRAG_*`` (``./chroma_images_db``,
    ``images``, 1024). A collection made for another model or dimension is an error."""
    settings = Settings.from_overrides(chroma_path=path, collection=name, dim=dim,
                                       chroma_url=url)
    if settings.chroma_url or settings.store_kind == "pgvector":  # a server serializes
        return ImageCollection(open_store(settings, create=True), settings)
    try:  # an existing collection opens without the writer lock (reading is no write)
        return ImageCollection(open_store(settings, create=False), settings)
    except StoreError:  # creating the store or collection is a write: one writer at a time
        with writer_lock(settings):
            return ImageCollection(open_store(settings, create=True), settings)


class _RecordSource:
    """The Source protocol over local files already downloaded (records' ``local_path``)."""

    scope = ""
    bucket = ""
    ignored = 0

    def __init__(self, records: Sequence[ImageRecord]) -> None:
        self._paths = {r.id: r.local_path for r in records}

    def check(self) -> None:
        """Nothing to reach: the files are local."""

    def list_objects(self) -> Iterator[SourceObject]:
        return iter(())

    def fetch(self, obj: SourceObject) -> bytes:
        try:
            return self._paths[obj.uri].read_bytes()
        except OSError as exc:
            raise FetchError(f"cannot read local copy: {exc.strerror}", permanent=False) from None


def upsert_images_to_chroma(
    collection: ImageCollection, records: Sequence[ImageRecord], batch_size: int | None = None
) -> list[Failure]:
    """Embed and upsert the records not yet indexed at their ETag; returns the failures.

    Same pipeline as the ingest flow (normalize → Titan → upsert, concurrent, permanent
    failures remembered in the ledger). An embedded store is written under its writer lock:
    StoreLockedError (nothing written) while another process, e.g. an ingest, holds it.
    """
    settings = collection.settings
    with writer_lock(settings):
        return _upsert_locked(collection, records, batch_size)


def _upsert_locked(
    collection: ImageCollection, records: Sequence[ImageRecord], batch_size: int | None
) -> list[Failure]:
    settings = collection.settings
    indexed = collection.store.get([r.id for r in records])
    todo = [r for r in records if indexed.get(r.id, {}).get("etag") != r.etag]
    if not todo:
        return []
    step = batch_size or settings.batch_size
    run_id = f"notebook-{uuid.uuid4().hex[:8]}"
    failures: list[Failure] = []
    ledger = FailureLedger(settings.resolved_state_dir / LEDGER_NAME, settings.collection)
    try:
        with ThreadPoolExecutor(settings.concurrency, thread_name_prefix="imgrag") as pool:
            rt = Runtime(settings, _RecordSource(todo), collection.store,
                         _embedder(settings), ledger, pool)
            for start in range(0, len(todo), step):
                batch = [r.source_object() for r in todo[start : start + step]]
                failures += process_batch(rt, batch, run_id).failures
    finally:
        ledger.close()
    return failures


def query_images(
    collection: ImageCollection,
    text: str | None = None,
    k: int = 8,
    where: Mapping[str, Any] | None = None,
    *,
    image: str | None = None,
    exclude_self: bool = False,
    prefix: str | None = None,
    bucket: str | None = None,
    min_width: int | None = None,
    modified_after: str | datetime | None = None,
    max_distance: float | None = None,
    negative: Sequence[str] = (),
    cutoff: Literal["gap"] | None = None,
    text_match: Literal["auto", "on", "off"] = "auto",
    rerank: bool = False,
) -> list[Hit]:
    """The ``k`` images nearest to ``text`` — or to ``image`` (a path or s3:// URI), or to
    both — minus the ``negative`` texts, within the filters, as ranked hits (``id``,
    ``distance``, ``metadata``; ``matched`` and ``snippet`` when OCR text matches are fused
    in, ``reason`` after ``rerank``)."""
    when = parse_date(modified_after) if isinstance(modified_after, str) else modified_after
    request = SearchRequest(
        text=text, image=image, k=k, where=dict(where) if where else None,
        filters=QueryFilters(prefix=prefix, bucket=bucket, min_width=min_width,
                             modified_after=when),
        exclude_self=exclude_self, max_distance=max_distance, negative=list(negative),
        cutoff=cutoff, text_match=text_match, rerank=rerank,
    )
    settings = collection.settings
    return run_search(settings, request, store=collection.store, embedder=_embedder(settings))


# -- looking at results --------------------------------------------------------------


def _in_jupyter() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_hit_images(
    hits: Sequence[Hit],
    s3_to_local: Mapping[str, str | Path] | None = None,
    *,
    collection: ImageCollection | None = None,
    title: str = "Search results",
) -> str | None:
    """A gallery of the hits (thumbnail, rank, distance, URI, size).

    Images come from ``s3_to_local`` (record id → local file) when given, else from the
    thumbnail cache or the source. In Jupyter the gallery is displayed inline and None is
    returned; elsewhere the HTML is returned.
    """
    settings = collection.settings if collection else Settings()
    thumbs = ThumbnailLoader(settings, local_paths=s3_to_local).load(list(hits))
    page = render_fragment(list(hits), thumbs, title)
    if _in_jupyter():
        from IPython.display import HTML, display

        display(HTML(page))
        return None
    return page


def image_to_b64(image: ImageInput, max_side: int = SUMMARY_IMAGE_SIDE) -> str:
    """Base64 of a downscaled JPEG of the image, as vision models take it."""
    data = normalize_image(_read_image(image), max_side=max_side,
                           max_source_pixels=Settings().max_source_pixels).data
    return base64.b64encode(data).decode("ascii")


def summarize_images_with_openai(
    query: str,
    hits: Sequence[Hit],
    n_images: int = DEFAULT_SUMMARY_IMAGES,
    model: str = DEFAULT_OPENAI_MODEL,
    s3_to_local: Mapping[str, str | Path] | None = None,
    *,
    collection: ImageCollection | None = None,
    client: Any = None,
) -> Summary:
    """An OpenAI vision model's summary of the top ``n_images`` hits, citing them as S1…Sn.

    ``str(summary)`` is the text followed by the S-label → URI list. Needs
    ``OPENAI_API_KEY`` (and the ``imgrag[summaries]`` extra); raises ``SummaryError``.
    """
    settings = collection.settings if collection else Settings()
    loader = ThumbnailLoader(settings, local_paths=s3_to_local)
    return summarize_hits(query, list(hits), settings, n_images=n_images, model=model,
                          client=client, loader=loader)
