"""Local folder source: files under a directory, with a content hash as their ETag.

Hashes are cached by (file URI, size, mtime) in a small SQLite file so a re-run over an
unchanged folder reads no file contents. A record's id is ``Path.as_uri()``: the name's
bytes percent-encoded, so names that are not UTF-8 have a well-defined id too.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import BinaryIO
from urllib.parse import unquote_to_bytes, urlsplit

from imgrag.errors import SourceError
from imgrag.records import SourceObject
from imgrag.sources.base import COPY_CHUNK, FetchError, Listing, is_indexed_key

_CHUNK = 1024 * 1024


def content_etag(data: bytes) -> str:
    """The ETag of a local file: a SHA-256 prefix of its bytes."""
    return hashlib.sha256(data).hexdigest()[:32]


def file_uri_path(uri: str) -> Path:
    """The path a ``file://`` URI names (its percent-encoded bytes, as ``as_uri`` wrote them)."""
    return Path(os.fsdecode(unquote_to_bytes(urlsplit(uri).path)))


def path_text(path: PurePath) -> str:
    """A path as UTF-8 text for metadata and messages (bytes that are not UTF-8 as \\xNN)."""
    return os.fsencode(path.as_posix()).decode("utf-8", "backslashreplace")


@contextmanager
def open_regular_file(path: Path, root: Path | None = None) -> Iterator[tuple[BinaryIO, int]]:
    """``path`` open for reading, and its size. Only a regular file: the open does not
    block (a FIFO's would wait for a writer) and the type is checked on the open file, so
    a swap after a check cannot slip through; with ``root``, a file whose real location is
    outside it (through a symlink) is refused. FileNotFoundError if it is gone, else
    FetchError (transient)."""
    real = Path(os.path.realpath(path))
    if root is not None and not real.is_relative_to(root):
        raise FetchError("file is a link leading outside the folder", permanent=False)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FetchError(f"cannot read file: {exc.strerror}", permanent=False) from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FetchError("not a regular file", permanent=False)
        yield file, info.st_size


def read_regular_file(path: Path, limit: int, root: Path | None = None) -> bytes:
    """The bytes of a regular file (see ``open_regular_file``), at most ``limit`` + 1 and
    at most its size + 1: a longer result means it is over ``limit`` or still growing."""
    with open_regular_file(path, root) as (file, size):
        return file.read(min(limit, size) + 1)


def hash_file(file: BinaryIO, size: int) -> str:
    """``content_etag`` of an open file, read in chunks (at most ``size`` + 1 bytes)."""
    digest = hashlib.sha256()
    left = size + 1
    while left > 0 and (chunk := file.read(min(_CHUNK, left))):
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()[:32]


class HashCache:
    """(file URI, size, mtime_ns) → content ETag, persisted in SQLite as each is computed
    (a crash keeps them); safe to share by threads (concurrent listings of one source, e.g.
    shard runs in one process)."""

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        with self._db:
            self._db.execute("PRAGMA journal_mode=WAL")  # a commit per file stays cheap
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("DROP TABLE IF EXISTS hashes")  # keyed by path text before
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS file_hashes (uri TEXT PRIMARY KEY, size INTEGER,"
                " mtime_ns INTEGER, etag TEXT)"
            )

    def get(self, uri: str, size: int, mtime_ns: int) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT etag FROM file_hashes WHERE uri = ? AND size = ? AND mtime_ns = ?",
                (uri, size, mtime_ns),
            ).fetchone()
        return row[0] if row else None

    def put(self, uri: str, size: int, mtime_ns: int, etag: str) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO file_hashes VALUES (?, ?, ?, ?) ON CONFLICT(uri) DO UPDATE SET"
                " size = excluded.size, mtime_ns = excluded.mtime_ns, etag = excluded.etag",
                (uri, size, mtime_ns, etag),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


class LocalSource:
    """Images (and videos, when ``video``) under a local directory; symlinks leading
    outside it are not followed. Files over ``max_object_bytes`` are listed unread, with an
    ETag of their size and mtime (the ingest refuses them as too large, without reading
    them)."""

    bucket = ""

    def __init__(self, root: str | Path, hash_cache_path: Path | None = None,
                 max_object_bytes: int | None = None, video: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        self.video = video
        self.scope = self.root.as_uri() + "/"
        self.max_object_bytes = max_object_bytes
        self._hashes = HashCache(hash_cache_path)

    def check(self) -> None:
        if not self.root.is_dir():
            raise SourceError(f"folder {str(self.root)!r} does not exist")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise SourceError(f"folder {str(self.root)!r} is not readable")

    def _inside_root(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self.root)
        except (ValueError, OSError):
            return False
        return True

    def list_objects(self) -> Listing:
        """Walk the folder in sorted order; hash only files whose size or mtime changed."""
        self.check()
        return Listing(self._walk)

    def _walk(self, listing: Listing) -> Iterator[SourceObject]:
        def unreadable_folder(error: OSError) -> None:
            folder = Path(error.filename)
            if folder == self.root:
                raise SourceError(f"cannot list folder {str(self.root)!r}: {error.strerror}")
            listing.unreadable.append(folder.as_uri() + "/")

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=unreadable_folder):
            dirnames.sort()
            for name in sorted(filenames):
                obj = self._object(listing, Path(dirpath, name))
                if obj is not None:
                    yield obj

    def _object(self, listing: Listing, path: Path) -> SourceObject | None:
        """The listed object for one file; None when it is not one (counted in ``listing``)."""
        if not is_indexed_key(path.name, self.video):
            listing.ignored += 1
            return None
        uri = path.as_uri()
        try:
            if path.is_symlink() and not self._inside_root(path):
                listing.ignored += 1
                return None
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):  # a FIFO would block the read forever
                listing.ignored += 1
                return None
            etag = self._etag(path, uri, info)
        except FileNotFoundError:
            return None  # deleted while listing: its record may go
        except (OSError, FetchError):
            listing.unreadable.append(uri)  # it may exist: its record must stay
            return None
        return SourceObject(
            uri=uri,
            bucket="",
            key=path_text(path.relative_to(self.root)),
            etag=etag,
            size=info.st_size,
            last_modified=datetime.fromtimestamp(info.st_mtime, UTC),
        )

    def _etag(self, path: Path, uri: str, info: os.stat_result) -> str:
        """The cached or computed content hash; unread for a file over the size limit."""
        if self.max_object_bytes is not None and info.st_size > self.max_object_bytes:
            return f"unread-{info.st_size}-{info.st_mtime_ns}"
        etag = self._hashes.get(uri, info.st_size, info.st_mtime_ns)
        if etag is None:
            with open_regular_file(path, self.root) as (file, size):
                etag = hash_file(file, size)
            self._hashes.put(uri, info.st_size, info.st_mtime_ns, etag)
        return etag

    def fetch(self, obj: SourceObject) -> bytes:
        """Read the file (at most its listed size + 1 bytes); fail (transiently) if it is no
        longer a regular file inside the folder or its content no longer matches."""
        try:
            data = read_regular_file(file_uri_path(obj.uri), obj.size, self.root)
        except FileNotFoundError:
            raise FetchError("file deleted since listing", permanent=False) from None
        if len(data) != obj.size or content_etag(data) != obj.etag:
            raise FetchError("file changed since listing", permanent=False)
        return data

    def fetch_to(self, obj: SourceObject, out: BinaryIO, limit: int) -> int:
        """Copy the file into ``out`` in chunks (at most its listed size + 1 bytes), hashing
        as it goes; FetchError (transient) if it is no longer the listed file."""
        if obj.size > limit:
            raise FetchError(f"larger than {limit} bytes", permanent=True)
        digest = hashlib.sha256()
        written = 0
        try:
            with open_regular_file(file_uri_path(obj.uri), self.root) as (file, _):
                while written <= obj.size and (chunk := file.read(COPY_CHUNK)):
                    written += len(chunk)
                    digest.update(chunk)
                    out.write(chunk)
        except FileNotFoundError:
            raise FetchError("file deleted since listing", permanent=False) from None
        if written != obj.size or digest.hexdigest()[:32] != obj.etag:
            raise FetchError("file changed since listing", permanent=False)
        return written

    def close(self) -> None:
        """Close the hash cache."""
        self._hashes.close()
