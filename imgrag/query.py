"""Query: text, an example image or both → embedding → nearest records in the store.

Filters (``QueryFilters``, a raw ``where``) run inside Chroma's nearest-neighbour search, so
the top-k is exact within them; ``max_distance`` or the ``gap`` cutoff then drop weak hits.
Frames of one video are grouped into one hit (its best frame, with the times of the others
that rank above the best hit left out) unless ``group_by="none"``: the search widens until
it has more than ``k`` groups. Text vectors come from a small on-disk cache when the same
text was embedded before. An example image that is itself indexed is searched with its
stored vector (no download, no Bedrock call). Negative terms subtract their (cached) text
vectors. OCR text matches are fused with the vector hits (:mod:`imgrag.hybrid`), and the
top hits may be re-ordered by a vision model (:mod:`imgrag.rerank`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from imgrag.embedders import Embedder, EmbedFailed, make_embedder, model_spec
from imgrag.embedders.base import average, unit
from imgrag.errors import ConfigError, EmbeddingError
from imgrag.filters import QueryFilters, combine_where
from imgrag.hybrid import fuse, query_terms, text_hits
from imgrag.normalize import NormalizeError
from imgrag.pipeline import normalize_for_model
from imgrag.records import Hit
from imgrag.request import GroupBy, SearchRequest, image_ref_uri
from imgrag.rerank import RERANK_CACHE_NAME, RerankCache, RerankOutcome, rerank
from imgrag.settings import Settings
from imgrag.sources.base import FetchError
from imgrag.sources.local import read_regular_file
from imgrag.sources.s3 import make_s3_client, read_object
from imgrag.sources.s3_uri import parse_s3_uri
from imgrag.store import check_where, chroma_errors
from imgrag.stores import VectorStore, open_store, vector_space
from imgrag.text_cache import TEXT_CACHE_NAME, TextEmbeddingCache
from imgrag.video_records import group_by_video, group_key

WIDEN_FACTOR = 4  # a grouped search short of k + 1 groups asks for this many times more hits


def cut_by_distance(hits: Sequence[Hit], max_distance: float | None) -> list[Hit]:
    """Hits within ``max_distance`` (all of them when it is None)."""
    if max_distance is None:
        return list(hits)
    return [h for h in hits if h.distance <= max_distance]


NEGATIVE_WEIGHT = 0.5  # share of a negative term's unit vector subtracted from the query


def cut_by_gap(hits: Sequence[Hit]) -> list[Hit]:
    """The hits before the largest jump in distance (all of them for fewer than 3)."""
    if len(hits) < 3:
        return list(hits)
    gaps = [b.distance - a.distance for a, b in pairwise(hits)]
    return list(hits[: gaps.index(max(gaps)) + 1])


def subtract(vector: Sequence[float], negatives: Sequence[Sequence[float]],
             weight: float = NEGATIVE_WEIGHT) -> list[float]:
    """``vector`` minus ``weight`` × each negative (all as unit vectors), length 1."""
    result = unit(vector)
    for negative in negatives:
        result = [x - weight * y for x, y in zip(result, unit(negative), strict=True)]
    return unit(result)


class SearchReport(BaseModel):
    """What a search did besides its hits: for the CLI's warning lines and cost report."""

    text_match: bool = False  # OCR text matches were fused in
    text_matches: int = 0
    rerank: RerankOutcome | None = None
    warnings: list[str] = Field(default_factory=list)


def _renumber(hits: Sequence[Hit]) -> list[Hit]:
    return [h.model_copy(update={"rank": rank}) for rank, h in enumerate(hits, start=1)]


def search_text(
    store: VectorStore,
    embedder: Embedder,
    text: str,
    k: int = 8,
    where: Mapping[str, Any] | None = None,
    *,
    max_distance: float | None = None,
    cache: TextEmbeddingCache | None = None,
    group_by: GroupBy = "video",
) -> list[Hit]:
    """The ``k`` images (or videos, at their best frame) closest to ``text`` (cached text
    vectors when ``cache`` is given)."""
    if k < 1:
        raise ConfigError("k must be at least 1")
    vector, _ = embed_query_text(embedder, text, cache)
    return search_vector(store, vector, k, where, max_distance=max_distance, group_by=group_by)


def embed_query_text(
    embedder: Embedder, text: str, cache: TextEmbeddingCache | None = None
) -> tuple[list[float], bool]:
    """The vector of a query text, and whether the cache answered (no Bedrock call)."""
    if not text.strip():
        raise ConfigError("the query text is empty")
    cached = cache.get(embedder.model_id, embedder.dim, text) if cache is not None else None
    if cached is not None:
        return cached, True
    try:
        vector = embedder.embed_text(text)
    except EmbedFailed as exc:
        raise EmbeddingError(f"cannot embed the query text: {exc.reason}") from None
    if cache is not None:
        cache.put(embedder.model_id, embedder.dim, text, vector)
    return vector, False


def search_vector(
    store: VectorStore,
    vector: Sequence[float],
    k: int = 8,
    where: Mapping[str, Any] | None = None,
    *,
    exclude: str | None = None,
    max_distance: float | None = None,
    group_by: GroupBy = "video",
) -> list[Hit]:
    """The ``k`` records nearest to ``vector``; ``exclude`` drops one record id (the
    example's own), still returning ``k`` hits when there are. With ``group_by="video"``,
    ``k`` groups: one hit per video at its best frame (see ``group_by_video``); the search
    widens until it sees a group beyond the ``k``-th."""
    n = (k if group_by == "none" else k + 1) + (exclude is not None)
    while True:
        hits = store.query(vector, k=n, where=where)
        kept = cut_by_distance([h for h in hits if h.id != exclude], max_distance)
        if group_by == "none":
            return _renumber(kept[:k])
        exhausted = len(hits) < n or len(kept) < len(hits) - (exclude is not None)
        if exhausted or len({group_key(h) for h in kept}) > k:
            return group_by_video(kept, k)
        n *= WIDEN_FACTOR


def read_image_ref(ref: str, settings: Settings, s3_client: Any = None) -> bytes:
    """The bytes of a local image file or an S3 object; ConfigError with a one-line cause."""
    limit = settings.max_object_bytes
    if ref.startswith("s3://"):
        bucket, key = parse_s3_uri(ref)
        client = s3_client or make_s3_client(settings.region)
        try:
            return read_object(client, bucket, key, limit=limit)
        except FetchError as exc:
            raise ConfigError(f"cannot read {ref}: {exc.reason}") from None
    try:
        data = read_regular_file(Path(ref).expanduser(), limit)
    except FileNotFoundError:
        raise ConfigError(f"image file {ref!r} not found") from None
    except FetchError as exc:
        raise ConfigError(f"cannot read {ref}: {exc.reason}") from None
    if len(data) > limit:
        raise ConfigError(f"{ref} is larger than {limit} bytes")
    return data


def embed_image_bytes(data: bytes, embedder: Embedder, settings: Settings) -> list[float]:
    """Normalize with the limits ingest uses, then embed; one-line errors."""
    try:
        image = normalize_for_model(data, embedder, settings)
    except NormalizeError as exc:
        raise ConfigError(f"the query image is not usable: {exc.reason}") from None
    try:
        return embedder.embed_images([image.data])[0]
    except EmbedFailed as exc:
        raise EmbeddingError(f"cannot embed the query image: {exc.reason}") from None


def search_image(
    store: VectorStore,
    embedder: Embedder,
    ref: str,
    settings: Settings,
    k: int = 8,
    where: Mapping[str, Any] | None = None,
    *,
    exclude_self: bool = False,
    max_distance: float | None = None,
    group_by: GroupBy = "video",
) -> list[Hit]:
    """The ``k`` images (or video moments) closest to the image at ``ref`` (a path or an
    ``s3://`` URI).

    An indexed image is searched with its stored vector; ``exclude_self`` drops its record.
    """
    uri = image_ref_uri(ref)
    vector = store.get_embedding(uri)
    if vector is None:
        vector = embed_image_bytes(read_image_ref(ref, settings), embedder, settings)
    return search_vector(store, vector, k, where, exclude=uri if exclude_self else None,
                         max_distance=max_distance, group_by=group_by)


def resolve_where(store: VectorStore, request: SearchRequest) -> dict[str, Any] | None:
    """The full Chroma ``where`` of a request, or ``{}`` when no record can match.

    A prefix ending inside a name lists the keys of its folder (already narrowed by
    ``dirs``) and filters by id: exact, at a cost proportional to that folder's size.
    """
    return resolve_filters(store, request.filters, request.where)


def resolve_filters(
    store: VectorStore, filters: QueryFilters, where: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """:func:`resolve_where` for named ``filters`` and a raw ``where``."""
    where = combine_where(where, *filters.conditions())
    if where:
        check_where(where)  # a one-line ConfigError, not Chroma's ValueError
    if not filters.needs_key_scan:
        return where
    prefix = filters.prefix or ""
    with chroma_errors(f"read the records under prefix {prefix!r}"):
        ids = list({str(meta.get("source_uri", rid)) for rid, meta in store.iter_metadata(where)
                    if str(meta.get("key", "")).startswith(prefix)})
    if not ids:
        return {}
    return combine_where(where, {"source_uri": {"$in": ids}})


def settings_for_collection(
    settings: Settings, *, model: str | None = None, dim: int | None = None
) -> Settings:
    """``settings`` with the model and dimension the collection was built with: a query
    embeds with those, whatever ``IMGRAG_MODEL``/``IMGRAG_DIM`` say. A ``model`` or ``dim``
    asked for explicitly (a flag) that differs is a ConfigError."""
    model_id, stored_dim = vector_space(settings)
    if (model is not None and model_spec(model).model_id != model_id) or (
            dim is not None and dim != stored_dim):
        raise ConfigError(
            f"collection {settings.collection!r} holds {model_id} vectors of dim {stored_dim};"
            " a query embeds with the collection's model (drop --model/--dim)")
    if (model_id, stored_dim) == (settings.model_id, settings.dim):
        return settings
    prices = {} if model_id == settings.model_id else {
        "price_per_image": None, "price_per_1k_text_tokens": None}  # the collection model's
    return Settings(**(settings.model_dump() | {"model": model_id, "dim": stored_dim}
                       | prices))


class LazyEmbedder:
    """The settings' embedder, built on first use: a text query answered from the cache
    never pays for creating a Bedrock client (a boto3 client takes ~0.1–0.3 s to build)."""

    def __init__(self, settings: Settings) -> None:
        self.model_id = settings.model_id
        self.dim = settings.dim
        self._settings = settings
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    @property
    def embedder(self) -> Embedder:
        with self._lock:  # one client even when threads ask at once (the search app)
            if self._embedder is None:
                self._embedder = make_embedder(self._settings)
            return self._embedder

    @property
    def text_tokens(self) -> int:
        return self._embedder.text_tokens if self._embedder is not None else 0

    def embed_text(self, text: str) -> list[float]:
        return self.embedder.embed_text(text)

    def embed_images(self, images: Sequence[bytes]) -> list[list[float]]:
        return self.embedder.embed_images(images)

    def __getattr__(self, name: str) -> Any:  # the model's limits: max_batch, max_image_side…
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.embedder, name)


def open_text_cache(settings: Settings) -> TextEmbeddingCache:
    """The text-embedding cache in the settings' state directory."""
    return TextEmbeddingCache(settings.resolved_state_dir / TEXT_CACHE_NAME)


def query_vector(store: VectorStore, embedder: Embedder, request: SearchRequest,
                 settings: Settings, cache: TextEmbeddingCache) -> list[float]:
    """The request's vector: its text, its example image, or both averaged (one model call
    with both, or none for an indexed image and a cached text), minus its negative terms."""
    positive = request.positive_text

    def text_vector(text: str) -> list[float]:
        return cache.embed(embedder, text)

    try:
        if request.image is None:
            vector = text_vector(positive)
        elif (stored := store.get_embedding(image_ref_uri(request.image))) is not None:
            vector = average(stored, text_vector(positive)) if positive else stored
        elif positive:
            data = read_image_ref(request.image, settings)
            try:
                image = normalize_for_model(data, embedder, settings)
            except NormalizeError as exc:
                raise ConfigError(f"the query image is not usable: {exc.reason}") from None
            vector = embedder.embed_image_text(image.data, positive)
        else:
            vector = embed_image_bytes(read_image_ref(request.image, settings), embedder,
                                       settings)
        negatives = [text_vector(n) for n in request.negatives]
    except EmbedFailed as exc:
        raise EmbeddingError(f"cannot embed the query: {exc.reason}") from None
    return subtract(vector, negatives) if negatives else vector


def with_text_matches(
    store: VectorStore, vector: Sequence[float], hits: Sequence[Hit], text: str, k: int,
    where: Mapping[str, Any] | None = None, *, mode: str = "auto", exclude: str | None = None,
    report: SearchReport | None = None,
) -> list[Hit]:
    """``hits`` fused with the records whose OCR text holds words of ``text`` (``mode``
    "on"; "auto": when the collection has OCR text; "off": ``hits`` as they are)."""
    terms = query_terms(text)
    if not terms or mode == "off" or (mode == "auto" and not store.has_texts()):
        return list(hits)
    matches = [h for h in text_hits(store, terms, vector, where) if h.id != exclude]
    if report is not None:
        report.text_match, report.text_matches = True, len(matches)
    return fuse(hits, matches, k)


def run_search(
    settings: Settings,
    request: SearchRequest,
    *,
    store: VectorStore | None = None,
    embedder: Embedder | None = None,
    cache: TextEmbeddingCache | None = None,
    report: SearchReport | None = None,
) -> list[Hit]:
    """Run one search against the collection named by ``settings``; ``report``, when given,
    is filled with what the search did (text matches, re-ranking, warnings)."""
    store = store or open_store(settings, create=False)
    embedder = embedder or LazyEmbedder(settings)
    report = report if report is not None else SearchReport()
    where = resolve_where(store, request)
    if where == {}:
        return []
    text_cache = open_text_cache(settings) if cache is None else cache
    try:
        vector = query_vector(store, embedder, request, settings, text_cache)
    finally:
        if cache is None:
            text_cache.close()
    own = image_ref_uri(request.image) if request.exclude_self and request.image else None
    hits = search_vector(store, vector, request.k, where, exclude=own,
                         max_distance=request.max_distance, group_by=request.group_by)
    if request.cutoff == "gap":
        hits = cut_by_gap(hits)
    hits = _renumber(with_text_matches(store, vector, hits, request.positive_text, request.k,
                                       where, mode=request.text_match, exclude=own,
                                       report=report))
    if request.rerank:
        hits = _rerank_hits(settings, request, hits, report)
    return hits


def _rerank_hits(settings: Settings, request: SearchRequest, hits: list[Hit],
                 report: SearchReport) -> list[Hit]:
    from imgrag.summarize import DEFAULT_OPENAI_MODEL
    from imgrag.thumbnails import ThumbnailLoader

    cache = RerankCache(settings.resolved_state_dir / RERANK_CACHE_NAME)
    try:
        outcome = rerank(request.positive_text or "images similar to the example image", hits,
                         ThumbnailLoader(settings),
                         model=request.rerank_model or DEFAULT_OPENAI_MODEL,
                         top=request.rerank_top, cache=cache,
                         prices=(settings.openai_price_per_1m_input_tokens,
                                 settings.openai_price_per_1m_output_tokens))
    finally:
        cache.close()
    report.rerank = outcome
    if outcome.warning:
        report.warnings.append(outcome.warning)
    return outcome.hits
