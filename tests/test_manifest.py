"""The store's manifest: what change detection reads for one scope, and nothing outside it."""

from __future__ import annotations

from typing import Any

import pytest

from imgrag.filters import QueryFilters, filter_metadata, key_dirs
from imgrag.query import SearchRequest, resolve_where
from imgrag.records import Indexed, SourceObject
from imgrag.settings import Settings
from imgrag.store import ImageStore


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(chroma_path=tmp_path / "db", dim=256)


@pytest.fixture
def store(settings) -> ImageStore:
    return ImageStore.open(settings)


def s3_meta(uri: str, etag: str, **extra: Any) -> dict[str, Any]:
    """Metadata as ingest writes it: bucket, key, etag and the ``dirs`` of the key."""
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    dirs = {"dirs": key_dirs(key)} if "/" in key else {}
    return {"bucket": bucket, "key": key, "etag": etag, "normalize_version": 1, **dirs, **extra}


def vector(i: int) -> list[float]:
    return [1.0 if j == i % 256 else 0.0 for j in range(256)]


def add(store: ImageStore, metas: dict[str, dict]) -> None:
    ids = list(metas)
    store.upsert(ids, [vector(i) for i in range(len(ids))], list(metas.values()))


def test_manifest_is_scoped_by_bucket_and_uri_prefix_across_pages(store, monkeypatch):
    monkeypatch.setattr("imgrag.store._MANIFEST_PAGE", 7)
    ids = [f"s3://b/a/{i}.jpg" for i in range(20)] + ["s3://b/ab.jpg", "s3://c/a/1.jpg"]
    add(store, {uri: s3_meta(uri, f"e{n}") for n, uri in enumerate(ids)})

    manifest = store.manifest("b", "s3://b/a/")

    assert manifest == {f"s3://b/a/{i}.jpg": Indexed(f"e{i}", 1) for i in range(20)}


def test_manifest_reads_each_records_normalize_version_missing_as_0(store):
    add(store, {"s3://b/new.jpg": {"bucket": "b", "etag": "x", "normalize_version": 3},
                "s3://b/old.jpg": {"bucket": "b", "etag": "y"}})

    assert store.manifest("b", "s3://b/") == {
        "s3://b/new.jpg": Indexed("x", 3), "s3://b/old.jpg": Indexed("y", 0)}


KEYS = ["a/1.jpg", "a/red.jpg", "a/x/deep.jpg", "ab/1.jpg", "b/a/1.jpg", "top.jpg",
        *(f"c/{i}.jpg" for i in range(40))]


class CountingCollection:
    """The Chroma collection, counting the records whose metadata its ``get`` calls return."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection
        self.returned = 0

    def get(self, *args: Any, **kwargs: Any) -> Any:
        page = self._collection.get(*args, **kwargs)
        if page["metadatas"] is not None:
            self.returned += len(page["ids"])
        return page

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)


@pytest.mark.parametrize(("prefix", "expected"), [
    ("a/", ["a/1.jpg", "a/red.jpg", "a/x/deep.jpg"]),
    ("a/x/", ["a/x/deep.jpg"]),
    ("a/re", ["a/red.jpg"]),  # ends inside a name: its folder, then the exact id test
    ("", KEYS),
])
def test_manifest_reads_only_the_scope_folders_records(store, prefix, expected):
    add(store, {f"s3://b/{key}": s3_meta(f"s3://b/{key}", "e") for key in KEYS})
    add(store, {f"s3://other/{key}": s3_meta(f"s3://other/{key}", "e") for key in KEYS})
    counting = CountingCollection(store.collection)
    store.collection = counting

    manifest = store.manifest("b", f"s3://b/{prefix}")

    assert sorted(manifest) == sorted(f"s3://b/{key}" for key in expected)
    folder_records = sum(key.startswith(prefix[: prefix.rfind("/") + 1]) for key in KEYS)
    assert counting.returned == folder_records  # not the bucket's, nor the collection's


def test_collection_older_than_dirs_is_read_whole_and_stays_exact(settings):
    """Schema 1 records may lack ``dirs``: a filter on it would miss them (and they could
    then never be swept), so the bucket is read and filtered by id."""
    client = ImageStore.open(settings).client
    client.delete_collection(settings.collection)
    client.create_collection(settings.collection, embedding_function=None,
                             configuration={"hnsw": {"space": "cosine"}}, metadata={
        "model_id": settings.model_id, "dim": settings.dim, "imgrag_schema": 1})
    store = ImageStore.open(settings)
    add(store, {"s3://b/a/1.jpg": {"bucket": "b", "etag": "old"},
                "s3://b/a/2.jpg": s3_meta("s3://b/a/2.jpg", "new"),
                "s3://b/b/3.jpg": {"bucket": "b", "etag": "x"}})

    assert store.manifest("b", "s3://b/a/") == {
        "s3://b/a/1.jpg": Indexed("old", 0), "s3://b/a/2.jpg": Indexed("new", 1)}


def test_new_collections_declare_the_dirs_schema(store):
    assert store.collection.metadata["imgrag_schema"] >= 2


DEEP = "a/" * 300  # 600 characters, 300 folder levels
DEEP_KEYS = [*(f"{DEEP}{'x/' * 200}{i}.jpg" for i in range(10)),  # ~1 KB keys of slashes
             *(f"{DEEP}{'y/' * 200}{i}.jpg" for i in range(10)), "/" * 1000 + "z.jpg", "a/top.jpg"]


@pytest.fixture
def deep_store(store) -> ImageStore:
    metas = {}
    for key in DEEP_KEYS:
        obj = SourceObject(uri=f"s3://b/{key}", bucket="b", key=key, etag="e", size=1)
        metas[obj.uri] = {"bucket": "b", "key": key, "etag": "e", "source_uri": obj.uri,
                          **filter_metadata(obj)}
    add(store, metas)
    return store


def test_dirs_of_deep_keys_stay_small(deep_store, settings):
    stored = deep_store.collection.get(include=["metadatas"])["metadatas"]
    for meta in stored:
        assert len(meta.get("dirs", [])) <= 16
        assert sum(map(len, meta.get("dirs", []))) <= 4096
    # 22 records; every ancestor of each key made this ~40 MB
    assert (settings.chroma_path / "chroma.sqlite3").stat().st_size < 4_000_000


@pytest.mark.parametrize(("prefix", "expected"), [
    (DEEP + "x/" * 200, DEEP_KEYS[:10]),
    (DEEP + "y/" * 200 + "3", [DEEP_KEYS[13]]),
    (DEEP + "y/", DEEP_KEYS[10:20]),
    ("/" * 500, [DEEP_KEYS[20]]),
    ("a/", [*DEEP_KEYS[:20], "a/top.jpg"]),
])
def test_manifest_and_prefix_query_stay_exact_below_the_stored_folders(deep_store, prefix,
                                                                        expected):
    assert sorted(deep_store.manifest("b", f"s3://b/{prefix}")) == sorted(
        f"s3://b/{key}" for key in expected)

    request = SearchRequest(text="x", filters=QueryFilters(prefix=prefix))
    hits = deep_store.query(vector(0), k=len(DEEP_KEYS), where=resolve_where(deep_store, request))
    assert sorted(h.metadata["key"] for h in hits) == sorted(expected)


class DeletingCollection(CountingCollection):
    """The Chroma collection; after the first page of metadata it returns, ``delete`` runs
    (another shard's sweep between two pages of the read)."""

    def __init__(self, collection: Any, delete: list[str]) -> None:
        super().__init__(collection)
        self._delete = delete
        self.first_page: list[str] = []

    def get(self, *args: Any, **kwargs: Any) -> Any:
        page = super().get(*args, **kwargs)
        if page["metadatas"] is not None and not self.first_page:
            self.first_page = list(page["ids"])
            self._collection.delete(ids=self._delete + self.first_page)
        return page


def test_records_deleted_during_the_read_leave_no_live_record_unseen(store, monkeypatch):
    monkeypatch.setattr("imgrag.store._MANIFEST_PAGE", 5)
    ids = [f"s3://b/p/{i:02}.jpg" for i in range(23)]
    add(store, {uri: s3_meta(uri, "e") for uri in ids})
    later = ids[-3:]  # deleted before their page is read
    deleting = DeletingCollection(store.collection, later)
    store.collection = deleting

    manifest = store.manifest("b", "s3://b/p/")

    live = set(ids) - set(later) - set(deleting.first_page)
    assert len(deleting.first_page) == 5
    assert live <= set(manifest)  # no live record unseen
    assert set(manifest) - live == set(deleting.first_page)  # seen before their deletion
