"""Query filters and the record metadata they rely on, kept side by side.

Chroma 1.x metadata filters compare numbers (``$gt``…) and test equality or membership
(``$eq``, ``$in``, ``$contains`` on array fields); they cannot match a string prefix. So
ingest stores two helper fields (see :func:`filter_metadata`):

- ``dirs``: the folder prefixes of the key (``a/b/c.jpg`` → ``["a/", "a/b/"]``), so a
  folder prefix is one ``$contains`` test, applied inside the nearest-neighbour search
  (the top-k stays exact). Bounded: the first ``MAX_KEY_DIRS`` levels, each at most
  ``MAX_DIR_CHARS`` long (all of them would grow with the square of the key's depth); a
  deeper folder is narrowed to its deepest stored ancestor, then finished by key;
- ``last_modified_ts``: ``last_modified`` as POSIX seconds, for ``--modified-after``.

A prefix that ends inside a file name (``catalog/red-``), or lies deeper than ``dirs``
reaches, is narrowed by ``dirs`` to its deepest stored folder, then finished by listing that
folder's keys (see :func:`imgrag.query.resolve_where`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from imgrag.errors import ConfigError
from imgrag.records import SourceObject

MAX_KEY_DIRS = 16
"""Folder levels of a key stored in ``dirs``."""

MAX_DIR_CHARS = 256
"""Longest folder prefix stored in ``dirs``: a record's ``dirs`` stays under 4 KiB."""


def key_dirs(key: str) -> list[str]:
    """The folder prefixes of an object key that ``dirs`` holds, shortest first, each
    ending with ``/``: at most ``MAX_KEY_DIRS``, none longer than ``MAX_DIR_CHARS``."""
    dirs: list[str] = []
    end = key.find("/")
    while end != -1 and end < MAX_DIR_CHARS and len(dirs) < MAX_KEY_DIRS:
        dirs.append(key[: end + 1])
        end = key.find("/", end + 1)
    return dirs


def stored_folder(prefix: str) -> str:
    """The deepest folder of ``prefix`` that ``dirs`` holds ("" for none): every key that
    starts with ``prefix`` has it in its ``dirs``."""
    dirs = key_dirs(prefix[: prefix.rfind("/") + 1])
    return dirs[-1] if dirs else ""


def filter_metadata(obj: SourceObject) -> dict[str, Any]:
    """The filter helper fields of a record (Chroma refuses None values and empty lists)."""
    extra: dict[str, Any] = {}
    dirs = key_dirs(obj.key)
    if dirs:
        extra["dirs"] = dirs
    if obj.last_modified is not None:
        extra["last_modified_ts"] = obj.last_modified.timestamp()
    return extra


def parse_date(text: str) -> datetime:
    """``2024-06-01`` or an ISO 8601 date-time; naive values are taken as UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"invalid date {text!r}: use YYYY-MM-DD or an ISO 8601 date-time"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class QueryFilters(BaseModel):
    """Filters a user can ask for by name; all optional, combined with AND."""

    model_config = ConfigDict(frozen=True)

    prefix: str | None = Field(None, description="Object key prefix, as in S3.")
    bucket: str | None = None
    min_width: int | None = Field(None, ge=1, description="Source width in pixels, at least.")
    modified_after: datetime | None = Field(
        None, description="Objects last modified at or after this instant."
    )

    @property
    def folder(self) -> str:
        """The folder ``dirs`` can filter by: the prefix's own (up to its last ``/``) or,
        when that is deeper than ``dirs`` reaches, its deepest stored ancestor; or ``""``."""
        return stored_folder(self.prefix or "")

    @property
    def needs_key_scan(self) -> bool:
        """True when the prefix ends inside a name or below the folders ``dirs`` holds,
        which no metadata filter can express."""
        return bool(self.prefix) and self.prefix != self.folder

    def conditions(self) -> list[dict[str, Any]]:
        """The Chroma ``where`` conditions these filters translate to."""
        conds: list[dict[str, Any]] = []
        if self.folder:
            conds.append({"dirs": {"$contains": self.folder}})
        if self.bucket is not None:
            conds.append({"bucket": self.bucket})
        if self.min_width is not None:
            conds.append({"width": {"$gte": self.min_width}})
        if self.modified_after is not None:
            when = self.modified_after
            when = when if when.tzinfo else when.replace(tzinfo=UTC)
            conds.append({"last_modified_ts": {"$gte": when.timestamp()}})
        return conds


def combine_where(*parts: dict[str, Any] | None) -> dict[str, Any] | None:
    """AND of Chroma ``where`` clauses; ``None`` when there is nothing to filter."""
    clauses = [p for p in parts if p]
    if not clauses:
        return None
    if len(clauses) == 1:
        return clauses[0]
    return {"$and": clauses}
