"""The vector store: the only module that talks to ChromaDB.

The collection is the single source of truth for what is indexed. It records the model and
dimension it was created with; opening it for another vector space is an error.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import chromadb
from chromadb.api.types import validate_where
from chromadb.config import Settings as ChromaSettings

from imgrag.errors import ConfigError, ImgragError, StoreError
from imgrag.records import Hit, Indexed
from imgrag.settings import Settings

SCHEMA_VERSION = 2  # 2: every record of the collection carries ``dirs`` (imgrag.filters)
_MANIFEST_PAGE = 5000


def make_chroma_client(settings: Settings) -> Any:
    """An embedded PersistentClient, or an HttpClient when ``chroma_url`` is set."""
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
        settings.chroma_path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(settings.chroma_path), settings=chroma_settings)
    except Exception as exc:  # chromadb raises plain Exception/ValueError on connect
        where = server_address(settings.chroma_url) if settings.chroma_url else str(
            settings.chroma_path)
        raise StoreError(f"cannot open Chroma store at {where}: {_one_line(exc)}") from None


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


class ImageStore:
    """One Chroma collection of image vectors (cosine space) with imgrag's metadata."""

    def __init__(self, client: Any, collection: Any) -> None:
        self.client = client
        self.collection = collection
        self.max_batch = client.get_max_batch_size()

    @classmethod
    def open(
        cls, settings: Settings, *, create: bool = True, client: Any = None
    ) -> ImageStore:
        """Open (or create) ``settings.collection``; StoreError on a vector-space mismatch.

        Without ``create``, a missing embedded store is an error and nothing is written."""
        embedded = client is None and not settings.chroma_url
        if embedded and not create and not (settings.chroma_path / "chroma.sqlite3").is_file():
            raise StoreError(f"no store at {settings.chroma_path} (run an ingest first)")
        client = client or make_chroma_client(settings)
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
        store = cls(client, collection)
        store.check_vector_space(settings.model_id, settings.dim)
        return store

    @property
    def model_id(self) -> str | None:
        return (self.collection.metadata or {}).get("model_id")

    @property
    def dim(self) -> int | None:
        return (self.collection.metadata or {}).get("dim")

    def check_vector_space(self, model_id: str, dim: int) -> None:
        """Refuse to mix vector spaces in one collection, or to write a newer schema."""
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
        if schema > SCHEMA_VERSION:
            raise StoreError(
                f"collection {self.collection.name!r} was written by a newer imgrag (schema"
                f" {schema}, this one knows {SCHEMA_VERSION}); upgrade imgrag"
            )

    def count(self) -> int:
        return self.collection.count()

    def iter_metadata(self, where: Mapping[str, Any] | None = None) -> Iterator[tuple[str, dict]]:
        """Every (id, metadata) matching ``where``, read in pages."""
        offset = 0
        while True:
            page = self.collection.get(
                where=dict(where) if where else None,
                include=["metadatas"],
                limit=_MANIFEST_PAGE,
                offset=offset,
            )
            ids = page["ids"]
            yield from zip(ids, page["metadatas"], strict=True)
            if len(ids) < _MANIFEST_PAGE:
                return
            offset += len(ids)

    def manifest(self, bucket: str, scope: str) -> dict[str, Indexed]:
        """id → (ETag, normalize version) of every record whose id starts with ``scope``
        (a URI prefix).

        Chroma reads only the bucket's records under the scope's folder (``dirs`` contains
        it) when it can; the id prefix test is the exact check either way.
        """
        where: dict[str, Any] = {"bucket": bucket}
        folder = self._scope_folder(bucket, scope)
        if folder:
            where = {"$and": [where, {"dirs": {"$contains": folder}}]}
        return {
            record_id: Indexed(str(meta.get("etag", "")), int(meta.get("normalize_version", 0)))
            for record_id, meta in self.iter_metadata(where)
            if record_id.startswith(scope)
        }

    def _scope_folder(self, bucket: str, scope: str) -> str:
        """The folder (up to the last "/") of an S3 scope's prefix, when ``dirs`` can find
        its records: "" for a whole bucket, a local folder (keys are relative to the folder
        listed, not to one root) or a collection older than ``dirs`` (schema 1)."""
        head = f"s3://{bucket}/"
        schema = (self.collection.metadata or {}).get("imgrag_schema", 1)
        if not bucket or not scope.startswith(head) or schema < 2:
            return ""
        prefix = scope[len(head) :]
        return prefix[: prefix.rfind("/") + 1]

    def upsert(
        self,
        ids: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        metadatas: Sequence[Mapping[str, Any]],
    ) -> None:
        """Add or replace records by id, in chunks the server accepts."""
        for start in range(0, len(ids), self.max_batch):
            end = start + self.max_batch
            self.collection.upsert(
                ids=list(ids[start:end]),
                embeddings=[list(e) for e in embeddings[start:end]],
                metadatas=[dict(m) for m in metadatas[start:end]],
            )

    def delete(self, ids: Sequence[str]) -> None:
        """Remove records by id, in chunks."""
        for start in range(0, len(ids), self.max_batch):
            self.collection.delete(ids=list(ids[start : start + self.max_batch]))

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
