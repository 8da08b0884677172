"""The Chroma wrapper: cosine space, one vector space per collection, manifest by scope."""

from __future__ import annotations

import pytest

from imgrag.errors import StoreError
from imgrag.settings import Settings
from imgrag.store import ImageStore


def unit(i: int, dim: int = 8) -> list[float]:
    return [1.0 if j == i % dim else 0.0 for j in range(dim)]


def meta(bucket: str, etag: str) -> dict:
    return {"bucket": bucket, "etag": etag}


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(chroma_path=tmp_path / "db", dim=256)


def test_collection_records_model_and_uses_cosine_space(settings):
    store = ImageStore.open(settings)
    assert (store.model_id, store.dim) == (settings.model_id, 256)
    config = store.collection.configuration
    assert config["hnsw"]["space"] == "cosine"


def test_opening_with_another_dimension_is_refused(settings):
    ImageStore.open(settings)
    with pytest.raises(StoreError, match=r"dim 256, not amazon\.titan-embed-image-v1 dim 1024"):
        ImageStore.open(settings.model_copy(update={"dim": 1024}))


def test_collection_not_made_by_imgrag_is_refused(settings):
    store = ImageStore.open(settings)
    store.client.create_collection("foreign", embedding_function=None)
    with pytest.raises(StoreError, match="not created by imgrag"):
        ImageStore.open(settings.model_copy(update={"collection": "foreign"}))


def test_open_without_create_reports_missing_collection(settings):
    ImageStore.open(settings.model_copy(update={"collection": "other"}))
    with pytest.raises(StoreError, match="collection 'images' does not exist"):
        ImageStore.open(settings, create=False)


def test_open_without_create_refuses_a_missing_store_and_writes_nothing(settings, tmp_path):
    with pytest.raises(StoreError, match=r"^no store at .*db \(run an ingest first\)$"):
        ImageStore.open(settings, create=False)
    assert not settings.chroma_path.exists()

    empty = tmp_path / "empty"  # an existing folder that holds no store stays untouched
    empty.mkdir()
    with pytest.raises(StoreError, match="no store at"):
        ImageStore.open(settings.model_copy(update={"chroma_path": empty}), create=False)
    assert list(empty.iterdir()) == []


def test_upsert_is_idempotent_and_query_orders_by_distance(settings):
    store = ImageStore.open(settings)
    vectors = [unit(0, 256), unit(1, 256), [0.7] + [0.7] + [0.0] * 254]
    for _ in range(2):
        store.upsert(["x", "y", "z"], vectors, [meta("b", "1")] * 3)
    assert store.count() == 3
    hits = store.query(unit(0, 256), k=3)
    assert [h.id for h in hits] == ["x", "z", "y"]
    assert hits[0].distance == pytest.approx(0.0, abs=1e-6)
    store.delete(["x"])
    assert store.count() == 2


def test_collection_written_by_a_newer_schema_is_refused(settings):
    store = ImageStore.open(settings)
    store.collection.modify(metadata={**store.collection.metadata, "imgrag_schema": 99})
    with pytest.raises(StoreError, match="newer imgrag"):
        ImageStore.open(settings)


@pytest.mark.parametrize("space", ["l2", "ip"])
def test_collection_of_another_distance_space_is_refused_even_with_our_metadata(settings, space):
    client = ImageStore.open(settings).client
    client.delete_collection(settings.collection)
    client.create_collection(settings.collection, configuration={"hnsw": {"space": space}},
                             embedding_function=None, metadata={
                                 "model_id": settings.model_id, "dim": settings.dim,
                                 "imgrag_schema": 2})
    with pytest.raises(StoreError, match=rf"^collection 'images' measures {space} distance,"
                                         r" not cosine .*; use another --collection$"):
        ImageStore.open(settings, create=False)


@pytest.mark.parametrize("schema", ["2", 2.5, True, 0])
def test_malformed_schema_version_is_refused_in_one_line(settings, schema):
    store = ImageStore.open(settings)
    meta = {**store.collection.metadata, "imgrag_schema": schema}
    store.collection.modify(metadata=meta)
    with pytest.raises(StoreError, match=r"^collection 'images' has a malformed imgrag_schema"
                                         r" \(.*\); use another --collection$"):
        ImageStore.open(settings)
