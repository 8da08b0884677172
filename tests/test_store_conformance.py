"""One suite, both stores: what the planner, pipeline and query rely on, checked against
embedded Chroma and against PostgreSQL with pgvector (a real server)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from imgrag.errors import StoreError
from imgrag.filters import QueryFilters, combine_where, filter_metadata
from imgrag.records import Indexed, SourceObject
from imgrag.settings import Settings
from imgrag.stores import VectorStore, open_store

DIM = 256


@pytest.fixture(params=["chroma", "pgvector"])
def settings(request, tmp_path) -> Settings:
    if request.param == "chroma":
        return Settings(chroma_path=tmp_path / "db", dim=DIM)
    return Settings(store_url=request.getfixturevalue("pg_store_url"), dim=DIM)


@pytest.fixture
def store(settings) -> VectorStore:
    opened = open_store(settings)
    yield opened
    opened.close()


@pytest.fixture
def small_pages(monkeypatch):
    monkeypatch.setattr("imgrag.store._MANIFEST_PAGE", 3)
    monkeypatch.setattr("imgrag.stores.pgvector.PAGE", 3)


def axis(i: int, scale: float = 1.0) -> list[float]:
    return [scale if j == i % DIM else 0.0 for j in range(DIM)]


def record(uri: str, etag: str = "e", *, width: int = 64, fmt: str = "JPEG",
           modified: datetime | None = None) -> dict[str, Any]:
    """Metadata as ingest writes it (``imgrag.pipeline.record_metadata``)."""
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    obj = SourceObject(uri=uri, bucket=bucket, key=key, etag=etag, size=1000,
                       last_modified=modified)
    return {"source_uri": uri, "bucket": bucket, "key": key, "etag": etag, "size": 1000,
            "last_modified": modified.isoformat() if modified else "", "width": width,
            "height": 48, "format": fmt, "model_id": "m", "dim": DIM, "normalize_version": 1,
            "ingested_at": "2026-01-01T00:00:00+00:00", "run_id": "r", **filter_metadata(obj)}


def add(store: VectorStore, metas: dict[str, dict], vectors: list | None = None) -> None:
    ids = list(metas)
    store.upsert(ids, vectors or [axis(i) for i in range(len(ids))], list(metas.values()))


def test_upsert_is_idempotent_and_replaces_by_id(store):
    metas = {f"s3://b/{i}.jpg": record(f"s3://b/{i}.jpg") for i in range(3)}
    add(store, metas)
    add(store, metas)
    assert store.count() == 3

    store.upsert(["s3://b/1.jpg"], [axis(9)], [record("s3://b/1.jpg", "new", width=7)])

    assert store.count() == 3
    got = store.get(["s3://b/1.jpg", "s3://b/missing.jpg"])
    assert list(got) == ["s3://b/1.jpg"]
    assert (got["s3://b/1.jpg"]["etag"], got["s3://b/1.jpg"]["width"]) == ("new", 7)
    assert store.get_embedding("s3://b/1.jpg") == pytest.approx(axis(9))
    assert store.get_embedding("s3://b/missing.jpg") is None
    store.delete(["s3://b/0.jpg", "s3://b/missing.jpg"])
    assert store.count() == 2


def test_distances_are_cosine_and_metadata_round_trips(store):
    when = datetime(2024, 6, 1, 12, 30, tzinfo=UTC)
    diagonal = [1.0, 1.0] + [0.0] * (DIM - 2)
    opposite = [-2.0] + [0.0] * (DIM - 1)
    add(store, {"s3://b/same.jpg": record("s3://b/same.jpg", modified=when),
                "s3://b/diag.jpg": record("s3://b/diag.jpg"),
                "s3://b/ortho.jpg": record("s3://b/ortho.jpg"),
                "s3://b/opposite.jpg": record("s3://b/opposite.jpg")},
        [axis(0, 3.0), diagonal, axis(1), opposite])

    hits = store.query(axis(0), k=4)

    assert [h.id for h in hits] == ["s3://b/same.jpg", "s3://b/diag.jpg", "s3://b/ortho.jpg",
                                    "s3://b/opposite.jpg"]
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    expected = [0.0, 1 - math.cos(math.pi / 4), 1.0, 2.0]
    assert [h.distance for h in hits] == pytest.approx(expected, abs=1e-5)
    meta = hits[0].metadata
    assert {k: meta[k] for k in ("source_uri", "bucket", "key", "etag", "size", "width",
                                 "height", "format", "normalize_version", "last_modified")} == {
        "source_uri": "s3://b/same.jpg", "bucket": "b", "key": "same.jpg", "etag": "e",
        "size": 1000, "width": 64, "height": 48, "format": "JPEG", "normalize_version": 1,
        "last_modified": "2024-06-01T12:30:00+00:00"}


URIS = ["s3://b/a/1.jpg", "s3://b/a/Z.jpg", "s3://b/a/é.jpg", "s3://b/a/a b.jpg",
        "s3://b/a/x/deep.jpg", "s3://b/a/%_.jpg", "s3://b/ab.jpg", "s3://b/b/a/1.jpg",
        "s3://c/a/1.jpg", *(f"s3://b/a/n{i:02d}.jpg" for i in range(12))]


def test_manifest_is_scoped_and_streams_sorted_by_id_across_pages(store, small_pages):
    add(store, {uri: record(uri, f"e-{uri}") for uri in URIS})

    streamed = list(store.iter_manifest("b", "s3://b/a/"))

    expected = sorted(u for u in URIS if u.startswith("s3://b/a/"))
    assert [uri for uri, _ in streamed] == expected
    assert dict(streamed) == {u: Indexed(f"e-{u}", 1, "", 1000) for u in expected}
    assert store.manifest("b", "s3://b/a/") == dict(streamed)
    assert [u for u, _ in store.iter_manifest("b", "s3://b/a/n0")] == [
        f"s3://b/a/n0{i}.jpg" for i in range(10)]


def test_manifest_is_complete_under_concurrent_deletes(settings, store, small_pages):
    uris = [f"s3://b/p/{i:02d}.jpg" for i in range(20)]
    add(store, {uri: record(uri) for uri in uris})
    other = open_store(settings)  # another writer (its own connection or client)
    gone = {uris[0], uris[1], uris[10], uris[11], uris[19]}

    stream = store.iter_manifest("b", "s3://b/p/")
    seen = [next(stream)[0], next(stream)[0], next(stream)[0], next(stream)[0]]
    other.delete(sorted(gone))
    seen += [uri for uri, _ in stream]
    other.close()

    assert len(seen) == len(set(seen))
    assert set(uris) - gone <= set(seen)  # every record that stayed is read, once


DAY = datetime(2024, 6, 1, tzinfo=UTC)


@pytest.fixture
def filter_corpus(store) -> VectorStore:
    metas = {}
    for i in range(60):  # 60 records spread over the space: the filters pick a few
        folder = "cat/shoes/" if i % 20 == 3 else "cat/hats/" if i % 2 else "dogs/"
        uri = f"s3://{'b' if i % 3 else 'c'}/{folder}{i:02d}.jpg"
        metas[uri] = record(uri, width=100 + i, fmt="PNG" if i % 4 == 0 else "JPEG",
                            modified=DAY.replace(day=1 + i % 28))
    add(store, metas, [[math.cos(i / 7), math.sin(i / 7), *([0.1] * (DIM - 2))]
                       for i in range(60)])
    return store


@pytest.mark.parametrize(("filters", "where", "expected"), [
    (QueryFilters(prefix="cat/shoes/"), None, [3, 23, 43]),
    (QueryFilters(prefix="cat/"), {"width": {"$gte": 150}}, [51, 53, 55, 57, 59]),
    (QueryFilters(bucket="c", modified_after=DAY.replace(day=26)), None, [27, 54]),
    (QueryFilters(min_width=155), {"format": "PNG"}, [56]),
    (QueryFilters(), {"$or": [
        {"key": "dogs/00.jpg"}, {"etag": {"$in": ["nope"]}},
        {"$and": [{"format": {"$ne": "JPEG"}}, {"width": {"$lt": 105}}]}]}, [0, 4]),
    (QueryFilters(prefix="dogs/"), {"source_uri": {"$in": ["s3://b/dogs/02.jpg",
                                                           "s3://c/cat/hats/03.jpg"]}}, [2]),
])
def test_filters_are_exact_inside_the_nearest_neighbour_search(
        filter_corpus, filters, where, expected):
    clause = combine_where(where, *filters.conditions())

    hits = filter_corpus.query([1.0, 0.0, *([0.1] * (DIM - 2))], k=len(expected), where=clause)
    scanned = list(filter_corpus.iter_metadata(clause))

    assert sorted(int(h.id[-6:-4]) for h in hits) == expected
    assert sorted(int(uri[-6:-4]) for uri, _ in scanned) == expected
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)


def test_opening_for_another_vector_space_is_refused(settings, store):
    with pytest.raises(StoreError, match=r"dim 256, not amazon\.titan-embed-image-v1 dim 1024"):
        open_store(settings.model_copy(update={"dim": 1024}))


def test_opening_a_missing_collection_without_create_is_refused(settings, store):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(settings.model_copy(update={"collection": "other_images"}), create=False)


def test_k_stays_exact_within_a_filter_that_the_nearest_records_all_fail(store):
    """An approximate index that filters after its search would find none of these."""
    metas = {f"s3://b/near/{i:03d}.jpg": record(f"s3://b/near/{i:03d}.jpg") for i in range(400)}
    metas |= {f"s3://b/rare/{i}.jpg": record(f"s3://b/rare/{i}.jpg") for i in range(4)}
    add(store, metas, [[1.0, i / 400, *([0.0] * (DIM - 2))] for i in range(400)]
        + [[-1.0, i / 4, *([0.0] * (DIM - 2))] for i in range(4)])

    hits = store.query(axis(0), k=3, where=QueryFilters(prefix="rare/").conditions()[0])

    assert [h.id for h in hits] == [f"s3://b/rare/{i}.jpg" for i in (3, 2, 1)]


def test_metadata_updates_merge_fields_and_show_in_the_manifest(store):
    when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    add(store, {"s3://b/x.jpg": record("s3://b/x.jpg", "ex"), "s3://b/y.jpg": record("s3://b/y.jpg")})

    store.update_metadata(["s3://b/x.jpg", "s3://b/gone.jpg"],
                          [{"size": 7, "last_modified": when.isoformat(), "note": "n"}] * 2)

    got = store.get(["s3://b/x.jpg", "s3://b/gone.jpg"])
    assert list(got) == ["s3://b/x.jpg"]
    assert {k: got["s3://b/x.jpg"][k] for k in ("etag", "size", "last_modified", "note",
                                                 "format")} == {
        "etag": "ex", "size": 7, "last_modified": when.isoformat(), "note": "n",
        "format": "JPEG"}
    assert store.manifest("b", "s3://b/") == {
        "s3://b/x.jpg": Indexed("ex", 1, when.isoformat(), 7),
        "s3://b/y.jpg": Indexed("e", 1, "", 1000)}
    assert store.get_embedding("s3://b/x.jpg") == pytest.approx(axis(0))


def test_the_last_ingest_summary_is_kept_with_the_collection(settings, store):
    assert store.last_ingest() is None

    store.record_last_ingest({"run_id": "r1", "embedded": 3, "warnings": ["w"]})

    reopened = open_store(settings)
    assert reopened.last_ingest() == {"run_id": "r1", "embedded": 3, "warnings": ["w"]}
    reopened.close()


def frame(video: str, t: float, etag: str = "v1", frames: int = 3) -> tuple[str, dict]:
    """A video frame's record as ingest writes it (``imgrag.video_records``)."""
    return f"{video}#t={t:g}", {**record(video, etag), "media": "video", "frame_t": t,
                                "video_frames": frames}


def test_a_videos_frames_are_one_manifest_entry_and_go_together(store, small_pages):
    video, other = "s3://b/v/clip.mp4", "s3://b/v/half.mp4"
    frames = dict([frame(video, t) for t in (0, 1.5, 3)] + [frame(other, t) for t in (0, 2)])
    add(store, {**frames, "s3://b/v/a.jpg": record("s3://b/v/a.jpg"),
                "s3://b/v/clip.mp4 x.jpg": record("s3://b/v/clip.mp4 x.jpg")})

    streamed = list(store.iter_manifest("b", "s3://b/v/"))

    assert [uri for uri, _ in streamed] == [
        "s3://b/v/a.jpg", video, "s3://b/v/clip.mp4 x.jpg", other]
    entries = dict(streamed)
    assert entries[video] == Indexed("v1", 1, "", 1000)
    assert entries[other].etag == ""  # 2 of its 3 frames: incomplete, to be done again
    assert store.source_ids([video, "s3://b/v/a.jpg", "s3://b/none.jpg"]) == {
        video: [f"{video}#t=0", f"{video}#t=1.5", f"{video}#t=3"],
        "s3://b/v/a.jpg": ["s3://b/v/a.jpg"]}

    new_id, new_meta = frame(video, 9, "v2", frames=1)
    assert store.replace_source(video, [new_id], [axis(5)], [new_meta]) == 3
    assert store.source_ids([video]) == {video: [new_id]}
    store.delete_sources([video, other])
    assert sorted(store.manifest("b", "s3://b/v/")) == [
        "s3://b/v/a.jpg", "s3://b/v/clip.mp4 x.jpg"]


def test_ocr_texts_are_kept_matched_by_whole_words_and_replaced(store):
    from imgrag.hybrid import terms_pattern

    metas = {f"s3://b/t/{i}.jpg": record(f"s3://b/t/{i}.jpg") for i in range(3)}
    add(store, metas)
    assert not store.has_texts()
    metas["s3://b/t/0.jpg"] |= {"ocr_version": 1}
    store.upsert(["s3://b/t/0.jpg"], [axis(0)], [metas["s3://b/t/0.jpg"]],
                 documents=["INVOICE 2024 for Invoices"])
    store.set_texts(["s3://b/t/1.jpg", "s3://b/gone.jpg"], ["an invoice", "x"],
                    [{"ocr_version": 1}] * 2)
    store.upsert(["s3://b/t/0.jpg"], [axis(0)], [metas["s3://b/t/0.jpg"]])  # text kept

    found = store.text_matches(terms_pattern(["invoice"]), 10)
    narrowed = store.text_matches(terms_pattern(["invoice"]), 10, {"key": "t/1.jpg"})

    assert sorted((rid, text) for rid, text, _, _ in found) == [
        ("s3://b/t/0.jpg", "INVOICE 2024 for Invoices"), ("s3://b/t/1.jpg", "an invoice")]
    assert [rid for rid, *_ in narrowed] == ["s3://b/t/1.jpg"]
    assert store.text_matches(terms_pattern(["voice"]), 10) == []  # whole words only
    assert store.has_texts()
    assert store.manifest("b", "s3://b/t/")["s3://b/t/1.jpg"].ocr_version == 1
    assert store.get_embedding("s3://b/t/1.jpg") == pytest.approx(axis(1))
