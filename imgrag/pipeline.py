"""Batch ingestion: fetch → normalize → embed → upsert for one batch of source objects
(videos go through ``imgrag.video_ingest``, beside the images).

``Runtime`` holds the per-process objects every batch of a run shares (boto3 clients, the
store's client, the failure ledger, one bounded thread pool): tasks receive plain settings
and look their runtime up here, so nothing unhashable crosses a task boundary.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from imgrag.embedders import Embedder, EmbedFailed, make_embedder
from imgrag.errors import StoreError
from imgrag.filters import filter_metadata
from imgrag.ledger import FailureLedger
from imgrag.normalize import NORMALIZE_VERSION, NormalizedImage, NormalizeError, normalize_image
from imgrag.ocr import OcrEngine, OcrResult, shared_engine
from imgrag.records import BatchResult, Failure, SourceObject
from imgrag.settings import Settings
from imgrag.sources import FetchError, Source, is_video_key, open_source
from imgrag.stores import VectorStore, open_store

LEDGER_NAME = "imgrag-ledger.sqlite3"
log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything a run needs, opened once per process and shared by its batches."""

    settings: Settings
    source: Source
    store: VectorStore
    embedder: Embedder
    ledger: FailureLedger
    pool: ThreadPoolExecutor = field(repr=False)
    ocr: OcrEngine | None = None  # with settings.ocr

    @classmethod
    def open(cls, settings: Settings, source: str) -> Runtime:
        """Open source, store (created if missing), embedder and ledger for ``settings``;
        what was opened is closed again if a later step fails."""
        with ExitStack() as opened:
            src = open_source(source, settings)
            opened.callback(src.close)
            src.check()
            ocr = shared_engine(settings.ocr_threads) if settings.ocr else None
            store = open_store(settings, create=True)
            opened.callback(store.close)
            embedder = make_embedder(settings)
            opened.callback(embedder.close)
            ledger = FailureLedger(settings.resolved_state_dir / LEDGER_NAME, settings.collection)
            opened.callback(ledger.close)
            pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="imgrag")
            opened.pop_all()
        return cls(settings, src, store, embedder, ledger, pool, ocr)

    def close(self) -> None:
        """Wait for the pool's work, then close the ledger, the clients and the source's
        files (each of them, even if one fails)."""
        with ExitStack() as closing:
            closing.callback(self.source.close)
            closing.callback(self.store.close)
            closing.callback(self.embedder.close)
            closing.callback(self.ledger.close)
            self.pool.shutdown(wait=True)


@dataclass
class _Shared:
    """One process-wide Runtime, the runs holding it, and the lock its opening takes."""

    opening: threading.Lock = field(default_factory=threading.Lock)
    runtime: Runtime | None = None
    holders: int = 0


_runtimes: dict[str, _Shared] = {}
_runtimes_lock = threading.Lock()  # guards _runtimes and holders; never held across I/O


def _runtime_key(settings: Settings, source: str) -> str:
    return json.dumps([settings.public_dict(), source], sort_keys=True)


def _opened(shared: _Shared, settings: Settings, source: str) -> Runtime:
    """The shared Runtime, opened by the first caller (others with its key wait for it;
    runs of other keys are not held up)."""
    with shared.opening:
        if shared.runtime is None:
            shared.runtime = Runtime.open(settings, source)
        return shared.runtime


def runtime_for(settings: Settings, source: str) -> Runtime:
    """The process-wide Runtime for (settings, source), opened on first use."""
    with _runtimes_lock:
        shared = _runtimes.setdefault(_runtime_key(settings, source), _Shared())
    return _opened(shared, settings, source)


def hold_runtime(settings: Settings, source: str) -> Runtime:
    """``runtime_for`` for a run: held until its ``close_runtime``, so concurrent runs with
    the same settings and source in one process (e.g. shards in threads) share it safely."""
    with _runtimes_lock:
        shared = _runtimes.setdefault(_runtime_key(settings, source), _Shared())
        shared.holders += 1
    try:
        return _opened(shared, settings, source)
    except BaseException:
        close_runtime(settings, source)
        raise


def close_runtime(settings: Settings, source: str) -> None:
    """Release a run's hold; the last holder closes and forgets the Runtime."""
    key = _runtime_key(settings, source)
    with _runtimes_lock:
        shared = _runtimes.get(key)
        if shared is None:
            return
        shared.holders -= 1
        if shared.holders > 0:
            return
        del _runtimes[key]
    with shared.opening:
        if shared.runtime is not None:
            shared.runtime.close()
            shared.runtime = None


def record_metadata(
    obj: SourceObject, image: NormalizedImage | None, embedder: Embedder, run_id: str,
    text: OcrResult | None = None,
) -> dict[str, Any]:
    """The metadata stored with each vector (Chroma takes str/int/float/bool and non-empty
    lists of them); ``filter_metadata`` adds the fields query filters need. Without
    ``image`` (the model read the object from S3), size and format are unknown: 0 and "".
    Without ``text``, ``ocr_version`` 0 says the record holds no current OCR text."""
    return {
        **(text.metadata() if text is not None else {"ocr_version": 0}),
        "source_uri": obj.uri,
        "bucket": obj.bucket,
        "key": obj.key,
        "etag": obj.etag,
        "width": image.source_width if image else 0,
        "height": image.source_height if image else 0,
        "format": (image.source_format or "") if image else "",
        "model_id": embedder.model_id,
        "dim": embedder.dim,
        "normalize_version": NORMALIZE_VERSION,
        "ingested_at": datetime.now(UTC).isoformat(),
        "run_id": run_id,
        **listing_metadata(obj),
    }


def listing_metadata(obj: SourceObject) -> dict[str, Any]:
    """The metadata a listing alone decides (size, dates, the filter helpers): what a new
    upload of the same bytes may change."""
    return {"size": obj.size, "last_modified": obj.last_modified_text, **filter_metadata(obj)}


def refresh_records(rt: Runtime, objects: Sequence[SourceObject]) -> int:
    """Rewrite the listing metadata of unchanged records (every frame of a video; no
    download, no embedding), in batched updates; the number of objects given."""
    videos = [o.uri for o in objects if is_video_key(o.key)]
    frames = rt.store.source_ids(videos) if videos else {}
    ids, metadatas = [], []
    for obj in objects:
        record_ids = frames.get(obj.uri, [obj.uri])
        ids += record_ids
        metadatas += [listing_metadata(obj)] * len(record_ids)
    if ids:
        rt.store.update_metadata(ids, metadatas)
    return len(objects)


def normalize_for_model(data: bytes, embedder: Embedder, settings: Settings) -> NormalizedImage:
    """Normalize within the model's input limits and the settings' size bounds."""
    return normalize_image(
        data,
        max_side=min(settings.max_side, embedder.max_image_side),
        max_bytes=embedder.max_image_bytes,
        max_source_pixels=settings.max_source_pixels,
    )


@dataclass
class _Unit:
    """Objects embedded together (Titan: one image; Cohere: up to 96)."""

    objects: list[SourceObject]
    images: list[NormalizedImage] = field(default_factory=list)
    vectors: list[list[float]] = field(default_factory=list)
    metadatas: list[dict[str, Any]] = field(default_factory=list)
    texts: list[OcrResult | None] = field(default_factory=list)  # OCR, one per image
    documents: list[str] = field(default_factory=list)  # stored text, "" without
    failures: list[Failure] = field(default_factory=list)
    bytes_downloaded: int = 0
    billed_images: int = 0
    store_error: StoreError | None = None  # not embedded: the store's writes gave up
    ocr_read: int = 0
    ocr_cpu_s: float = 0.0

    def read_text(self, rt: Runtime, obj: SourceObject, image: NormalizedImage
                  ) -> OcrResult | None:
        """:func:`read_text`, counted."""
        result = read_text(rt, obj, image)
        if result is not None:
            self.ocr_read += 1
            self.ocr_cpu_s += result.cpu_seconds
        return result


def read_text(rt: Runtime, obj: SourceObject, image: NormalizedImage) -> OcrResult | None:
    """The OCR of a normalized image when OCR is on; None when off or the engine failed
    (the record then says ``ocr_version`` 0 and a later run reads it again)."""
    if rt.ocr is None:
        return None
    try:
        return rt.ocr.read(image.data)
    except Exception as exc:  # an engine error must not lose the embedding
        log.warning("OCR failed for %s: %s", obj.uri, exc)
        return None


def prepare_object(
    rt: Runtime, obj: SourceObject
) -> tuple[NormalizedImage | None, Failure | None, int]:
    """Download and normalize one object; a Failure instead of raising."""
    settings, embedder = rt.settings, rt.embedder
    if obj.size > settings.max_object_bytes:
        reason = f"object is {obj.size} bytes, above the {settings.max_object_bytes} byte limit"
        return None, Failure(id=obj.uri, etag=obj.etag, stage="download", reason=reason,
                             permanent=True), 0
    try:
        data = rt.source.fetch(obj)
    except FetchError as exc:
        return None, Failure(id=obj.uri, etag=obj.etag, stage="download", reason=exc.reason,
                             permanent=exc.permanent), 0
    try:
        image = normalize_for_model(data, embedder, settings)
    except NormalizeError as exc:
        return None, Failure(id=obj.uri, etag=obj.etag, stage="normalize", reason=exc.reason,
                             permanent=True), len(data)
    return image, None, len(data)


S3_IMAGE_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".gif": "gif",
                    ".webp": "webp"}


def s3_image_format(rt: Runtime, obj: SourceObject) -> str | None:
    """The format to name when the model may read ``obj`` from S3 itself, else None."""
    if not (rt.settings.s3_location and obj.bucket) or rt.ocr is not None:  # OCR needs bytes
        return None
    limit = rt.embedder.spec.max_s3_image_bytes
    if not limit or obj.size > limit:
        return None
    suffix = obj.key[obj.key.rfind("."):].lower() if "." in obj.key else ""
    return S3_IMAGE_FORMATS.get(suffix)


def _embed_s3_object(rt: Runtime, obj: SourceObject, image_format: str, run_id: str) -> _Unit:
    """Embed an object the model reads from S3 (``s3Location``): no download, no normalize."""
    unit = _Unit([obj])
    try:
        rt.store.wait_writable()  # pay for no vectors while the store cannot take them
    except StoreError as exc:
        unit.store_error, unit.objects = exc, []
        return unit
    try:
        unit.vectors = [rt.embedder.embed_s3_image(obj.uri, image_format)]
    except EmbedFailed as exc:
        unit.failures = [Failure(id=obj.uri, etag=obj.etag, stage="embed", reason=exc.reason,
                                 permanent=exc.permanent)]
        unit.objects = []
        return unit
    unit.billed_images = 1
    unit.metadatas = [record_metadata(obj, None, rt.embedder, run_id)]
    unit.documents = [""]
    return unit


def _run_object(rt: Runtime, obj: SourceObject, run_id: str) -> _Unit:
    """Download, normalize and embed one object in one thread (or let the model read it)."""
    image_format = s3_image_format(rt, obj)
    if image_format is not None:
        return _embed_s3_object(rt, obj, image_format, run_id)
    return _embed_unit(rt, _prepare_unit(rt, _Unit([obj])), run_id)


def _prepare_unit(rt: Runtime, unit: _Unit) -> _Unit:
    """Download, normalize and (OCR on) read the unit's objects; those that fail leave it
    as Failures."""
    ready: list[SourceObject] = []
    for obj in unit.objects:
        image, failure, nbytes = prepare_object(rt, obj)
        unit.bytes_downloaded += nbytes
        if failure is not None:
            unit.failures.append(failure)
        else:
            ready.append(obj)
            unit.images.append(image)
            unit.texts.append(unit.read_text(rt, obj, image))
    unit.objects = ready
    return unit


def _embed_unit(rt: Runtime, unit: _Unit, run_id: str) -> _Unit:
    """Embed a prepared unit; image bytes are dropped once embedded (flat memory)."""
    if not unit.objects:
        return unit
    try:
        rt.store.wait_writable()  # pay for no vectors while the store cannot take them
    except StoreError as exc:
        unit.store_error, unit.objects, unit.images = exc, [], []
        return unit
    try:
        vectors = rt.embedder.embed_images([img.data for img in unit.images])
        unit.billed_images += len(vectors)  # failed calls are not billed
        if len(vectors) != len(unit.objects):  # ids and vectors would be misaligned
            raise EmbedFailed(f"model returned {len(vectors)} vectors for"
                              f" {len(unit.objects)} images", permanent=False)
    except EmbedFailed as exc:
        if exc.permanent and len(unit.objects) > 1:  # find the images the model refuses
            return _embed_each(rt, unit, run_id)
        unit.failures += [
            Failure(id=o.uri, etag=o.etag, stage="embed", reason=exc.reason,
                    permanent=exc.permanent)
            for o in unit.objects
        ]
        unit.objects = []
    else:
        unit.vectors = vectors
        unit.metadatas = [record_metadata(o, img, rt.embedder, run_id, text) for o, img, text
                          in zip(unit.objects, unit.images, unit.texts, strict=True)]
        unit.documents = [text.text if text else "" for text in unit.texts]
    unit.images = []
    return unit


def _embed_each(rt: Runtime, unit: _Unit, run_id: str) -> _Unit:
    """Embed a refused multi-image unit one image a call: one bad image must not fail the
    others of its call."""
    singles = [_embed_unit(rt, _Unit([obj], [img], texts=[text]), run_id)
               for obj, img, text in zip(unit.objects, unit.images, unit.texts, strict=True)]
    unit.objects, unit.images = [], []
    for single in singles:
        unit.objects += single.objects
        unit.vectors += single.vectors
        unit.metadatas += single.metadatas
        unit.documents += single.documents
        unit.failures += single.failures
        unit.billed_images += single.billed_images
        unit.store_error = unit.store_error or single.store_error
    return unit


def _regroup(prepared: Sequence[_Unit], size: int) -> list[_Unit]:
    """Prepared one-object units as units of up to ``size`` objects; the first (empty of
    objects) carries the failures and byte counts."""
    units = [_Unit([], failures=[f for u in prepared for f in u.failures],
                   bytes_downloaded=sum(u.bytes_downloaded for u in prepared),
                   ocr_read=sum(u.ocr_read for u in prepared),
                   ocr_cpu_s=sum(u.ocr_cpu_s for u in prepared))]
    ready = [u for u in prepared if u.objects]
    for start in range(0, len(ready), size):
        group = ready[start : start + size]
        units.append(_Unit([u.objects[0] for u in group], [u.images[0] for u in group],
                           texts=[u.texts[0] for u in group]))
    return units


def _backfill_unit(rt: Runtime, obj: SourceObject) -> _Unit:
    """Read the text of an indexed object whose vector is current (no model call); its
    failures are transient: the record and its vector stay."""
    unit = _prepare_unit(rt, _Unit([obj]))
    unit.failures = [f.model_copy(update={"permanent": False}) for f in unit.failures]
    text = unit.texts[0] if unit.texts else None
    if text is None:
        unit.objects = []
    else:
        unit.metadatas, unit.documents = [text.metadata()], [text.text]
    unit.images = []
    return unit


def _vector_current(meta: dict | None, obj: SourceObject) -> bool:
    """Whether a stored record already holds the vector of ``obj``'s bytes."""
    return (meta is not None and meta.get("etag") == obj.etag
            and int(meta.get("normalize_version", 0)) >= NORMALIZE_VERSION)


def process_batch(rt: Runtime, objects: Sequence[SourceObject], run_id: str) -> BatchResult:
    """Download, normalize, OCR (when on) and embed ``objects`` concurrently, then upsert the
    successes. With OCR on, objects whose vector is already stored only get their text.

    A model taking one image a call gets each object downloaded, normalized and embedded by
    one thread (or read from S3 by the model, see ``s3_image_format``); a model taking
    several gets all of them prepared concurrently first, then embedded in groups of its
    ``max_batch`` (its embedder splits a group further by request size). Per-item problems
    become Failures (permanent ones go to the ledger); only run-level errors (credentials,
    access, store) raise. A store that cannot be written raises a StoreError after the
    vectors already paid for were given every attempt to be stored.
    """
    started = time.perf_counter()
    images = [o for o in objects if not is_video_key(o.key)]
    videos = [o for o in objects if is_video_key(o.key)]
    if videos:
        from imgrag.video_ingest import process_videos

        video_job = rt.pool.submit(process_videos, rt, videos, run_id)
    stored = rt.store.get([o.uri for o in images]) if rt.ocr is not None else {}
    backfill = [o for o in images if _vector_current(stored.get(o.uri), o)]
    embed = [o for o in images if not _vector_current(stored.get(o.uri), o)]
    filling = [rt.pool.submit(_backfill_unit, rt, o) for o in backfill]
    step = rt.embedder.max_batch
    if step == 1:
        done = list(rt.pool.map(lambda obj: _run_object(rt, obj, run_id), embed))
    else:
        prepared = list(rt.pool.map(lambda obj: _prepare_unit(rt, _Unit([obj])), embed))
        done = list(rt.pool.map(lambda unit: _embed_unit(rt, unit, run_id),
                                _regroup(prepared, step)))
    filled = [f.result() for f in filling]
    outcomes = video_job.result() if videos else []

    ids, vectors, metadatas, documents, failures = [], [], [], [], []
    for unit in done:
        failures += unit.failures
        ids += [obj.uri for obj in unit.objects]
        vectors += unit.vectors
        metadatas += unit.metadatas
        documents += unit.documents
    if ids:
        rt.store.upsert(ids, vectors, metadatas, documents)
        rt.ledger.forget(ids)
    upserted = len(ids)
    for outcome in outcomes:
        if outcome.failure is not None:
            failures.append(outcome.failure)
        elif outcome.ids:
            rt.store.replace_source(outcome.result.uri, outcome.ids, outcome.vectors,
                                    outcome.metadatas)
            rt.ledger.forget([outcome.result.uri])
            upserted += len(outcome.ids)
    texts = [(u.objects[0].uri, u.documents[0], u.metadatas[0]) for u in filled if u.objects]
    if texts:
        rt.store.set_texts(*zip(*texts, strict=True))
    stale = remove_stale_records(rt, failures)
    rt.ledger.record(failures, run_id)  # after: a crash in between leaves no stale record
    held_back = next((e for e in [*(u.store_error for u in done),
                                  *(o.store_error for o in outcomes)] if e is not None), None)
    if held_back is not None:
        raise held_back
    for unit in filled:
        failures += unit.failures
    return BatchResult(
        upserted=upserted,
        stale_removed=len(stale),
        failures=failures,
        billed_images=sum(u.billed_images for u in done)
        + sum(o.result.billed_images for o in outcomes),
        bytes_downloaded=sum(u.bytes_downloaded for u in done + filled)
        + sum(o.bytes_downloaded for o in outcomes),
        ocr_read=sum(u.ocr_read for u in done + filled),
        ocr_backfilled=len(texts),
        ocr_cpu_s=round(sum(u.ocr_cpu_s for u in done + filled), 3),
        seconds=time.perf_counter() - started,
        videos=[o.result for o in outcomes],
    )


def remove_stale_records(rt: Runtime, failures: Sequence[Failure]) -> list[str]:
    """Delete the records of objects that now fail permanently (all frames of a video): a
    changed object whose new bytes cannot be indexed must not keep serving the old bytes'
    vectors. The source URIs that had records."""
    permanent = [f.id for f in failures if f.permanent]
    stale = list(rt.store.source_ids(permanent)) if permanent else []
    if stale:
        rt.store.delete_sources(stale)
    return stale
