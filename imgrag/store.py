"""The vector store: the only module that talks to ChromaDB.

The collection is the single source of truth for what is indexed. It records the model and
dimension it was created with; opening it for another vector space is an error.

Chroma writes to an embedded store's SQLite file whenever it opens it (its write-lock
table), so a store the process cannot write (mounted read-only) is opened for reading as a
snapshot: a private copy of that file, next to links to the store's index folders.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import chromadb
from chromadb.api.client import SharedSystemClient
from chromadb.api.types import validate_where
from chromadb.config import Settings as ChromaSettings

from imgrag.errors import ConfigError, ImgragError, StoreError
from imgrag.filters import stored_folder
from imgrag.records import Hit, Indexed
from imgrag.settings import Settings
from imgrag.video_records import manifest_entries

SCHEMA_VERSION = 2  # 2: every record of the collection carries ``dirs`` (imgrag.filters)
LAST_INGEST_KEY = "imgrag_last_ingest"  # collection metadata: the last run's summary, JSON
_MANIFEST_PAGE = 5000
_WRITE_BACKOFF_S = 0.5  # before the second attempt of a write; doubles, with jitter


def make_chroma_client(settings: Settings, *, read_only: bool = False) -> Any:
    """An embedded PersistentClient, or an HttpClient when ``chroma_url`` is set.

    ``read_only``: an embedded store this process cannot write is opened as a snapshot
    (see :func:`read_only_snapshot`); the client then carries ``imgrag_snapshot = True``."""
    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    try:
        if settings.chroma_url:
            url = urlparse(settings.chroma_url)
            headers = {}
            if settings.chroma_auth_token is not None:
                headers["Authorization"] = f"Bearer {settings.chroma_auth_token.get_secret_value()}"
            return chromadb.HttpClient(
                host=url.hostname or "localhost",
                port=_port(url.scheme, url.port),
                ssl=url.scheme == "https",
                headers=headers,
                settings=chroma_settings,
            )
        if read_only and not writable(settings.chroma_path):
            snapshot = read_only_snapshot(settings.chroma_path)
            client = chromadb.PersistentClient(path=str(snapshot), settings=chroma_settings)
            weakref.finalize(client, shutil.rmtree, snapshot, True)
            client.imgrag_snapshot = True
            return client
        settings.chroma_path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(settings.chroma_path), settings=chroma_settings)
    except Exception as exc:  # chromadb raises plain Exception/ValueError on connect
        where = server_address(settings.chroma_url) if settings.chroma_url else str(
            settings.chroma_path)
        raise StoreError(f"cannot open Chroma store at {where}: {_one_line(exc)}") from None


def writable(store_dir: Path) -> bool:
    """Whether this process may write an embedded store (its directory and SQLite file)."""
    sqlite_file = store_dir / "chroma.sqlite3"
    return os.access(store_dir, os.W_OK) and (
        not sqlite_file.exists() or os.access(sqlite_file, os.W_OK))


def read_only_snapshot(store_dir: Path) -> Path:
    """A temporary directory Chroma can open in place of the read-only ``store_dir``: a
    consistent copy of its SQLite file (records' metadata, not their vectors) and links to
    its index folders, which Chroma only reads. Removed when its client is."""
    snapshot = Path(tempfile.mkdtemp(prefix="imgrag-readonly-store-"))
    try:
        source = sqlite3.connect(f"{(store_dir / 'chroma.sqlite3').resolve().as_uri()}?mode=ro",
                                 uri=True)
        try:
            copy = sqlite3.connect(snapshot / "chroma.sqlite3")
            source.backup(copy)
            copy.close()
        finally:
            source.close()
        for entry in store_dir.resolve().iterdir():
            if entry.is_dir():
                (snapshot / entry.name).symlink_to(entry, target_is_directory=True)
    except BaseException:
        shutil.rmtree(snapshot, ignore_errors=True)
        raise
    return snapshot


def forget_embedded_clients() -> None:
    """Drop this process's cached embedded clients: the next open reads the store from disk
    again (an open embedded client does not see another process's later writes)."""
    SharedSystemClient.clear_system_cache()


def _port(scheme: str, port: int | None) -> int:
    return port or (443 if scheme == "https" else 8000)


def server_address(chroma_url: str) -> str:
    """``scheme://host:port`` of a Chroma server URL: what messages may show of it."""
    url = urlparse(chroma_url)
    return f"{url.scheme}://{url.hostname}:{_port(url.scheme, url.port)}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_where(where: Mapping[str, Any]) -> None:
    """ConfigError when Chroma would refuse ``where`` as a metadata filter."""
    try:
        validate_where(dict(where))
    except ValueError as exc:
        raise ConfigError(f"invalid where filter: {_one_line(exc)}") from None


@contextmanager
def chroma_errors(action: str) -> Iterator[None]:
    """Turn a failure of the Chroma client or server (connection refused, an error
    response) into a one-line StoreError naming ``action``."""
    try:
        yield
    except ImgragError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot {action}: {_one_line(exc)}") from None


def distance_space(collection: Any) -> str:
    """The distance function of a collection's vector index ("cosine", "l2", "ip"); Chroma's
    default, "l2", when its configuration does not say."""
    config = getattr(collection, "configuration", None) or {}
    for index in ("hnsw", "spann"):
        space = (config.get(index) or {}).get("space")
        if space:
            return str(space)
    return str((collection.metadata or {}).get("hnsw:space", "l2"))


class ImageStore:
    """One Chroma collection of image vectors (cosine space) with imgrag's metadata."""

    def __init__(self, client: Any, collection: Any, write_attempts: int = 1) -> None:
        self.client = client
        self.collection = collection
        self.max_batch = client.get_max_batch_size()
        self.write_attempts = write_attempts
        self._writes = threading.Condition()
        self._retrying = 0  # writes waiting to be retried now
        self._broken: str | None = None  # why the writes gave up, once they have
        self.read_only = getattr(client, "imgrag_snapshot", False) is True

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"collection {self.collection.name!r} is in a store this process"
                             " cannot write (opened read-only); nothing was written")

    @classmethod
    def open(
        cls, settings: Settings, *, create: bool = True, client: Any = None
    ) -> ImageStore:
        """Open (or create) ``settings.collection``; StoreError on a vector-space mismatch.

        Without ``create``, a missing embedded store is an error and nothing is written."""
        embedded = client is None and not settings.chroma_url
        if embedded and not create and not (settings.chroma_path / "chroma.sqlite3").is_file():
            raise StoreError(f"no store at {settings.chroma_path} (run an ingest first)")
        client = client or make_chroma_client(settings, read_only=not create)
        name = settings.collection
        try:
            existing = {c.name for c in client.list_collections()}
            if name in existing:
                collection = client.get_collection(name, embedding_function=None)
            elif create:
                collection = client.get_or_create_collection(
                    name,
                    configuration={"hnsw": {"space": "cosine"}},
                    metadata={
                        "model_id": settings.model_id,
                        "dim": settings.dim,
                        "imgrag_schema": SCHEMA_VERSION,
                    },
                    embedding_function=None,
                )
            else:
                raise StoreError(f"collection {name!r} does not exist (run an ingest first)")
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot open collection {name!r}: {_one_line(exc)}") from None
        store = cls(client, collection, settings.store_write_attempts)
        store.check_vector_space(settings.model_id, settings.dim)
        return store

    @property
    def model_id(self) -> str | None:
        return (self.collection.metadata or {}).get("model_id")

    @property
    def dim(self) -> int | None:
        return (self.collection.metadata or {}).get("dim")

    def check_vector_space(self, model_id: str, dim: int) -> None:
        """Refuse to mix vector spaces in one collection, to measure distances other than
        cosine, or to read a schema this imgrag does not know."""
        if self.model_id is None:
            raise StoreError(
                f"collection {self.collection.name!r} was not created by imgrag"
                " (no model_id in its metadata); use another --collection"
            )
        if (self.model_id, self.dim) != (model_id, dim):
            raise StoreError(
                f"collection {self.collection.name!r} holds {self.model_id} vectors of dim"
                f" {self.dim}, not {model_id} dim {dim}; use another --collection"
            )
        schema = (self.collection.metadata or {}).get("imgrag_schema", 1)
        if type(schema) is not int or schema < 1:
            raise StoreError(
                f"collection {self.collection.name!r} has a malformed imgrag_schema"
                f" ({schema!r:.40}); use another --collection"
            )
        if schema > SCHEMA_VERSION:
            raise StoreError(
                f"collection {self.collection.name!r} was written by a newer imgrag (schema"
                f" {schema}, this one knows {SCHEMA_VERSION}); upgrade imgrag"
            )
        space = distance_space(self.collection)
        if space != "cosine":
            raise StoreError(
                f"collection {self.collection.name!r} measures {space} distance, not cosine"
                " (distances and --max-distance would be wrong); use another --collection"
            )

    def count(self) -> int:
        return self.collection.count()

    def record_last_ingest(self, summary: Mapping[str, Any]) -> None:
        """Keep a finished ingest run's summary (JSON-able) in the collection metadata."""
        with chroma_errors(f"record the ingest summary in {self.collection.name!r}"):
            fresh = self.client.get_collection(self.collection.name, embedding_function=None)
            metadata = {**(fresh.metadata or {}), LAST_INGEST_KEY: json.dumps(dict(summary))}
            self.collection.modify(metadata=metadata)

    def last_ingest(self) -> dict[str, Any] | None:
        """The summary :meth:`record_last_ingest` kept (re-read from the store), or None."""
        with chroma_errors(f"read the metadata of collection {self.collection.name!r}"):
            fresh = self.client.get_collection(self.collection.name, embedding_function=None)
        text = (fresh.metadata or {}).get(LAST_INGEST_KEY)
        try:
            return json.loads(text) if isinstance(text, str) else None
        except ValueError:
            return None

    def iter_metadata(self, where: Mapping[str, Any] | None = None) -> Iterator[tuple[str, dict]]:
        """Every (id, metadata) matching ``where``: the matching ids first (ids only, one
        read), then their metadata by id in pages. Pages by offset would skip live records
        when others are deleted during the read (another shard's sweep); a snapshot of ids
        cannot: a record deleted meanwhile is just not returned. The pages name ids alone:
        Chroma 1.5 takes minutes for ids and a where together (230 s instead of 3 s for a
        page of 5,000 records of 10,000 here)."""
        where = dict(where) if where else None
        ids = self.collection.get(where=where, include=[])["ids"]
        for start in range(0, len(ids), _MANIFEST_PAGE):
            page = self.collection.get(ids=ids[start : start + _MANIFEST_PAGE],
                                       include=["metadatas"])
            yield from zip(page["ids"], page["metadatas"], strict=True)

    def manifest(self, bucket: str, scope: str) -> dict[str, Indexed]:
        """Source URI → (ETag, normalize version, last_modified, size) of every image and
        video (its frames as one entry, see ``imgrag.video_records``) whose records' ids
        start with ``scope`` (a URI prefix).

        Chroma reads only the bucket's records under the scope's folder (``dirs`` contains
        it) when it can; the id prefix test is the exact check either way.
        """
        where: dict[str, Any] = {"bucket": bucket}
        folder = self._scope_folder(bucket, scope)
        if folder:
            where = {"$and": [where, {"dirs": {"$contains": folder}}]}
        return manifest_entries((record_id, meta) for record_id, meta
                                in self.iter_metadata(where) if record_id.startswith(scope))

    def iter_manifest(self, bucket: str, scope: str) -> Iterator[tuple[str, Indexed]]:
        """The manifest sorted by id (Chroma reads in insertion order: sorted in memory)."""
        return iter(sorted(self.manifest(bucket, scope).items()))

    def _scope_folder(self, bucket: str, scope: str) -> str:
        """The folder of an S3 scope's prefix that ``dirs`` holds (its own, or its deepest
        stored ancestor), when ``dirs`` can find its records: "" for a whole bucket, a local
        folder (keys are relative to the folder listed, not to one root) or a collection
        older than ``dirs`` (schema 1)."""
        head = f"s3://{bucket}/"
        schema = (self.collection.metadata or {}).get("imgrag_schema", 1)
        if not bucket or not scope.startswith(head) or schema < 2:
            return ""
        return stored_folder(scope[len(head) :])

    def upsert(
        self,
        ids: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        metadatas: Sequence[Mapping[str, Any]],
        documents: Sequence[str] | None = None,
    ) -> None:
        """Add or replace records by id, in chunks the server accepts (see ``_write``).
        ``documents`` (the OCR text, "" for none) replaces a record's text; without them it
        is kept."""
        self._check_writable()
        for start in range(0, len(ids), self.max_batch):
            end = start + self.max_batch
            self._write(f"write {len(ids[start:end])} records", partial(
                self.collection.upsert,
                ids=list(ids[start:end]),
                embeddings=[list(e) for e in embeddings[start:end]],
                metadatas=[dict(m) for m in metadatas[start:end]],
                documents=list(documents[start:end]) if documents is not None else None,
            ))

    def set_texts(
        self, ids: Sequence[str], documents: Sequence[str], metadatas: Sequence[Mapping[str, Any]]
    ) -> None:
        """Replace the text of existing records and merge ``metadatas`` into theirs, vectors
        unchanged (Chroma re-sends them: an update with documents needs embeddings)."""
        self._check_writable()
        for start in range(0, len(ids), self.max_batch):
            chunk = list(ids[start : start + self.max_batch])
            with chroma_errors(f"read records of collection {self.collection.name!r}"):
                page = self.collection.get(ids=chunk, include=["embeddings"])
            vectors = dict(zip(page["ids"], page["embeddings"], strict=True))
            keep = [i for i, rid in enumerate(chunk, start) if rid in vectors]
            if keep:
                self._write(f"update the texts of {len(keep)} records", partial(
                    self.collection.update, ids=[ids[i] for i in keep],
                    embeddings=[list(vectors[ids[i]]) for i in keep],
                    documents=[documents[i] for i in keep],
                    metadatas=[dict(metadatas[i]) for i in keep]))

    def text_matches(
        self, pattern: str, limit: int, where: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str, dict, list[float]]]:
        """(id, text, metadata, vector) of up to ``limit`` records whose text matches the
        regular expression ``pattern`` (Chroma's own ``where_document`` ``$regex``, in the
        embedded and the server mode alike), within the metadata filter ``where``."""
        with chroma_errors(f"search the texts of collection {self.collection.name!r}"):
            page = self.collection.get(
                where=dict(where) if where else None, where_document={"$regex": pattern},
                limit=limit, include=["documents", "metadatas", "embeddings"],
            )
        return [(rid, doc or "", dict(meta or {}), [float(x) for x in vec])
                for rid, doc, meta, vec in zip(page["ids"], page["documents"],
                                               page["metadatas"], page["embeddings"],
                                               strict=True)]

    def has_texts(self) -> bool:
        """Whether any record carries OCR text (``ocr_version`` ≥ 1)."""
        with chroma_errors(f"read collection {self.collection.name!r}"):
            page = self.collection.get(where={"ocr_version": {"$gte": 1}}, limit=1,
                                       include=[])
        return bool(page["ids"])

    def update_metadata(self, ids: Sequence[str], metadatas: Sequence[Mapping[str, Any]]) -> None:
        """Merge fields into the metadata of existing records (vectors untouched; ids no
        longer stored are skipped), in chunks."""
        self._check_writable()
        for start in range(0, len(ids), self.max_batch):
            end = start + self.max_batch
            chunk = list(ids[start:end])
            self._write(f"update {len(chunk)} records", partial(
                self.collection.update, ids=chunk,
                metadatas=[dict(m) for m in metadatas[start:end]]))

    def delete(self, ids: Sequence[str]) -> None:
        """Remove records by id, in chunks (see ``_write``)."""
        self._check_writable()
        for start in range(0, len(ids), self.max_batch):
            chunk = list(ids[start : start + self.max_batch])
            self._write(f"delete {len(chunk)} records", partial(self.collection.delete, ids=chunk))

    def _write(self, action: str, write: Callable[[], None]) -> None:
        """Run one write (idempotent: by id), retrying it alone with backoff when it fails,
        so vectors already paid for are not thrown away; then a one-line StoreError.

        While a write waits to be retried, and after one gave up (until one succeeds),
        ``wait_writable`` holds back or refuses callers about to pay for more vectors."""
        where = f"{action} to collection {self.collection.name!r}"
        delay = _WRITE_BACKOFF_S
        retrying = False
        try:
            for attempt in range(1, self.write_attempts + 1):
                try:
                    with chroma_errors(where):
                        write()
                except StoreError as exc:
                    if attempt == self.write_attempts:
                        message = f"{exc} (after {attempt} attempts)"
                        with self._writes:
                            self._broken = message
                        raise StoreError(message) from None
                else:
                    with self._writes:
                        self._broken = None
                    return
                if not retrying:
                    retrying = True
                    with self._writes:
                        self._retrying += 1
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay *= 2
        finally:
            if retrying:
                with self._writes:
                    self._retrying -= 1
                    self._writes.notify_all()

    def wait_writable(self) -> None:
        """Return when no write of this store waits to be retried; StoreError when the last
        one gave up. Call it before paying for vectors that will have to be written."""
        with self._writes:
            self._writes.wait_for(lambda: self._broken is not None or not self._retrying)
            if self._broken is not None:
                raise StoreError(self._broken)

    def source_ids(self, uris: Sequence[str]) -> dict[str, list[str]]:
        """Source URI → ids of its records (an image's one, a video's frames), for the
        sources that have any."""
        found: dict[str, list[str]] = {}
        with chroma_errors(f"read records of collection {self.collection.name!r}"):
            for start in range(0, len(uris), self.max_batch):
                chunk = list(uris[start : start + self.max_batch])
                where = {"source_uri": {"$in": chunk}}
                for record_id, meta in self.iter_metadata(where):
                    found.setdefault(str(meta["source_uri"]), []).append(record_id)
        return found

    def delete_sources(self, uris: Sequence[str]) -> None:
        """Remove every record of these source objects: by id, and by ``source_uri`` (all
        frames of a video)."""
        self._check_writable()
        self.delete(uris)
        for start in range(0, len(uris), self.max_batch):
            chunk = list(uris[start : start + self.max_batch])
            self._write(f"delete the records of {len(chunk)} sources", partial(
                self.collection.delete, where={"source_uri": {"$in": chunk}}))

    def replace_source(
        self,
        uri: str,
        ids: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        metadatas: Sequence[Mapping[str, Any]],
    ) -> int:
        """Upsert a source's records, then delete its records not among ``ids`` (a changed
        video's old frames); the number deleted. Until the deletion, the old frames serve
        and the mixed set reads as incomplete (``manifest``), so a crash is re-done."""
        self.upsert(ids, embeddings, metadatas)
        keep = set(ids)
        stale = [i for i in self.source_ids([uri]).get(uri, []) if i not in keep]
        self.delete(stale)
        return len(stale)

    def get(self, ids: Sequence[str]) -> dict[str, dict]:
        """id → metadata for the ids that exist."""
        if not ids:
            return {}
        with chroma_errors(f"read records of collection {self.collection.name!r}"):
            page = self.collection.get(ids=list(ids), include=["metadatas"])
        return dict(zip(page["ids"], page["metadatas"], strict=True))

    def get_embedding(self, record_id: str) -> list[float] | None:
        """The stored vector of one record, or None."""
        with chroma_errors(f"read a record of collection {self.collection.name!r}"):
            page = self.collection.get(ids=[record_id], include=["embeddings"])
        if not page["ids"]:
            return None
        return [float(x) for x in page["embeddings"][0]]

    def close(self) -> None:
        """Nothing to release: the Chroma client closes with the process."""

    def query(
        self, embedding: Sequence[float], k: int = 8, where: Mapping[str, Any] | None = None
    ) -> list[Hit]:
        """The ``k`` nearest records by cosine distance."""
        with chroma_errors(f"query collection {self.collection.name!r}"):
            result = self.collection.query(
                query_embeddings=[list(embedding)],
                n_results=k,
                where=dict(where) if where else None,
                include=["metadatas", "distances"],
            )
        return [
            Hit(rank=rank, id=record_id, distance=float(distance), metadata=dict(meta or {}))
            for rank, (record_id, distance, meta) in enumerate(
                zip(result["ids"][0], result["distances"][0], result["metadatas"][0], strict=True),
                start=1,
            )
        ]


def collection_vector_space(settings: Settings) -> tuple[str, int]:
    """The (model id, dimension) ``settings.collection`` was created with; StoreError if
    there is no such collection or it is not imgrag's. Writes nothing."""
    if not settings.chroma_url and not (settings.chroma_path / "chroma.sqlite3").is_file():
        raise StoreError(f"no store at {settings.chroma_path} (run an ingest first)")
    client = make_chroma_client(settings)
    name = settings.collection
    with chroma_errors(f"open collection {name!r}"):
        if name not in {c.name for c in client.list_collections()}:
            raise StoreError(f"collection {name!r} does not exist (run an ingest first)")
        metadata = client.get_collection(name, embedding_function=None).metadata or {}
    if not isinstance(metadata.get("model_id"), str) or not isinstance(metadata.get("dim"), int):
        raise StoreError(f"collection {name!r} was not created by imgrag (no model_id and dim"
                         " in its metadata); use another --collection")
    return metadata["model_id"], metadata["dim"]
