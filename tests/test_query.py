"""Search through the library: filters, distance cut, query by example, text-vector cache."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from imgrag.errors import ConfigError
from imgrag.filters import QueryFilters, key_dirs, parse_date
from imgrag.query import SearchRequest, run_search
from imgrag.text_cache import TextEmbeddingCache
from tests.conftest import COLOURS, image_bytes
from tests.retrieval import CATALOG, NEW, Catalog


def keys(catalog: Catalog, hits) -> list[str]:
    return [h.metadata["key"] for h in hits]


def search(catalog: Catalog, **fields) -> list:
    fields.setdefault("k", len(CATALOG))
    return run_search(catalog.settings, SearchRequest(**fields))


def test_text_query_ranks_the_matching_colour_first(catalog):
    hits = search(catalog, text="something red", k=3)
    assert {h.metadata["key"] for h in hits} == {
        "catalog/red-shirt.jpg", "catalog/red-mug.png", "catalog/shoes/red-sneaker.jpg"}
    assert [h.rank for h in hits] == [1, 2, 3]


def test_folder_prefix_keeps_only_that_folder_and_top_k_stays_full(catalog):
    hits = search(catalog, text="green", k=2, filters=QueryFilters(prefix="catalog/shoes/"))
    assert sorted(keys(catalog, hits)) == ["catalog/shoes/green-sneaker.jpg",
                                           "catalog/shoes/red-sneaker.jpg"]
    assert keys(catalog, hits)[0] == "catalog/shoes/green-sneaker.jpg"


def test_prefix_ending_inside_a_name_matches_like_an_s3_prefix(catalog):
    hits = search(catalog, text="blue", filters=QueryFilters(prefix="catalog/red-"))
    assert sorted(keys(catalog, hits)) == ["catalog/red-mug.png", "catalog/red-shirt.jpg"]
    assert search(catalog, text="blue", filters=QueryFilters(prefix="catalog/zzz")) == []


def test_min_width_and_modified_after_filters(catalog):
    wide = search(catalog, text="red", filters=QueryFilters(min_width=200))
    assert all(CATALOG[k][1][0] >= 200 for k in keys(catalog, wide))
    assert len(wide) == sum(1 for v in CATALOG.values() if v[1][0] >= 200)

    recent = search(catalog, text="red", filters=QueryFilters(modified_after=parse_date(
        "2024-01-01")))
    assert sorted(keys(catalog, recent)) == sorted(k for k, v in CATALOG.items() if v[3] == NEW)


def test_filters_combine_with_and_and_with_a_raw_where(catalog):
    filters = QueryFilters(prefix="catalog/", min_width=200, modified_after=NEW)
    hits = search(catalog, text="red", filters=filters, where={"format": "JPEG"})
    assert sorted(keys(catalog, hits)) == ["catalog/red-shirt.jpg",
                                           "catalog/shoes/red-sneaker.jpg"]
    bucket = search(catalog, text="red", filters=QueryFilters(bucket="some-bucket"))
    assert bucket == []  # local records have bucket ""


def test_max_distance_cuts_weak_hits(catalog):
    everything = search(catalog, text="red")
    cut = (everything[2].distance + everything[3].distance) / 2
    hits = search(catalog, text="red", max_distance=cut)
    assert [h.id for h in hits] == [h.id for h in everything[:3]]
    assert all(h.distance <= cut for h in hits)


def test_image_query_of_an_indexed_file_uses_its_stored_vector(catalog):
    before = catalog.bedrock.stats.requests
    hits = search(catalog, image=str(catalog.path("catalog/red-shirt.jpg")), k=3)
    assert hits[0].id == catalog.uri("catalog/red-shirt.jpg")
    assert hits[0].distance == pytest.approx(0.0, abs=1e-4)
    assert catalog.bedrock.stats.requests == before  # no embedding call


def test_exclude_self_drops_the_example_and_still_returns_k(catalog):
    ref = str(catalog.path("catalog/red-shirt.jpg"))
    hits = search(catalog, image=ref, k=2, exclude_self=True)
    assert catalog.uri("catalog/red-shirt.jpg") not in [h.id for h in hits]
    assert len(hits) == 2 and [h.rank for h in hits] == [1, 2]
    assert {h.metadata["key"] for h in hits} == {"catalog/red-mug.png",
                                                 "catalog/shoes/red-sneaker.jpg"}


def test_image_query_of_a_new_file_is_normalized_and_embedded(catalog, tmp_path):
    example = tmp_path / "query.png"  # PNG, larger than any indexed image
    example.write_bytes(image_bytes(COLOURS["green"], size=(900, 700), fmt="PNG"))
    before = catalog.bedrock.stats.image_calls
    hits = search(catalog, image=str(example), k=1)
    assert hits[0].metadata["key"] == "catalog/shoes/green-sneaker.jpg"
    assert catalog.bedrock.stats.image_calls == before + 1


def test_image_query_errors_are_one_line_config_errors(catalog, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        search(catalog, image=str(tmp_path / "missing.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"<html>not an image</html>")
    with pytest.raises(ConfigError, match="not usable"):
        search(catalog, image=str(broken))


def test_repeated_text_query_does_not_call_bedrock_again(catalog):
    text = "a yellow thing, asked twice"
    first = search(catalog, text=text)
    calls = catalog.bedrock.stats.text_calls
    second = search(catalog, text=text)
    assert catalog.bedrock.stats.text_calls == calls
    assert [(h.id, h.distance) for h in second] == [(h.id, h.distance) for h in first]
    search(catalog, text=text + "!")
    assert catalog.bedrock.stats.text_calls == calls + 1


def test_text_cache_keys_on_model_dim_and_exact_text(tmp_path):
    cache = TextEmbeddingCache(tmp_path / "cache.sqlite3")
    cache.put("model-a", 3, "red", [0.1, 0.2, 0.3])
    assert cache.get("model-a", 3, "red") == [0.1, 0.2, 0.3]
    assert cache.get("model-b", 3, "red") is None
    assert cache.get("model-a", 256, "red") is None
    assert cache.get("model-a", 3, "Red") is None
    reopened = TextEmbeddingCache(tmp_path / "cache.sqlite3")
    assert reopened.get("model-a", 3, "red") == [0.1, 0.2, 0.3]


def test_text_cache_keeps_only_the_most_recently_used(tmp_path):
    cache = TextEmbeddingCache(tmp_path / "cache.sqlite3", max_entries=2)
    cache.put("m", 1, "a", [1.0])
    cache.put("m", 1, "b", [2.0])
    assert cache.get("m", 1, "a") == [1.0]  # a is now more recent than b
    cache.put("m", 1, "c", [3.0])
    assert cache.count() == 2
    assert cache.get("m", 1, "b") is None and cache.get("m", 1, "a") == [1.0]


def test_an_unwritable_cache_only_disables_caching(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cache = TextEmbeddingCache(blocker / "cache.sqlite3")
    cache.put("m", 1, "a", [1.0])
    assert cache.get("m", 1, "a") is None


def test_request_needs_a_text_or_an_image_or_both():
    assert SearchRequest(text="at night", image="x.jpg").label == "at night + image x.jpg"
    with pytest.raises(ValueError, match="a query text, an example image, or both"):
        SearchRequest()
    with pytest.raises(ValueError, match="empty"):
        SearchRequest(text="   ")
    with pytest.raises(ValueError, match="only negative terms"):
        SearchRequest(text="-people")


def test_key_dirs_and_dates():
    assert key_dirs("a/b/c.jpg") == ["a/", "a/b/"]
    assert key_dirs("c.jpg") == []
    assert parse_date("2024-06-01") == datetime(2024, 6, 1, tzinfo=UTC)
    assert parse_date("2024-06-01T12:00:00+02:00").hour == 12
    with pytest.raises(ConfigError, match="invalid date"):
        parse_date("yesterday")


def test_image_query_by_s3_uri_downloads_and_embeds_the_object(catalog, s3, bucket):
    s3.put_object(Bucket=bucket, Key="examples/green.png",
                  Body=image_bytes(COLOURS["green"], size=(300, 200), fmt="PNG"))
    before = catalog.bedrock.stats.image_calls
    hits = search(catalog, image=f"s3://{bucket}/examples/green.png", k=1)
    assert hits[0].metadata["key"] == "catalog/shoes/green-sneaker.jpg"
    assert catalog.bedrock.stats.image_calls == before + 1
    with pytest.raises(ConfigError, match=r"cannot read .*: no such object"):
        search(catalog, image=f"s3://{bucket}/examples/missing.png")
    with pytest.raises(ConfigError, match="names a prefix"):
        search(catalog, image=f"s3://{bucket}/examples/")
