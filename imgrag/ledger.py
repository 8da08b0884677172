"""The failure ledger: permanent per-object failures, so re-runs do not pay for them again.

A small SQLite file beside the store. An entry matches only its exact (uri, ETag): a new
ETag retries the object; ``--retry-failed`` ignores the ledger for a run.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from imgrag.records import Failure


class FailureLedger:
    """(collection, uri) → (etag, stage, reason) of objects that failed permanently."""

    def __init__(self, path: Path, collection: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.collection = collection
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS failures (collection TEXT, uri TEXT, etag TEXT,"
            " stage TEXT, reason TEXT, failed_at TEXT, run_id TEXT,"
            " PRIMARY KEY (collection, uri))"
        )
        self._db.commit()

    def known(self, scope: str) -> dict[str, str]:
        """uri → etag of recorded failures under a URI prefix."""
        with self._lock:
            rows = self._db.execute(
                "SELECT uri, etag FROM failures WHERE collection = ? AND substr(uri, 1, ?) = ?",
                (self.collection, len(scope), scope),
            ).fetchall()
        return dict(rows)

    def record(self, failures: Iterable[Failure], run_id: str) -> None:
        """Store permanent failures (transient ones are ignored: the next run retries them)."""
        now = datetime.now(UTC).isoformat()
        rows = [
            (self.collection, f.id, f.etag, f.stage, f.reason, now, run_id)
            for f in failures
            if f.permanent
        ]
        with self._lock:
            self._db.executemany(
                "INSERT INTO failures VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(collection, uri)"
                " DO UPDATE SET etag = excluded.etag, stage = excluded.stage,"
                " reason = excluded.reason, failed_at = excluded.failed_at,"
                " run_id = excluded.run_id",
                rows,
            )
            self._db.commit()

    def forget(self, uris: Iterable[str]) -> None:
        """Drop entries (the object was indexed after all, or deleted from the source)."""
        with self._lock:
            self._db.executemany(
                "DELETE FROM failures WHERE collection = ? AND uri = ?",
                [(self.collection, uri) for uri in uris],
            )
            self._db.commit()

    def entries(self, scope: str = "") -> list[Failure]:
        """The recorded failures under a URI prefix, as Failure records."""
        with self._lock:
            rows = self._db.execute(
                "SELECT uri, etag, stage, reason FROM failures"
                " WHERE collection = ? AND substr(uri, 1, ?) = ? ORDER BY uri",
                (self.collection, len(scope), scope),
            ).fetchall()
        return [
            Failure(id=u, etag=e, stage=s, reason=r, permanent=True) for u, e, s, r in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
