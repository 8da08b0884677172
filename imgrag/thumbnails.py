"""Thumbnails of search hits, for galleries, contact sheets and vision summaries.

Where a thumbnail comes from, first match wins:

1. a local copy the caller names for the hit's id (a notebook's downloaded files);
2. the thumbnail cache: JPEG files named by a hash of (uri, etag, side), never by key
   text, in ``<state dir>/thumbnails``;
3. the source itself: S3 GetObject pinned to the indexed ETag, or the local file checked
   against its indexed content hash, so a thumbnail always shows the bytes that were
   embedded. The result is downscaled with ingest's decoder and written to the cache.
   A video frame's hit streams its video to a temporary file and decodes the frame at
   its time.

Thumbnails are cached at ``THUMBNAIL_SIDE`` (galleries, contact sheets, run artifacts)
and at any larger side asked for (summaries); a smaller side is scaled from the cached
``THUMBNAIL_SIDE`` one. A run artifact, a gallery and a contact sheet of the same hits
thus fetch each original once, ever; originals are never kept in memory.

Thumbnails are made when a hit is first shown rather than at ingest: a gallery shows a
few hits out of the whole collection, so ingest would pay decode time and disk for
images nobody looks at, and a query host using a Chroma server may not be the ingest host.
A hit that cannot be shown gets an ``error`` instead of failing the whole page.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, Field

from imgrag.normalize import NormalizeError, normalize_image
from imgrag.records import Hit, SourceObject
from imgrag.settings import Settings
from imgrag.sources import FetchError, LocalSource, Source
from imgrag.sources.local import file_uri_path, path_text, read_regular_file
from imgrag.video_records import is_frame

THUMBNAIL_SIDE = 256  # px: the size cached for every shown hit
THUMBNAIL_DIR = "thumbnails"
_MAX_THUMBNAIL_BYTES = 5 * 1024 * 1024
_MAX_WORKERS = 8


class Thumbnail(BaseModel):
    """A small JPEG of one hit, or the reason there is none."""

    id: str
    data: bytes | None = Field(None, repr=False)
    width: int = 0
    height: int = 0
    origin: Literal["local", "cache", "source", "none"] = "none"
    error: str | None = None

    @property
    def data_url(self) -> str | None:
        """``data:image/jpeg;base64,…`` for embedding in HTML or a vision request."""
        if self.data is None:
            return None
        return "data:image/jpeg;base64," + base64.b64encode(self.data).decode("ascii")


def cache_name(uri: str, etag: str, side: int) -> str:
    """The cache file name of a thumbnail: a hash, so no key text reaches the file system."""
    digest = hashlib.sha256(f"{uri}\n{etag}\n{side}".encode()).hexdigest()
    return f"{digest}.jpg"


def local_root(uri: str, key: str) -> Path:
    """The folder a ``file://`` record was indexed from (its URI path minus its key)."""
    path = file_uri_path(uri)
    depth = len(PurePosixPath(key).parts)
    if depth == 0 or not path_text(path).endswith("/" + key):
        raise FetchError("record key does not match its file URI", permanent=True)
    return path.parents[depth - 1]


class ThumbnailLoader:
    """Loads thumbnails for hits; reuse one loader for a page (it keeps one S3 client)."""

    def __init__(
        self,
        settings: Settings,
        *,
        local_paths: Mapping[str, str | Path] | None = None,
        cache_dir: Path | None = None,
        s3_client: Any = None,
    ) -> None:
        self.settings = settings
        self.local_paths = dict(local_paths or {})
        self.cache_dir = cache_dir or settings.resolved_state_dir / THUMBNAIL_DIR
        self._s3_client = s3_client
        self._lock = threading.Lock()

    def load(self, hits: Sequence[Hit], side: int = THUMBNAIL_SIDE) -> list[Thumbnail]:
        """One thumbnail per hit, in order, fetched concurrently."""
        if not hits:
            return []
        workers = min(_MAX_WORKERS, len(hits))
        with ThreadPoolExecutor(workers, thread_name_prefix="imgrag-thumb") as pool:
            return list(pool.map(lambda h: self.load_one(h, side), hits))

    def load_one(self, hit: Hit, side: int = THUMBNAIL_SIDE) -> Thumbnail:
        """The thumbnail of one hit; never raises for a missing or broken image."""
        if side < THUMBNAIL_SIDE:  # scaled from the cached size: no fetch of its own
            base = self.load_one(hit, THUMBNAIL_SIDE)
            if base.data is None:
                return base
            return self._shrink(hit.id, base.data, side, base.origin)
        local = self.local_paths.get(hit.id)
        if local is not None:
            try:
                data = read_regular_file(Path(local), self.settings.max_object_bytes)
                if len(data) <= self.settings.max_object_bytes:
                    return self._shrink(hit.id, data, side, "local")
            except (OSError, FetchError):
                pass  # fall back to the cache and the source
        etag = str(hit.metadata.get("etag", ""))
        cached = self.cache_dir / cache_name(hit.id, etag, side)
        if etag and cached.is_file():
            try:
                data = read_regular_file(cached, _MAX_THUMBNAIL_BYTES)
                with Image.open(io.BytesIO(data)) as im:
                    width, height = im.size
                return Thumbnail(id=hit.id, data=data, width=width, height=height,
                                 origin="cache")
            except (OSError, FetchError):
                pass  # a damaged cache file is rebuilt from the source
        try:
            original = self._fetch(hit)
        except FetchError as exc:
            return Thumbnail(id=hit.id, error=exc.reason)
        thumb = self._shrink(hit.id, original, side, "source")
        if thumb.data is not None and etag:
            self._write_cache(cached, thumb.data)
            if side > THUMBNAIL_SIDE:  # a summary's image: keep the gallery size too
                small = self._shrink(hit.id, thumb.data, THUMBNAIL_SIDE, "source")
                if small.data is not None:
                    self._write_cache(self.cache_dir / cache_name(hit.id, etag, THUMBNAIL_SIDE),
                                      small.data)
        return thumb

    def _shrink(self, uri: str, data: bytes, side: int, origin: str) -> Thumbnail:
        try:
            image = normalize_image(data, max_side=side, max_bytes=_MAX_THUMBNAIL_BYTES,
                                    max_source_pixels=self.settings.max_source_pixels,
                                    jpeg_quality=85)
        except NormalizeError as exc:
            return Thumbnail(id=uri, error=exc.reason)
        return Thumbnail(id=uri, data=image.data, width=image.width, height=image.height,
                         origin=origin)

    def _fetch(self, hit: Hit) -> bytes:
        meta = hit.metadata
        frame = is_frame(meta)
        try:
            obj = SourceObject(uri=str(meta["source_uri"]) if frame else hit.id,
                               bucket=str(meta.get("bucket", "")),
                               key=str(meta["key"]), etag=str(meta["etag"]),
                               size=int(meta.get("size", 0)))
            frame_t = float(meta.get("frame_t", 0))
        except (KeyError, TypeError, ValueError):
            raise FetchError("record has no source key/etag", permanent=True) from None
        if obj.size > self.settings.max_object_bytes:
            raise FetchError(f"object is {obj.size} bytes, above the limit", permanent=True)
        source = self._source(obj)
        return self._frame(source, obj, frame_t) if frame else source.fetch(obj)

    def _source(self, obj: SourceObject) -> Source:
        if obj.uri.startswith("s3://"):
            from imgrag.sources.s3 import S3Source

            return S3Source(obj.bucket, "", self._s3())
        if obj.uri.startswith("file://"):
            return LocalSource(local_root(obj.uri, obj.key))
        raise FetchError("unknown source scheme", permanent=True)

    def _frame(self, source: Source, obj: SourceObject, t: float) -> bytes:
        """A JPEG of the video frame at ``t`` s, the video streamed to a temporary file."""
        from imgrag.video import VideoError, VideoReader, budget_of

        suffix = PurePosixPath(obj.key).suffix
        with tempfile.NamedTemporaryFile(prefix="imgrag-video-", suffix=suffix) as tmp:
            source.fetch_to(obj, tmp, self.settings.max_object_bytes)
            tmp.flush()
            try:
                with VideoReader(tmp.name, budget_of(self.settings)) as reader:
                    return reader.frame_at(t, self.settings.max_side)
            except VideoError as exc:
                raise FetchError(exc.reason, permanent=True) from None

    def _s3(self) -> Any:
        with self._lock:
            if self._s3_client is None:
                from imgrag.sources.s3 import make_s3_client  # boto3: only when needed

                self._s3_client = make_s3_client(self.settings.region, max_pool=_MAX_WORKERS)
            return self._s3_client

    def _write_cache(self, path: Path, data: bytes) -> None:
        """Atomic write; a read-only state directory only means no cache."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        except OSError:
            return
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
