"""Query: text or an example image → embedding → nearest records in the store.

Filters (``QueryFilters``, a raw ``where``) run inside Chroma's nearest-neighbour search, so
the top-k is exact within them; ``max_distance`` then drops weak hits. Text vectors come
from a small on-disk cache when the same text was embedded before. An example image that
is itself indexed is searched with its stored vector (no download, no Bedrock call).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from imgrag.embedders import Embedder, EmbedFailed, make_embedder, model_spec
from imgrag.errors import ConfigError, EmbeddingError
from imgrag.filters import QueryFilters, combine_where
from imgrag.normalize import NormalizeError
from imgrag.pipeline import normalize_for_model
from imgrag.records import Hit
from imgrag.settings import Settings
from imgrag.sources.base import FetchError
from imgrag.sources.s3 import make_s3_client, parse_s3_uri, read_object
from imgrag.store import ImageStore, check_where, chroma_errors, collection_vector_space
from imgrag.text_cache import TEXT_CACHE_NAME, TextEmbeddingCache


def parse_where(text: str | None) -> dict[str, Any] | None:
    """A Chroma metadata filter given as JSON on the command line; ConfigError when it is
    not JSON or not a filter Chroma accepts."""
    if not text:
        return None
    try:
        where = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--where is not valid JSON: {exc.msg}") from None
    if not isinstance(where, dict):
        raise ConfigError("--where must be a JSON object, e.g. '{\"bucket\": \"photos\"}'")
    check_where(where)
    return where


class SearchRequest(BaseModel):
    """One search: a text or an example image, how many hits, and what to keep."""

    text: str | None = None
    image: str | None = Field(None, description="Local path or s3:// URI of an example image.")
    k: int = Field(8, ge=1)
    where: dict[str, Any] | None = None
    filters: QueryFilters = Field(default_factory=QueryFilters)
    exclude_self: bool = Field(False, description="Drop the example image's own record.")
    max_distance: float | None = Field(None, ge=0, description="Drop hits farther than this.")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.text is None) == (self.image is None):
            raise ValueError("give a query text or an example image, not both")
        if self.text is not None and not self.text.strip():
            raise ValueError("the query text is empty")
        return self

    @property
    def label(self) -> str:
        """How the query is shown in reports: the text, or ``image <ref>``."""
        return self.text if self.text is not None else f"image {self.image}"


def cut_by_distance(hits: Sequence[Hit], max_distance: float | None) -> list[Hit]:
    """Hits within ``max_distance`` (all of them when it is None)."""
    if max_distance is None:
        return list(hits)
    return [h for h in hits if h.distance <= max_distance]


def _rerank(hits: Sequence[Hit]) -> list[Hit]:
    return [h.model_copy(update={"rank": rank}) for rank, h in enumerate(hits, start=1)]


def search_text(
    store: ImageStore,
    embedder: Embedder,
    text: str,
    k: int = 8,
    where: Mapping[str, Any] | None = None,
    *,
    max_distance: float | None = None,
    cache: TextEmbeddingCache | None = None,
) -> list[Hit]:
    """The ``k`` images closest to ``text`` (cached text vectors when ``cache`` is given)."""
    if not text.strip():
        raise ConfigError("the query text is empty")
    if k < 1:
        raise ConfigError("k must be at least 1")
    try:
        vector = embedder.embed_text(text) if cache is None else cache.embed(embedder, text)
    except EmbedFailed as exc:
        raise EmbeddingError(f"cannot embed the query text: {exc.reason}") from None
    return cut_by_distance(store.query(vector, k=k, where=where), max_distance)


def image_ref_uri(ref: str) -> str:
    """The record id an image reference would have if indexed (``s3://…`` or ``file://…``)."""
    if ref.startswith("s3://"):
        bucket, key = parse_s3_uri(ref)
        if not key or key.endswith("/"):
            raise ConfigError(f"{ref!r} names a prefix, not an image object")
        return f"s3://{bucket}/{key}"
    return Path(ref).expanduser().resolve().as_uri()


def check_image_ref(ref: str) -> None:
    """ConfigError for a malformed S3 URI or a missing local file (reads nothing)."""
    image_ref_uri(ref)
    if not ref.startswith("s3://") and not Path(ref).expanduser().is_file():
        raise ConfigError(f"image file {ref!r} not found")


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
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ConfigError(f"image file {ref!r} not found")
    if path.stat().st_size > limit:
        raise ConfigError(f"{ref} is larger than {limit} bytes")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {ref}: {exc.strerror}") from None


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
    store: ImageStore,
    embedder: Embedder,
    ref: str,
    settings: Settings,
    k: int = 8,
    where: Mapping[str, Any] | None = None,
    *,
    exclude_self: bool = False,
    max_distance: float | None = None,
) -> list[Hit]:
    """The ``k`` images closest to the image at ``ref`` (a path or an ``s3://`` URI).

    An indexed image is searched with its stored vector; ``exclude_self`` drops its record.
    """
    uri = image_ref_uri(ref)
    vector = store.get_embedding(uri)
    if vector is None:
        vector = embed_image_bytes(read_image_ref(ref, settings), embedder, settings)
    hits = store.query(vector, k=k + 1 if exclude_self else k, where=where)
    if exclude_self:
        hits = [h for h in hits if h.id != uri][:k]
    return _rerank(cut_by_distance(hits, max_distance))


def resolve_where(store: ImageStore, request: SearchRequest) -> dict[str, Any] | None:
    """The full Chroma ``where`` of a request, or ``{}`` when no record can match.

    A prefix ending inside a name lists the keys of its folder (already narrowed by
    ``dirs``) and filters by id: exact, at a cost proportional to that folder's size.
    """
    filters = request.filters
    where = combine_where(request.where, *filters.conditions())
    if where:
        check_where(where)  # a one-line ConfigError, not Chroma's ValueError
    if not filters.needs_key_scan:
        return where
    prefix = filters.prefix or ""
    with chroma_errors(f"read the records under prefix {prefix!r}"):
        ids = [rid for rid, meta in store.iter_metadata(where)
               if str(meta.get("key", "")).startswith(prefix)]
    if not ids:
        return {}
    return combine_where(where, {"source_uri": {"$in": ids}})


def settings_for_collection(
    settings: Settings, *, model: str | None = None, dim: int | None = None
) -> Settings:
    """``settings`` with the model and dimension the collection was built with: a query
    embeds with those, whatever ``IMGRAG_MODEL``/``IMGRAG_DIM`` say. A ``model`` or ``dim``
    asked for explicitly (a flag) that differs is a ConfigError."""
    model_id, stored_dim = collection_vector_space(settings)
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

    @property
    def embedder(self) -> Embedder:
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


def run_search(
    settings: Settings,
    request: SearchRequest,
    *,
    store: ImageStore | None = None,
    embedder: Embedder | None = None,
    cache: TextEmbeddingCache | None = None,
) -> list[Hit]:
    """Run one search against the collection named by ``settings``."""
    store = store or ImageStore.open(settings, create=False)
    embedder = embedder or LazyEmbedder(settings)
    where = resolve_where(store, request)
    if where == {}:
        return []
    if request.image is not None:
        return search_image(store, embedder, request.image, settings, request.k, where,
                            exclude_self=request.exclude_self,
                            max_distance=request.max_distance)
    text_cache = open_text_cache(settings) if cache is None else cache
    try:
        return search_text(store, embedder, request.text or "", request.k, where,
                           max_distance=request.max_distance, cache=text_cache)
    finally:
        if cache is None:
            text_cache.close()
