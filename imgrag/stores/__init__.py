"""Vector stores behind one protocol: ChromaDB (``imgrag.store``) and PostgreSQL with
pgvector (``imgrag.stores.pgvector``, imported only when selected), chosen by
``IMGRAG_STORE_URL`` / ``--store``."""

from __future__ import annotations

from contextlib import AbstractContextManager

from imgrag.settings import Settings
from imgrag.stores.base import VectorStore

__all__ = ["VectorStore", "check_writer_free", "open_store", "vector_space", "writer_lock"]


def open_store(settings: Settings, *, create: bool = True) -> VectorStore:
    """The settings' store, opened (or created); StoreError on a vector-space mismatch."""
    if settings.store_kind == "pgvector":
        from imgrag.stores.pgvector import PgVectorStore

        return PgVectorStore.open(settings, create=create)
    from imgrag.store import ImageStore

    return ImageStore.open(settings, create=create)


def vector_space(settings: Settings) -> tuple[str, int]:
    """The (model id, dimension) the settings' collection was created with; StoreError if
    it does not exist or is not imgrag's. Writes nothing."""
    if settings.store_kind == "pgvector":
        from imgrag.stores.pgvector import PgVectorStore

        store = PgVectorStore.open(settings, create=False, check=False)
        store.close()
        return str(store.model_id), int(store.dim or 0)
    from imgrag.store import collection_vector_space

    return collection_vector_space(settings)


def writer_lock(
    settings: Settings, shard: tuple[int, int] | None = None
) -> AbstractContextManager[object]:
    """The lock an ingest holds: an advisory lock on PostgreSQL (shards share it), a file
    lock beside an embedded Chroma store, none for a Chroma server (``tasks.guard``)."""
    if settings.store_kind == "pgvector":
        from imgrag.stores.pgvector import AdvisoryWriterLock

        return AdvisoryWriterLock(settings, shard)
    from imgrag import lock

    return lock.writer_lock(settings.chroma_url, settings.chroma_path)


def check_writer_free(settings: Settings, shard: tuple[int, int] | None = None) -> None:
    """StoreLockedError when another ingest holds the writer lock; StoreError when the
    store cannot be reached. Writes nothing: a probe before a run starts."""
    if settings.store_kind == "pgvector":
        with writer_lock(settings, shard):
            return
    if settings.chroma_url:
        from imgrag.store import make_chroma_client

        make_chroma_client(settings)  # reachable (the HTTP client checks on creation)
    else:
        from imgrag.lock import check_unlocked

        check_unlocked(settings.chroma_path)
