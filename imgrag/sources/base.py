"""The Source protocol every image source implements, and what counts as an image key."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from imgrag.records import SourceObject

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


def is_image_key(key: str) -> bool:
    """True when the key's extension (case-insensitive) names an image format we index."""
    dot = key.rfind(".")
    return dot > key.rfind("/") and key[dot:].lower() in IMAGE_EXTENSIONS


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
        self.ignored = 0  # keys skipped because they are not images
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

    def close(self) -> None:
        """Release what the source holds open (clients, cache files)."""
