"""A small on-disk cache of text-query embeddings: a repeated query costs no Bedrock call.

Keyed by (model_id, dim, text) — the exact text, so it never answers for another model,
length or wording. Vectors are stored as float64 bytes (exact round trip). At most
``max_entries`` rows are kept, least recently used dropped first. The cache is best
effort: if its file cannot be read, queries go to the model as usual; if it can be read but
not written (a store mounted read-only), it still answers and stores nothing.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from array import array
from pathlib import Path

from imgrag.embedders import Embedder

TEXT_CACHE_NAME = "imgrag-text-cache.sqlite3"
DEFAULT_MAX_ENTRIES = 10_000

log = logging.getLogger(__name__)


class TextEmbeddingCache:
    """(model_id, dim, text) → vector, persisted in SQLite."""

    def __init__(self, path: Path, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.path = Path(path)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._writable = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(self.path), timeout=5, check_same_thread=False)
            db.execute(
                "CREATE TABLE IF NOT EXISTS text_vectors (model_id TEXT NOT NULL,"
                " dim INTEGER NOT NULL, text TEXT NOT NULL, vector BLOB NOT NULL,"
                " used_at REAL NOT NULL, PRIMARY KEY (model_id, dim, text))"
            )
            db.commit()
            self._db = db
        except (sqlite3.Error, OSError) as exc:
            log.warning("text embedding cache disabled (%s): %s", self.path, exc)

    def get(self, model_id: str, dim: int, text: str) -> list[float] | None:
        """The cached vector, or None."""
        if self._db is None:
            return None
        key = (model_id, dim, text)
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT vector FROM text_vectors WHERE model_id = ? AND dim = ? AND text = ?",
                    key,
                ).fetchone()
        except sqlite3.Error as exc:
            log.warning("text embedding cache read failed: %s", exc)
            return None
        if row is None:
            return None
        self._write(("UPDATE text_vectors SET used_at = ? WHERE model_id = ? AND dim = ?"
                     " AND text = ?", (time.time(), *key)))
        vector = array("d")
        vector.frombytes(row[0])
        return vector.tolist() if len(vector) == dim else None

    def put(self, model_id: str, dim: int, text: str, vector: list[float]) -> None:
        """Store a vector, then drop the least recently used rows beyond ``max_entries``."""
        self._write(
            ("INSERT INTO text_vectors VALUES (?, ?, ?, ?, ?) ON CONFLICT (model_id, dim, text)"
             " DO UPDATE SET vector = excluded.vector, used_at = excluded.used_at",
             (model_id, dim, text, array("d", vector).tobytes(), time.time())),
            ("DELETE FROM text_vectors WHERE rowid NOT IN (SELECT rowid FROM text_vectors"
             " ORDER BY used_at DESC LIMIT ?)", (self.max_entries,)),
        )

    def _write(self, *statements: tuple[str, tuple]) -> None:
        """Run ``statements`` in one transaction; after one fails (e.g. a read-only file),
        the cache is only read from."""
        if self._db is None or not self._writable:
            return
        with self._lock:
            try:
                for sql, params in statements:
                    self._db.execute(sql, params)
                self._db.commit()
            except sqlite3.Error as exc:
                self._db.rollback()
                self._writable = False
                log.warning("text embedding cache not written, only read (%s): %s",
                            self.path, exc)

    def embed(self, embedder: Embedder, text: str) -> list[float]:
        """``embedder.embed_text(text)``, answered from the cache when possible."""
        cached = self.get(embedder.model_id, embedder.dim, text)
        if cached is not None:
            return cached
        vector = embedder.embed_text(text)
        self.put(embedder.model_id, embedder.dim, text, vector)
        return vector

    def count(self) -> int:
        """Vectors held."""
        if self._db is None:
            return 0
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM text_vectors").fetchone()[0])

    def close(self) -> None:
        if self._db is not None:
            with self._lock:
                self._db.close()
                self._db = None
