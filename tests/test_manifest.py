"""The store's manifest: what change detection reads for one scope, and nothing outside it."""

from __future__ import annotations

import pytest

from imgrag.records import Indexed
from imgrag.settings import Settings
from imgrag.store import ImageStore


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore.open(Settings(chroma_path=tmp_path / "db", dim=256))


def vector(i: int) -> list[float]:
    return [1.0 if j == i % 256 else 0.0 for j in range(256)]


def add(store: ImageStore, metas: dict[str, dict]) -> None:
    ids = list(metas)
    store.upsert(ids, [vector(i) for i in range(len(ids))], list(metas.values()))


def test_manifest_is_scoped_by_bucket_and_uri_prefix_across_pages(store, monkeypatch):
    monkeypatch.setattr("imgrag.store._MANIFEST_PAGE", 7)
    ids = [f"s3://b/a/{i}.jpg" for i in range(20)] + ["s3://b/ab.jpg", "s3://c/a/1.jpg"]
    add(store, {uri: {"bucket": uri.split("/")[2], "etag": f"e{n}", "normalize_version": 1}
                for n, uri in enumerate(ids)})

    manifest = store.manifest("b", "s3://b/a/")

    assert manifest == {f"s3://b/a/{i}.jpg": Indexed(f"e{i}", 1) for i in range(20)}


def test_manifest_reads_each_records_normalize_version_missing_as_0(store):
    add(store, {"s3://b/new.jpg": {"bucket": "b", "etag": "x", "normalize_version": 3},
                "s3://b/old.jpg": {"bucket": "b", "etag": "y"}})

    assert store.manifest("b", "s3://b/") == {
        "s3://b/new.jpg": Indexed("x", 3), "s3://b/old.jpg": Indexed("y", 0)}
