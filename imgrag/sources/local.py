"""Local folder source: files under a directory, with a content hash as their ETag.

Hashes are cached by (path, size, mtime) in a small SQLite file so a re-run over an
unchanged folder reads no file contents.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from imgrag.errors import SourceError
from imgrag.records import SourceObject
from imgrag.sources.base import FetchError, Listing, is_image_key


def content_etag(data: bytes) -> str:
    """The ETag of a local file: a SHA-256 prefix of its bytes."""
    return hashlib.sha256(data).hexdigest()[:32]


class HashCache:
    """(path, size, mtime_ns) → content ETag, persisted in SQLite; safe to share by threads
    (concurrent listings of one source, e.g. shard runs in one process)."""

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER,"
            " mtime_ns INTEGER, etag TEXT)"
        )

    def get(self, path: str, size: int, mtime_ns: int) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT etag FROM hashes WHERE path = ? AND size = ? AND mtime_ns = ?",
                (path, size, mtime_ns),
            ).fetchone()
        return row[0] if row else None

    def put(self, path: str, size: int, mtime_ns: int, etag: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO hashes VALUES (?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET"
                " size = excluded.size, mtime_ns = excluded.mtime_ns, etag = excluded.etag",
                (path, size, mtime_ns, etag),
            )

    def commit(self) -> None:
        with self._lock:
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class LocalSource:
    """Images under a local directory; symlinks leading outside it are not followed."""

    bucket = ""

    def __init__(self, root: str | Path, hash_cache_path: Path | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.scope = self.root.as_uri() + "/"
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
        self._hashes.commit()

    def _object(self, listing: Listing, path: Path) -> SourceObject | None:
        """The listed object for one file; None when it is not one (counted in ``listing``)."""
        if not is_image_key(path.name):
            listing.ignored += 1
            return None
        try:
            if path.is_symlink() and not self._inside_root(path):
                listing.ignored += 1
                return None
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):  # a FIFO would block the read forever
                listing.ignored += 1
                return None
            etag = self._hashes.get(str(path), info.st_size, info.st_mtime_ns)
            if etag is None:
                etag = content_etag(path.read_bytes())
                self._hashes.put(str(path), info.st_size, info.st_mtime_ns, etag)
        except FileNotFoundError:
            return None  # deleted while listing: its record may go
        except OSError:
            listing.unreadable.append(path.as_uri())  # it may exist: its record must stay
            return None
        return SourceObject(
            uri=path.as_uri(),
            bucket="",
            key=path.relative_to(self.root).as_posix(),
            etag=etag,
            size=info.st_size,
            last_modified=datetime.fromtimestamp(info.st_mtime, UTC),
        )

    def fetch(self, obj: SourceObject) -> bytes:
        """Read the file; fail (transiently) if its content no longer matches the listing."""
        path = self.root / obj.key
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FetchError("file deleted since listing", permanent=False) from None
        except OSError as exc:
            raise FetchError(f"cannot read file: {exc.strerror}", permanent=False) from None
        if content_etag(data) != obj.etag:
            raise FetchError("file changed since listing", permanent=False)
        return data

    def close(self) -> None:
        """Close the hash cache."""
        self._hashes.close()
