"""The Source protocol every image source implements, and what counts as an image or video
key."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol

from imgrag.records import SourceObject

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi"})
COPY_CHUNK = 1024 * 1024  # bytes per read when an object is streamed to a file


def _extension(key: str) -> str:
    dot = key.rfind(".")
    return key[dot:].lower() if dot > key.rfind("/") else ""


def is_image_key(key: str) -> bool:
    """True when the key's extension (case-insensitive) names an image format we index."""
    return _extension(key) in IMAGE_EXTENSIONS


def is_video_key(key: str) -> bool:
    """True when the key's extension (case-insensitive) names a video container we index."""
    return _extension(key) in VIDEO_EXTENSIONS


def is_indexed_key(key: str, video: bool) -> bool:
    """True for image keys, and for video keys when ``video`` is on."""
    return is_image_key(key) or (video and is_video_key(key))


class FetchError(Exception):
    """One object could not be read; ``permanent`` says whether a re-run would fail the same."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class Listing:
    """One pass over a source's image objects: iterate it once.

    Its counts belong to this pass alone (two listings of one source, e.g. shard runs
    sharing a Runtime, never mix them) and are final once the iteration has ended.
    """

    def __init__(self, walk: Callable[[Listing], Iterator[SourceObject]]) -> None:
        self.ignored = 0  # keys skipped because they are neither images nor (indexed) videos
        # What this pass could not read: object URIs, and URI prefixes ending in "/" for
        # whole folders. The objects there may still exist: their records must be kept.
        self.unreadable: list[str] = []
        self._objects = walk(self)

    def __iter__(self) -> Iterator[SourceObject]:
        return self._objects


class Source(Protocol):
    """A listable, readable set of images under one scope (bucket + prefix, or a folder)."""

    scope: str  # URI prefix shared by every object of this source; also the deletion scope
    bucket: str  # "" for local folders

    def check(self) -> None:
        """Raise SourceError with a one-line cause when the source cannot be listed."""

    def list_objects(self) -> Listing:
        """Stream the image objects under the scope, in a stable order."""

    def fetch(self, obj: SourceObject) -> bytes:
        """The object's bytes at exactly ``obj.etag``; FetchError otherwise."""

    def fetch_to(self, obj: SourceObject, out: BinaryIO, limit: int) -> int:
        """Stream the object at exactly ``obj.etag`` into ``out`` (never whole in memory);
        the bytes written. FetchError otherwise, or when it holds more than ``limit``."""

    def close(self) -> None:
        """Release what the source holds open (clients, cache files)."""
