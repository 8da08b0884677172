"""Change detection: ETag diff within a scope, mark and sweep, shards."""

from __future__ import annotations

import pytest

from imgrag.errors import ConfigError
from imgrag.normalize import NORMALIZE_VERSION
from imgrag.records import Indexed, SourceObject
from imgrag.sync import ScopePlanner, in_shard, parse_shard


def obj(key: str, etag: str) -> SourceObject:
    return SourceObject(uri=f"s3://b/{key}", bucket="b", key=key, etag=etag, size=1)


def current(etag: str) -> Indexed:
    """A record embedded from ``etag`` by today's normalization."""
    return Indexed(etag, NORMALIZE_VERSION)


def test_plan_classifies_new_changed_unchanged_and_deleted():
    manifest = {f"s3://b/a/{i}.jpg": current(f"e{i}") for i in (1, 2, 3)}
    listing = [obj("a/1.jpg", "e1"), obj("a/2.jpg", "CHANGED"), obj("a/4.jpg", "e4")]

    planner = ScopePlanner("s3://b/a/", manifest)
    todo = list(planner.todo(listing))

    assert [o.key for o in todo] == ["a/2.jpg", "a/4.jpg"]
    plan = planner.plan
    assert (plan.listed, plan.new, plan.changed, plan.unchanged) == (3, 1, 1, 1)
    assert planner.deleted() == ["s3://b/a/3.jpg"]


def test_known_permanent_failure_is_skipped_only_for_the_same_etag():
    failures = {"s3://b/x.jpg": "bad", "s3://b/y.jpg": "old"}
    planner = ScopePlanner("s3://b/", {}, failures)
    todo = list(planner.todo([obj("x.jpg", "bad"), obj("y.jpg", "new")]))
    assert [o.key for o in todo] == ["y.jpg"]
    assert (planner.plan.skipped, planner.plan.new) == (1, 1)


def test_shards_partition_the_listing_and_scope_deletions():
    uris = [f"s3://b/{i}.jpg" for i in range(200)]
    shards = [{u for u in uris if in_shard(u, (i, 3))} for i in range(3)]
    assert set().union(*shards) == set(uris)
    assert sum(len(s) for s in shards) == len(uris)
    assert all(len(s) > 30 for s in shards)

    manifest = {u: current("e") for u in uris}
    planner = ScopePlanner("s3://b/", manifest, shard=(1, 3))
    assert list(planner.todo([])) == []
    assert set(planner.deleted()) == shards[1]


def test_record_from_an_older_normalize_version_is_changed_not_unchanged():
    manifest = {"s3://b/old.jpg": Indexed("e", NORMALIZE_VERSION - 1),
                "s3://b/unknown.jpg": Indexed("e", 0), "s3://b/now.jpg": current("e")}
    planner = ScopePlanner("s3://b/", manifest)

    todo = list(planner.todo([obj("now.jpg", "e"), obj("old.jpg", "e"), obj("unknown.jpg", "e")]))

    assert [o.key for o in todo] == ["old.jpg", "unknown.jpg"]
    assert (planner.plan.changed, planner.plan.unchanged, planner.plan.new) == (2, 1, 0)


@pytest.mark.parametrize("text", ["1", "a/b", "2/2", "-1/3", "0/0"])
def test_bad_shard_spec_is_a_config_error(text):
    with pytest.raises(ConfigError):
        parse_shard(text)


def test_shard_spec_parses():
    assert parse_shard("1/4") == (1, 4)
    assert parse_shard(None) is None


def sorted_manifest_stream(manifest: dict[str, Indexed], read: list[str]):
    """The manifest as a store streams it (sorted by id), noting each record read."""
    for uri in sorted(manifest):
        read.append(uri)
        yield uri, manifest[uri]


def test_a_sorted_listing_is_merged_with_the_streamed_manifest_in_one_pass():
    manifest = {f"s3://b/{i:04d}.jpg": current("e") for i in range(1000)}
    listing = [obj(f"{i:04d}.jpg", "e") for i in range(1000) if i != 500]
    read: list[str] = []
    planner = ScopePlanner("s3://b/", sorted_manifest_stream(manifest, read))

    assert list(planner.todo(iter(listing))) == []

    assert (planner.plan.listed, planner.plan.unchanged) == (999, 999)
    assert len(read) == 1000
    assert planner.deleted() == ["s3://b/0500.jpg"]


def test_the_merge_reads_the_manifest_only_as_far_as_the_listing_went():
    manifest = {f"s3://b/{i:04d}.jpg": current("e") for i in range(1000)}
    read: list[str] = []
    planner = ScopePlanner("s3://b/", sorted_manifest_stream(manifest, read))
    todo = planner.todo(obj(f"{i:04d}.jpg", "CHANGED") for i in range(1000))

    assert next(todo).key == "0000.jpg"
    assert len(read) <= 2
    assert next(todo).key == "0001.jpg"
    assert len(read) <= 3


@pytest.mark.parametrize("seed", range(5))
def test_any_listing_order_gives_the_plan_of_the_whole_manifest(seed):
    import random

    rng = random.Random(seed)
    keys = [f"{d}/{n}.jpg" for d in ("a", "a/x", "b", "é", "a b") for n in range(8)]
    manifest = {f"s3://b/{k}": current("e") for k in rng.sample(keys, 30)}
    listing = [obj(k, rng.choice(["e", "e", "other"])) for k in rng.sample(keys, 28)]
    if seed % 2:
        listing.sort(key=lambda o: o.uri)
    shard = (seed % 2, 2) if seed > 2 else None

    planners = [ScopePlanner("s3://b/", m, shard=shard)
                for m in (manifest, sorted_manifest_stream(manifest, []))]
    todos = [[o.uri for o in p.todo(listing)] for p in planners]

    expected_todo = [o.uri for o in listing if in_shard(o.uri, shard) and (
        o.uri not in manifest or o.etag != "e")]
    assert todos == [expected_todo, expected_todo]
    gone = sorted(u for u in manifest if in_shard(u, shard)
                  and u not in {o.uri for o in listing})
    assert [p.deleted() for p in planners] == [gone, gone]
    assert planners[0].plan == planners[1].plan
