"""Change detection: a source listing against the store's manifest, by ETag, within a scope.

Mark and sweep: every record under the scope starts marked; each listed object unmarks its
own; what is still marked when the listing ends was deleted from the source. The listing
alone decides; nothing is downloaded to plan. An unchanged object whose listing facts moved
(the same bytes uploaded again: new LastModified) is collected for a metadata-only update.

The manifest arrives as a stream sorted by id, and a listing in the same order (S3 lists
keys in UTF-8 binary order, which is the code-point order of the URIs) is merged with it:
memory does not grow with the number of records, only with the records the listing skipped
(the deletion candidates).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain

from imgrag.errors import ConfigError
from imgrag.normalize import NORMALIZE_VERSION
from imgrag.records import Indexed, IngestPlan, SourceObject
from imgrag.sources.base import is_video_key

Shard = tuple[int, int]  # (index, count), index in [0, count)
MASS_DELETE_MIN_RECORDS = 10  # up to this many records, any share of them may be deleted


def parse_shard(text: str | None) -> Shard | None:
    """``"I/N"`` → (I, N) with 0 ≤ I < N; None for no sharding."""
    if not text:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes I/N (e.g. 0/4), not {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text}: need 0 <= I < N")
    return index, count


def in_shard(uri: str, shard: Shard | None) -> bool:
    """Stable assignment of a record id to one of N shards."""
    if shard is None:
        return True
    digest = hashlib.blake2b(uri.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard[1] == shard[0]


@dataclass(frozen=True)
class Sweep:
    """What a finished listing removes: records and ledger entries, or nothing and why."""

    deleted: list[str] = field(default_factory=list)  # record ids
    stale: list[str] = field(default_factory=list)  # records of objects now known to fail
    failures_gone: list[str] = field(default_factory=list)  # failure-ledger entries
    withheld: int = 0  # deletions not done because the listing looks wrong
    warning: str = ""


class ScopePlanner:
    """Classifies a streamed listing; the to-do objects are yielded as they are found.

    ``manifest`` is the store's records under the scope: a stream of (id, Indexed) sorted
    by id, or a mapping. A listing in id order is merged with it in one pass; when the
    listing goes out of order (a local folder lists a folder's files before its
    subfolders), the rest of the manifest is read into memory there and the plan stays
    exact. A record whose ETag matches but whose image was normalized by an older
    ``normalize_version`` is stale (its vector would differ today): it counts as changed.
    With ``ocr_version`` (OCR on), an unchanged image record whose text is older or missing
    is yielded too, counted as ``ocr_backfill``: the batch reads its text and keeps its
    vector (video frames are not OCR'd).
    """

    def __init__(
        self,
        scope: str,
        manifest: Mapping[str, Indexed] | Iterable[tuple[str, Indexed]],
        known_failures: Mapping[str, str] | None = None,
        shard: Shard | None = None,
        retry_failed: bool = False,
        normalize_version: int = NORMALIZE_VERSION,
        ocr_version: int = 0,
    ) -> None:
        self.shard = shard
        self.plan = IngestPlan(scope=scope)
        entries = sorted(manifest.items()) if isinstance(manifest, Mapping) else manifest
        self._manifest = iter(entries)
        self._head: tuple[str, Indexed] | None = None  # the next manifest record not passed
        self._started = False
        self._passed: dict[str, Indexed] = {}  # records the listing went past, unseen so far
        self._last = ""  # the last URI listed
        self._indexed = 0  # records of the scope (and shard) read from the manifest
        self._normalize_version = normalize_version
        self._ocr_version = ocr_version
        self._known_failures = dict(known_failures or {})
        self._unseen_failures = {uri for uri in self._known_failures if in_shard(uri, shard)}
        self._retry_failed = retry_failed
        self._stale: list[str] = []
        self.refreshed: list[SourceObject] = []  # unchanged, but last_modified or size moved
        self.text_only: set[str] = set()  # yielded for their OCR text only (vector current)

    def _next_record(self) -> tuple[str, Indexed] | None:
        for entry in self._manifest:
            if self.shard is None or in_shard(entry[0], self.shard):
                self._indexed += 1
                return entry
        return None

    def _drain(self) -> None:
        """Read the rest of the manifest into ``_passed``."""
        head = [self._head] if self._head is not None else []
        for uri, rec in chain(head, iter(self._next_record, None)):
            self._passed[uri] = rec
        self._head, self._started = None, True

    def _stored(self, uri: str) -> Indexed | None:
        """The manifest record of a listed ``uri``, or None; the records the listing went
        past are kept as unseen."""
        if uri < self._last:  # out of order: the merge no longer works
            self._drain()
        self._last = uri
        stored = self._passed.pop(uri, None)
        if stored is not None:
            return stored
        head = self._head if self._started else self._next_record()
        self._started = True
        while head is not None and head[0] < uri:
            self._passed[head[0]] = head[1]
            head = self._next_record()
        if head is not None and head[0] == uri:
            self._head = self._next_record()
            return head[1]
        self._head = head
        return None

    def todo(self, listing: Iterable[SourceObject]) -> Iterator[SourceObject]:
        """Yield new and changed objects; count the rest. Exhaust it before ``deleted``
        (the counts of ``plan`` are final then)."""
        plan = self.plan
        listed = unchanged = skipped = 0  # counted here: a pydantic field write costs µs
        try:
            for obj in listing:
                if not in_shard(obj.uri, self.shard):
                    continue
                listed += 1
                stored = self._stored(obj.uri)
                self._unseen_failures.discard(obj.uri)
                if (stored is not None and stored.etag == obj.etag
                        and stored.normalize_version >= self._normalize_version):
                    unchanged += 1
                    if (stored.size, stored.last_modified) != (obj.size, obj.last_modified_text):
                        self.refreshed.append(obj)
                    if stored.ocr_version < self._ocr_version and not is_video_key(obj.key):
                        plan.ocr_backfill += 1
                        self.text_only.add(obj.uri)
                        yield obj
                elif not self._retry_failed and self._known_failures.get(obj.uri) == obj.etag:
                    skipped += 1
                    if stored is not None:  # a record of older bytes: stale
                        self._stale.append(obj.uri)
                elif stored is None:
                    plan.new += 1
                    yield obj
                else:
                    plan.changed += 1
                    yield obj
        finally:
            plan.listed += listed
            plan.unchanged += unchanged
            plan.skipped += skipped

    def deleted(self, unreadable: Sequence[str] = ()) -> list[str]:
        """Records under the scope that the listing did not contain, except those the
        listing could not see: under ``unreadable`` URIs (or URI prefixes ending in "/")."""
        self._drain()
        return sorted(uri for uri in self._passed if not under_any(uri, unreadable))

    def failures_gone(self, unreadable: Sequence[str] = ()) -> list[str]:
        """Failure-ledger entries under the scope whose objects the listing did not contain
        (the same sweep as ``deleted``, over the ledger)."""
        return sorted(u for u in self._unseen_failures if not under_any(u, unreadable))

    def sweep(
        self,
        unreadable: Sequence[str] = (),
        max_fraction: float = 1.0,
        allow_mass_delete: bool = False,
    ) -> Sweep:
        """``deleted`` and ``failures_gone``, unless the deletions look like a wrong listing
        (nothing listed, or more than ``max_fraction`` of the records): then none is done.
        Records of listed objects skipped as known failures are stale and always go."""
        deleted = self.deleted(unreadable)
        reason = "" if allow_mass_delete else self._mass_deletion(len(deleted), max_fraction)
        if reason:
            return Sweep(stale=self._stale, withheld=len(deleted), warning=(
                f"{reason}: {len(deleted)} deletions withheld (if the source really lost"
                " them, re-run with --allow-mass-delete)"))
        return Sweep(deleted, self._stale, self.failures_gone(unreadable))

    def _mass_deletion(self, count: int, max_fraction: float) -> str:
        """Why deleting ``count`` of the scope's records looks like a listing gone wrong
        (an unmounted folder, a mistyped prefix), or "" when it does not."""
        scope, indexed = self.plan.scope, self._indexed
        if count == 0:
            return ""
        if self.plan.listed == 0:
            return f"the listing of {scope} found no images but {indexed} records are indexed"
        if indexed > MASS_DELETE_MIN_RECORDS and count > max_fraction * indexed:
            return (f"{count} of the {indexed} records under {scope} ({count / indexed:.0%})"
                    f" are gone from the listing, above the max delete fraction {max_fraction}")
        return ""


def under_any(uri: str, paths: Sequence[str]) -> bool:
    """True when ``uri`` is one of ``paths`` or lies under one ending in "/"."""
    return any(uri == p or (p.endswith("/") and uri.startswith(p)) for p in paths)

