"""The pgvector store: one PostgreSQL table per collection (psycopg 3 + ``pgvector``).

A table holds the record id (its URI) as primary key, the vector, the metadata imgrag
filters and plans on as typed columns (``bucket``, ``key``, ``etag``, ``size``, ``width``,
``height``, ``last_modified``, ``normalize_version``) and the rest as ``jsonb``. An HNSW
index (cosine ops) answers queries. ``imgrag_catalog`` records each table's model,
dimension and schema version: a table is refused for another vector space, and migrated
by imgrag when its schema is older. Text columns compare in the "C" collation (code-point
order, as Python compares strings), so the manifest streams sorted by id.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.types.json import Jsonb

from imgrag.errors import ConfigError, ImgragError, StoreError, StoreLockedError
from imgrag.records import Hit, Indexed
from imgrag.settings import Settings
from imgrag.video_records import MEDIA_VIDEO, manifest_entries

SCHEMA_VERSION = 2
CATALOG = "imgrag_catalog"
PAGE = 5000  # rows per keyset page of a manifest or metadata scan
MAX_EF_SEARCH = 1000  # pgvector's bound on hnsw.ef_search
WRITE_BACKOFF_S = 0.5  # before the second attempt of a write; doubles, with jitter
TYPED = ("source_uri", "bucket", "key", "etag", "size", "width", "height", "last_modified",
         "normalize_version")
# Chroma's filter helpers (imgrag.filters): ``key`` and ``last_modified`` answer them here.
DERIVED = ("dirs", "last_modified_ts")
_COLUMNS = {name: name for name in TYPED if name != "last_modified"}
_OPERATORS = {"$eq": "=", "$ne": "<>", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def vector_type(dim: int) -> tuple[str, str]:
    """(column type, HNSW operator class): ``halfvec`` above HNSW's 2,000 ``vector``
    dimensions (pgvector ≥ 0.7), e.g. for 3,072-long embeddings."""
    if dim > 2000:
        return f"halfvec({dim})", "halfvec_cosine_ops"
    return f"vector({dim})", "vector_cosine_ops"


def migrations(dim: int) -> list[list[str]]:
    """Step ``i`` brings a table from schema ``i`` to ``i + 1`` ({t}: the table name)."""
    column, ops = vector_type(dim)
    return [
        [  # 1: the table and its HNSW index
            f"""CREATE TABLE {{t}} (
                id text COLLATE "C" PRIMARY KEY,
                embedding {column} NOT NULL,
                source_uri text COLLATE "C" NOT NULL,
                bucket text NOT NULL DEFAULT '',
                key text COLLATE "C" NOT NULL DEFAULT '',
                etag text NOT NULL DEFAULT '',
                size bigint,
                width integer,
                height integer,
                last_modified timestamptz,
                normalize_version integer NOT NULL DEFAULT 0,
                document text NOT NULL DEFAULT '',
                meta jsonb NOT NULL)""",
            f"CREATE INDEX {{t_hnsw}} ON {{t}} USING hnsw (embedding {ops})",
            "CREATE INDEX {t_source} ON {t} (source_uri, id)",  # the manifest's order
        ],
        [  # 2: range indexes for the prefix and date filters
            "CREATE INDEX {t_key} ON {t} (key)",
            "CREATE INDEX {t_modified} ON {t} (last_modified)",
        ],
    ]


def _names(table: str) -> dict[str, sql.Identifier]:
    return {"t": sql.Identifier(table), "t_hnsw": sql.Identifier(f"{table}_embedding_hnsw"),
            "t_key": sql.Identifier(f"{table}_key"),
            "t_source": sql.Identifier(f"{table}_source"),
            "t_modified": sql.Identifier(f"{table}_last_modified")}


def migrate(conn: psycopg.Connection, table: str, dim: int, current: int, target: int) -> None:
    """Apply the schema steps from ``current`` to ``target`` (in the caller's transaction)."""
    for step in migrations(dim)[current:target]:
        for statement in step:
            conn.execute(sql.SQL(statement).format(**_names(table)))


def lock_key(*parts: object) -> int:
    """A signed 64-bit advisory-lock key for ``parts``, stable across processes."""
    digest = hashlib.blake2b(":".join(map(str, ("imgrag", *parts))).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def successor(prefix: str) -> str:
    """The least string above every string that starts with ``prefix`` (code points)."""
    while prefix and prefix[-1] == "\U0010ffff":
        prefix = prefix[:-1]
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def connect(settings: Settings) -> psycopg.Connection:
    """An autocommit connection in UTC; StoreError (one line) when the server refuses."""
    try:
        conn = psycopg.connect(settings.postgres_conninfo, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise StoreError(
            f"cannot open PostgreSQL store at {settings.postgres_address}: {_one_line(exc)}"
        ) from None
    conn.execute("SET TIME ZONE 'UTC'")
    return conn


# ---------------------------------------------------------------------------- filters


def where_sql(where: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """A Chroma ``where`` filter as an SQL condition (``%s`` placeholders) and its values.

    Typed fields compare their columns; a folder prefix (``dirs`` contains ``a/``) and
    ``last_modified_ts`` become ranges on the indexed ``key`` and ``last_modified``;
    other fields are read from ``meta``.
    """
    if not where:
        return "TRUE", []
    parts: list[tuple[str, list[Any]]] = []
    for field, condition in where.items():
        if field in ("$and", "$or"):
            subs = [where_sql(sub) for sub in condition]
            joiner = " AND " if field == "$and" else " OR "
            parts.append(("(" + joiner.join(s for s, _ in subs) + ")",
                          [v for _, values in subs for v in values]))
        elif isinstance(condition, Mapping):
            parts += [_compare(field, op, value) for op, value in condition.items()]
        else:
            parts.append(_compare(field, "$eq", condition))
    return " AND ".join(s for s, _ in parts), [v for _, values in parts for v in values]


def _compare(field: str, op: str, value: Any) -> tuple[str, list[Any]]:
    if field == "dirs" and op == "$contains":
        return "(key >= %s AND key < %s)", [value, successor(value)]
    if field == "last_modified_ts" and op in _OPERATORS:
        return f"last_modified {_OPERATORS[op]} to_timestamp(%s)", [value]
    if field in _COLUMNS:
        column = _COLUMNS[field]
        if op in _OPERATORS:
            return f"{column} {_OPERATORS[op]} %s", [value]
        if op in ("$in", "$nin"):
            test = f"{column} = ANY(%s)"
            return (test if op == "$in" else f"NOT ({test})"), [list(value)]
    elif op in ("$eq", "$ne"):
        test = "meta @> %s"
        return (test if op == "$eq" else f"NOT ({test})"), [Jsonb({field: value})]
    elif op in _OPERATORS:
        kind = "string" if isinstance(value, str) else "number"
        return (f"(jsonb_typeof(meta->%s) = '{kind}' AND meta->%s {_OPERATORS[op]} %s)",
                [field, field, Jsonb(value)])
    elif op in ("$in", "$nin"):
        test = "meta->%s = ANY(%s)"
        return (test if op == "$in" else f"NOT ({test})"), [field, [Jsonb(v) for v in value]]
    elif op == "$contains":
        return "meta->%s @> %s", [field, Jsonb([value])]
    raise ConfigError(f"invalid where filter: {op} on {field!r} is not supported here")


# ---------------------------------------------------------------------------- records


def _split(metadata: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(typed columns given, the rest for ``meta``) of record metadata."""
    typed = {k: metadata[k] for k in TYPED if k in metadata}
    if isinstance(typed.get("last_modified"), str):
        typed["last_modified"] = datetime.fromisoformat(typed["last_modified"]) \
            if typed["last_modified"] else None
    rest = {k: v for k, v in metadata.items() if k not in TYPED and k not in DERIVED}
    return typed, rest


_DEFAULTS = {"bucket": "", "key": "", "etag": "", "normalize_version": 0}


def _row(record_id: str, embedding: Sequence[float], metadata: Mapping[str, Any]) -> list:
    """The column values of one record: typed fields out of the metadata, the rest jsonb."""
    typed, rest = _split(metadata)
    typed.setdefault("source_uri", record_id)  # an image's record: its own source
    return [record_id, np.asarray(embedding, dtype=np.float32),
            *(typed.get(k, _DEFAULTS.get(k)) for k in TYPED), Jsonb(rest)]


def _metadata(row: Sequence[Any]) -> dict[str, Any]:
    """Record metadata from ``_SELECTED`` columns (after the id), as ingest wrote it."""
    *typed, meta = row
    values = dict(zip(TYPED, typed, strict=True))
    modified = values["last_modified"]
    values["last_modified"] = modified.isoformat() if modified else ""
    return {**meta, **{k: v for k, v in values.items() if v is not None}}


_SELECTED = "id, " + ", ".join(TYPED) + ", meta"


class PgVectorStore:
    """One PostgreSQL table of image vectors (pgvector, cosine) with imgrag's metadata.

    One connection, used by one thread at a time; every write is one transaction, retried
    alone on a new connection when it fails (up to ``write_attempts``)."""

    def __init__(self, conn: psycopg.Connection, table: str, address: str,
                 reconnect: Callable[[], psycopg.Connection] | None = None,
                 write_attempts: int = 1) -> None:
        self.conn = conn
        self.table = table
        self.address = address
        self.write_attempts = write_attempts
        self._reconnect = reconnect
        self._broken: str | None = None  # why the writes gave up, until one succeeds
        self._t = sql.Identifier(table)
        self._lock = threading.RLock()
        self.model_id: str | None = None
        self.dim: int | None = None
        self.schema_version = 0

    @classmethod
    def open(cls, settings: Settings, *, create: bool = True,
             check: bool = True) -> PgVectorStore:
        """Open (or create) the settings' table; StoreError on a vector-space mismatch.

        With ``create``, creates the ``vector`` extension, the catalog and the table, and
        migrates an older schema; without it, writes nothing (a read-only role will do).
        Without ``check``, the table's vector space is read, not compared."""
        conn = connect(settings)

        def reconnect() -> psycopg.Connection:
            fresh = connect(settings)
            register_vector(fresh)
            return fresh

        store = cls(conn, settings.collection, settings.postgres_address, reconnect,
                    settings.store_write_attempts)
        try:
            with store._errors("open"):
                store._prepare(settings.model_id, settings.dim, create, check)
                register_vector(conn)
        except BaseException:
            conn.close()
            raise
        return store

    def _prepare(self, model_id: str, dim: int, create: bool, check: bool) -> None:
        conn, name = self.conn, self.table
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(CATALOG)])
            if create:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                conn.execute(f"""CREATE TABLE IF NOT EXISTS {CATALOG} (
                    name text PRIMARY KEY, model_id text NOT NULL, dim integer NOT NULL,
                    schema_version integer NOT NULL, last_ingest jsonb,
                    created_at timestamptz NOT NULL DEFAULT now())""")
            elif conn.execute("SELECT to_regclass(%s)", [CATALOG]).fetchone()[0] is None:
                raise StoreError(f"no imgrag tables at {self.address} (run an ingest first)")
            row = conn.execute(f"SELECT model_id, dim, schema_version FROM {CATALOG}"
                               " WHERE name = %s", [name]).fetchone()
            if row is None:
                if not create:
                    raise StoreError(f"table {name!r} does not exist (run an ingest first)")
                migrate(conn, name, dim, 0, SCHEMA_VERSION)
                conn.execute(f"INSERT INTO {CATALOG} (name, model_id, dim, schema_version)"
                             " VALUES (%s, %s, %s, %s)", [name, model_id, dim, SCHEMA_VERSION])
                row = (model_id, dim, SCHEMA_VERSION)
            self.model_id, self.dim, self.schema_version = row
            if check:  # else: the vector space is read (a query takes the table's)
                self.check_vector_space(model_id, dim)
            if create and self.schema_version < SCHEMA_VERSION:  # readers need no write
                migrate(conn, name, dim, self.schema_version, SCHEMA_VERSION)
                conn.execute(f"UPDATE {CATALOG} SET schema_version = %s WHERE name = %s",
                             [SCHEMA_VERSION, name])
                self.schema_version = SCHEMA_VERSION

    def check_vector_space(self, model_id: str, dim: int) -> None:
        """Refuse to mix vector spaces in one table, or to write a newer schema."""
        if (self.model_id, self.dim) != (model_id, dim):
            raise StoreError(
                f"table {self.table!r} holds {self.model_id} vectors of dim {self.dim},"
                f" not {model_id} dim {dim}; use another table")
        if self.schema_version > SCHEMA_VERSION:
            raise StoreError(
                f"table {self.table!r} was written by a newer imgrag (schema"
                f" {self.schema_version}, this one knows {SCHEMA_VERSION}); upgrade imgrag")

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Serialize use of the connection (a new one when the last was lost); a database
        error becomes a one-line StoreError naming ``action``."""
        try:
            with self._lock:
                if self.conn.closed and self._reconnect is not None:
                    self.conn = self._reconnect()
                yield
        except ImgragError:
            raise
        except psycopg.Error as exc:
            raise StoreError(f"cannot {action} table {self.table!r} at {self.address}:"
                             f" {_one_line(exc)}") from None

    def _write(self, action: str, write: Callable[[psycopg.Connection], None]) -> None:
        """Run ``write`` in one transaction; when it fails, again alone on a new connection
        with backoff (writes are idempotent by id), then a one-line StoreError."""
        delay = WRITE_BACKOFF_S
        with self._lock:
            for attempt in range(1, self.write_attempts + 1):
                try:
                    if self.conn.closed and self._reconnect is not None:
                        self.conn = self._reconnect()
                    with self.conn.transaction():
                        write(self.conn)
                except psycopg.Error as exc:
                    if attempt == self.write_attempts:
                        self._broken = (f"cannot {action} table {self.table!r} at"
                                        f" {self.address}: {_one_line(exc)} (after {attempt}"
                                        " attempts)")
                        raise StoreError(self._broken) from None
                    if self._reconnect is not None:
                        self.conn.close()  # the next attempt starts on a new connection
                    time.sleep(delay * random.uniform(0.5, 1.0))
                    delay *= 2
                else:
                    self._broken = None
                    return

    def wait_writable(self) -> None:
        """Return when writes go through (a write being retried holds the connection, so
        this waits for it); StoreError when the last write gave up."""
        with self._lock:
            if self._broken is not None:
                raise StoreError(self._broken)

    def _sql(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(t=self._t)

    def count(self) -> int:
        with self._errors("count"):
            return self.conn.execute(self._sql("SELECT count(*) FROM {t}")).fetchone()[0]

    def record_last_ingest(self, summary: Mapping[str, Any]) -> None:
        """Keep a finished ingest run's summary (JSON-able) in the catalog."""
        with self._errors("record the ingest summary of"):
            self.conn.execute(f"UPDATE {CATALOG} SET last_ingest = %s WHERE name = %s",
                              [Jsonb(dict(summary)), self.table])

    def last_ingest(self) -> dict[str, Any] | None:
        """The summary :meth:`record_last_ingest` kept, or None."""
        with self._errors("read the catalog row of"):
            row = self.conn.execute(f"SELECT last_ingest FROM {CATALOG} WHERE name = %s",
                                    [self.table]).fetchone()
        return row[0] if row else None

    def iter_manifest(self, bucket: str, scope: str) -> Iterator[tuple[str, Indexed]]:
        """(source URI, Indexed) of the bucket's images and videos under ``scope`` (a
        video's frames as one entry, see ``imgrag.video_records``), sorted by URI, read in
        keyset pages of (source_uri, id): each page its own short statement, so the writes
        of the run going on meanwhile are not held up."""
        query = self._sql(
            "SELECT source_uri, id, etag, normalize_version, last_modified, size,"
            " coalesce((meta->>'ocr_version')::int, 0), meta->>'media', meta->'video_frames'"
            " FROM {t} WHERE bucket = %s"
            " AND source_uri >= %s AND source_uri < %s AND (source_uri, id) > (%s, %s)"
            " ORDER BY source_uri, id LIMIT %s")
        after = ("", "")
        frames: list[tuple[str, dict[str, Any]]] = []  # of the video being read
        while True:
            with self._errors("read the manifest of"), self.conn.cursor(binary=True) as cur:
                rows = cur.execute(query, [bucket, scope, successor(scope), *after, PAGE]
                                   ).fetchall()
            for uri, record_id, etag, version, modified, size, ocr, media, count in rows:
                if frames and frames[0][1]["source_uri"] != uri:
                    yield from manifest_entries(frames).items()
                    frames = []
                text = modified.isoformat() if modified else ""
                if media == MEDIA_VIDEO:
                    frames.append((record_id, {
                        "source_uri": uri, "media": media, "video_frames": count, "etag": etag,
                        "normalize_version": version, "last_modified": text,
                        "size": -1 if size is None else size, "ocr_version": ocr}))
                else:
                    yield uri, Indexed(etag, version, text, -1 if size is None else size, ocr)
            if len(rows) < PAGE:
                yield from manifest_entries(frames).items()
                return
            after = (rows[-1][0], rows[-1][1])

    def manifest(self, bucket: str, scope: str) -> dict[str, Indexed]:
        return dict(self.iter_manifest(bucket, scope))

    def iter_metadata(self, where: Mapping[str, Any] | None = None) -> Iterator[tuple[str, dict]]:
        condition, values = where_sql(where)
        query = self._sql(f"SELECT {_SELECTED} FROM {{t}} WHERE ({condition}) AND id > %s"
                          " ORDER BY id LIMIT %s")
        after = ""
        while True:
            with self._errors("read records of"):
                rows = self.conn.execute(query, [*values, after, PAGE]).fetchall()
            for record_id, *rest in rows:
                yield record_id, _metadata(rest)
            if len(rows) < PAGE:
                return
            after = rows[-1][0]

    def upsert(
        self,
        ids: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        metadatas: Sequence[Mapping[str, Any]],
        documents: Sequence[str] | None = None,
    ) -> None:
        """Add or replace records by id: one ``INSERT … ON CONFLICT DO UPDATE`` per record,
        all in one transaction. ``documents`` (the OCR text, "" for none) replaces a
        record's text; without them it is kept."""
        query = self._upsert_statement(with_documents=documents is not None)
        rows = [_row(i, e, m) for i, e, m in zip(ids, embeddings, metadatas, strict=True)]
        if documents is not None:
            rows = [[*row, text] for row, text in zip(rows, documents, strict=True)]

        def insert(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                cur.executemany(query, rows)

        self._write(f"write {len(rows)} records to", insert)

    def _upsert_statement(self, with_documents: bool = False) -> sql.Composed:
        columns = ("id", "embedding", *TYPED, "meta", *(["document"] if with_documents else []))
        return self._sql(
            f"INSERT INTO {{t}} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
            " ON CONFLICT (id) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in columns[1:]))

    def set_texts(
        self, ids: Sequence[str], documents: Sequence[str], metadatas: Sequence[Mapping[str, Any]]
    ) -> None:
        """Replace the text of existing records and merge ``metadatas`` into theirs (vectors
        unchanged), in one transaction."""
        self._update(ids, metadatas, documents)

    def text_matches(
        self, pattern: str, limit: int, where: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str, dict, list[float]]]:
        """(id, text, metadata, vector) of up to ``limit`` records whose text matches the
        regular expression ``pattern`` (``imgrag.hybrid.terms_pattern``'s syntax: a leading
        ``(?i)`` becomes ``~*``, ``\\b`` PostgreSQL's ``\\y``), within ``where``."""
        operator = "~*" if pattern.startswith("(?i)") else "~"
        regex = pattern.removeprefix("(?i)").replace(r"\b", r"\y")
        condition, values = where_sql(where)
        with self._errors("search the texts of"):
            rows = self.conn.execute(self._sql(
                f"SELECT {_SELECTED}, document, embedding FROM {{t}} WHERE document"
                f" {operator} %s AND {condition} LIMIT %s"), [regex, *values, limit]).fetchall()
        return [(record_id, text, _metadata(rest), [float(x) for x in vector.to_list()])
                for record_id, *rest, text, vector in rows]

    def has_texts(self) -> bool:
        """Whether any record carries OCR text (``ocr_version`` ≥ 1)."""
        condition, values = where_sql({"ocr_version": {"$gte": 1}})
        with self._errors("read"):
            return self.conn.execute(self._sql(f"SELECT EXISTS (SELECT 1 FROM {{t}} WHERE"
                                               f" {condition})"), values).fetchone()[0]

    def update_metadata(self, ids: Sequence[str], metadatas: Sequence[Mapping[str, Any]]) -> None:
        """Merge fields into existing records (ids no longer stored are skipped)."""
        self._update(ids, metadatas)

    def _update(self, ids: Sequence[str], metadatas: Sequence[Mapping[str, Any]],
                documents: Sequence[str] | None = None) -> None:
        """One transaction of one ``UPDATE`` per record (metadata merged, the text replaced
        when ``documents``), prepared once per set of fields given."""
        groups: dict[tuple[str, ...], list[list[Any]]] = {}
        for n, (record_id, metadata) in enumerate(zip(ids, metadatas, strict=True)):
            typed, rest = _split(metadata)
            if documents is not None:
                typed["document"] = documents[n]
            groups.setdefault(tuple(typed), []).append([*typed.values(), Jsonb(rest), record_id])

        def update(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                for columns, rows in groups.items():
                    sets = "".join(f"{c} = %s, " for c in columns)
                    cur.executemany(self._sql(f"UPDATE {{t}} SET {sets}meta = meta || %s"
                                              " WHERE id = %s"), rows)

        self._write(f"update {len(ids)} records of", update)

    def delete(self, ids: Sequence[str]) -> None:
        def remove(conn: psycopg.Connection) -> None:
            conn.execute(self._sql("DELETE FROM {t} WHERE id = ANY(%s)"), [list(ids)])

        self._write(f"delete {len(ids)} records from", remove)

    def source_ids(self, uris: Sequence[str]) -> dict[str, list[str]]:
        """Source URI → ids of its records (an image's one, a video's frames)."""
        with self._errors("read records of"):
            rows = self.conn.execute(self._sql("SELECT source_uri, id FROM {t} WHERE"
                                               " source_uri = ANY(%s) ORDER BY source_uri, id"),
                                     [list(uris)]).fetchall()
        found: dict[str, list[str]] = {}
        for uri, record_id in rows:
            found.setdefault(uri, []).append(record_id)
        return found

    def delete_sources(self, uris: Sequence[str]) -> None:
        """Remove every record of these source objects (all frames of a video)."""
        def remove(conn: psycopg.Connection) -> None:
            conn.execute(self._sql("DELETE FROM {t} WHERE source_uri = ANY(%s)"), [list(uris)])

        self._write(f"delete the records of {len(uris)} sources from", remove)

    def replace_source(
        self,
        uri: str,
        ids: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        metadatas: Sequence[Mapping[str, Any]],
    ) -> int:
        """Upsert a source's records and delete its records not among ``ids`` (a changed
        video's old frames), in one transaction; the number deleted."""
        insert = self._upsert_statement()
        rows = [_row(i, e, m) for i, e, m in zip(ids, embeddings, metadatas, strict=True)]
        deleted = 0

        def replace(conn: psycopg.Connection) -> None:
            nonlocal deleted
            with conn.cursor() as cur:
                cur.executemany(insert, rows)
                cur.execute(self._sql("DELETE FROM {t} WHERE source_uri = %s"
                                      " AND NOT (id = ANY(%s))"), [uri, list(ids)])
                deleted = cur.rowcount

        self._write(f"replace the records of {uri} in", replace)
        return deleted

    def get(self, ids: Sequence[str]) -> dict[str, dict]:
        if not ids:
            return {}
        with self._errors("read records of"):
            rows = self.conn.execute(self._sql(f"SELECT {_SELECTED} FROM {{t}}"
                                               " WHERE id = ANY(%s)"), [list(ids)]).fetchall()
        return {record_id: _metadata(rest) for record_id, *rest in rows}

    def get_embedding(self, record_id: str) -> list[float] | None:
        with self._errors("read a record of"):
            row = self.conn.execute(self._sql("SELECT embedding FROM {t} WHERE id = %s"),
                                    [record_id]).fetchone()
        return None if row is None else [float(x) for x in row[0].to_list()]

    def query(
        self, embedding: Sequence[float], k: int = 8, where: Mapping[str, Any] | None = None
    ) -> list[Hit]:
        """The ``k`` nearest records by cosine distance (``<=>``), exact within ``where``.

        The HNSW index answers first; HNSW filters after its search, so when it finds
        fewer than ``k`` matches the query runs again without it (exact, over the rows
        the filter's indexes select)."""
        condition, values = where_sql(where)
        vector = np.asarray(embedding, dtype=np.float32)
        query = self._sql(f"SELECT {_SELECTED}, embedding <=> %s FROM {{t}} WHERE {condition}"
                          " ORDER BY embedding <=> %s LIMIT %s")
        params = [vector, *values, vector, k]
        with self._errors("query"), self.conn.transaction():
            rows = []
            if k <= MAX_EF_SEARCH:
                self.conn.execute("SELECT set_config('hnsw.ef_search', %s, true)",
                                  [str(max(40, k))])
                rows = self.conn.execute(query, params).fetchall()
            if len(rows) < k:
                self.conn.execute("SET LOCAL enable_indexscan = off")  # no HNSW scan
                self.conn.execute("SET LOCAL enable_seqscan = on")
                rows = self.conn.execute(query, params).fetchall()
        return [Hit(rank=rank, id=record_id, distance=float(distance),
                    metadata=_metadata(rest))
                for rank, (record_id, *rest, distance) in enumerate(rows, start=1)]

    def close(self) -> None:
        self.conn.close()


class AdvisoryWriterLock:
    """The writer lock of a table: a session advisory lock held on its own connection.

    An unsharded run takes the table's key exclusively; a shard takes it shared, plus its
    own shard's key exclusively: shards run side by side on any machines, and a second
    unsharded run, or a second run of one shard, is refused at once. The server drops the
    locks when the connection ends (a crashed run never blocks the next)."""

    def __init__(self, settings: Settings, shard: tuple[int, int] | None = None) -> None:
        self.settings = settings
        self.shard = shard
        self._conn: psycopg.Connection | None = None

    def acquire(self) -> None:
        settings, shard = self.settings, self.shard
        conn = connect(settings)
        table = lock_key("writer", settings.collection)  # advisory locks are per database
        if shard is None:
            held = conn.execute("SELECT pg_try_advisory_lock(%s)", [table]).fetchone()[0]
        else:
            held = conn.execute(
                "SELECT pg_try_advisory_lock_shared(%s) AND pg_try_advisory_lock(%s)",
                [table, lock_key("writer", settings.collection, *shard)],
            ).fetchone()[0]
        if not held:
            conn.close()
            what = f"shard {shard[0]}/{shard[1]} of " if shard else ""
            raise StoreLockedError(
                f"another ingest is writing {what}table {settings.collection!r} at"
                f" {settings.postgres_address}; wait for it to finish"
                + ("" if shard else ", or run shards (--shard I/N)"))
        self._conn = conn

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> AdvisoryWriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
