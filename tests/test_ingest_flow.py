"""End-to-end ingest and query through the real flows: moto S3, Titan emulator, Chroma."""

from __future__ import annotations

import json
from pathlib import Path

import chromadb
import pytest

from flows.ingest_flow import ingest_flow
from flows.query_flow import query_flow
from imgrag.store import LAST_INGEST_KEY
from tests.conftest import COLOURS, image_bytes

pytestmark = pytest.mark.usefixtures("prefect_harness")


def put_colours(s3, bucket: str, prefix: str = "", seed: int = 0) -> dict[str, str]:
    """One image per colour under ``prefix``; returns colour → key."""
    keys = {}
    for i, (name, rgb) in enumerate(COLOURS.items()):
        key = f"{prefix}{name}.jpg"
        s3.put_object(Bucket=bucket, Key=key, Body=image_bytes(rgb, seed=seed + i))
        keys[name] = key
    return keys


def stored(chroma_path: Path) -> dict[str, dict]:
    """id → metadata of everything in the default collection, read with a fresh client."""
    client = chromadb.PersistentClient(path=str(chroma_path))
    page = client.get_collection("images", embedding_function=None).get(include=["metadatas"])
    return dict(zip(page["ids"], page["metadatas"], strict=True))


def test_first_ingest_indexes_images_and_ignores_other_keys(s3, bucket, bedrock, store_env):
    put_colours(s3, bucket)
    s3.put_object(Bucket=bucket, Key="notes.txt", Body=b"not an image")
    s3.put_object(Bucket=bucket, Key="folder/", Body=b"")

    report = ingest_flow(source=f"s3://{bucket}/")

    assert (report.listed, report.new, report.embedded, report.failed) == (4, 4, 4, 0)
    assert report.ignored == 2
    assert bedrock.stats.image_calls == 4
    records = stored(store_env)
    assert set(records) == {f"s3://{bucket}/{c}.jpg" for c in COLOURS}
    meta = records[f"s3://{bucket}/red.jpg"]
    head = s3.head_object(Bucket=bucket, Key="red.jpg")
    assert meta["etag"] == head["ETag"]
    assert meta["size"] == head["ContentLength"]
    assert (meta["bucket"], meta["key"]) == (bucket, "red.jpg")
    assert (meta["width"], meta["height"]) == (64, 48)
    assert (meta["model_id"], meta["dim"]) == ("amazon.titan-embed-image-v1", 1024)
    for field in ("source_uri", "last_modified", "normalize_version", "ingested_at", "run_id"):
        assert meta[field] not in ("", None), field
    client = chromadb.PersistentClient(path=str(store_env))
    summary = json.loads(client.get_collection("images").metadata[LAST_INGEST_KEY])
    assert (summary["run_id"], summary["embedded"], summary["listed"]) == (report.run_id, 4, 4)
    assert "failures" not in summary and summary["finished_at"].endswith("+00:00")


def test_rerun_with_nothing_changed_downloads_nothing_and_calls_bedrock_zero_times(
    s3, bucket, bedrock, store_env, s3_requests
):
    put_colours(s3, bucket)
    ingest_flow(source=f"s3://{bucket}/")
    assert s3_requests.object_gets(bucket) == 4
    bedrock.reset_stats()
    s3_requests.lines.clear()

    report = ingest_flow(source=f"s3://{bucket}/")

    assert (report.unchanged, report.new, report.changed, report.deleted) == (4, 0, 0, 0)
    assert report.embedded == 0
    assert bedrock.stats.requests == 0
    assert s3_requests.object_gets(bucket) == 0


def test_changed_etag_is_reembedded_and_deleted_object_is_removed(s3, bucket, bedrock, store_env):
    keys = put_colours(s3, bucket)
    ingest_flow(source=f"s3://{bucket}/")
    s3.put_object(Bucket=bucket, Key=keys["red"], Body=image_bytes(COLOURS["blue"], seed=99))
    s3.delete_object(Bucket=bucket, Key=keys["green"])
    bedrock.reset_stats()

    report = ingest_flow(source=f"s3://{bucket}/")

    assert (report.changed, report.deleted, report.unchanged, report.new) == (1, 1, 2, 0)
    assert bedrock.stats.image_calls == 1
    records = stored(store_env)
    assert f"s3://{bucket}/green.jpg" not in records
    red = records[f"s3://{bucket}/red.jpg"]
    assert red["etag"] == s3.head_object(Bucket=bucket, Key=keys["red"])["ETag"]
    hits = query_flow("blue", k=2)
    assert {h.id for h in hits} == {f"s3://{bucket}/red.jpg", f"s3://{bucket}/blue.jpg"}


def test_run_over_one_prefix_leaves_other_prefixes_alone(s3, bucket, bedrock, store_env):
    put_colours(s3, bucket, prefix="a/")
    put_colours(s3, bucket, prefix="b/", seed=10)
    ingest_flow(source=f"s3://{bucket}/a/")
    ingest_flow(source=f"s3://{bucket}/b/")
    for colour in COLOURS:
        s3.delete_object(Bucket=bucket, Key=f"a/{colour}.jpg")

    report = ingest_flow(source=f"s3://{bucket}/a/", allow_mass_delete=True)  # all of a/ gone

    assert report.deleted == 4
    assert sorted(stored(store_env)) == sorted(f"s3://{bucket}/b/{c}.jpg" for c in COLOURS)


def test_local_folder_source_uses_content_hash_and_detects_changes(tmp_path, bedrock, store_env):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, (name, rgb) in enumerate(COLOURS.items()):
        (folder / "sub" / f"{name}.png").write_bytes(image_bytes(rgb, fmt="PNG", seed=i))
    (folder / "readme.md").write_text("not an image")

    first = ingest_flow(source=str(folder))
    assert (first.new, first.embedded, first.ignored) == (4, 4, 1)
    uri = (folder / "sub" / "red.png").as_uri()
    assert stored(store_env)[uri]["key"] == "sub/red.png"

    (folder / "sub" / "red.png").write_bytes(image_bytes(COLOURS["green"], fmt="PNG", seed=50))
    (folder / "sub" / "blue.png").unlink()
    bedrock.reset_stats()
    second = ingest_flow(source=str(folder))

    assert (second.changed, second.deleted, second.unchanged) == (1, 1, 2)
    assert bedrock.stats.image_calls == 1
    assert query_flow("green", k=1)[0].id in {uri, (folder / "sub" / "green.png").as_uri()}


def test_query_ranks_matching_colour_first_and_filters_by_metadata(s3, bucket, bedrock, store_env):
    put_colours(s3, bucket, prefix="x/")
    ingest_flow(source=f"s3://{bucket}/x/")

    for colour in COLOURS:
        assert query_flow(f"a {colour} object", k=4)[0].id == f"s3://{bucket}/x/{colour}.jpg"
    hits = query_flow("red", k=8, where={"key": "x/blue.jpg"})
    assert [h.id for h in hits] == [f"s3://{bucket}/x/blue.jpg"]
    assert hits[0].distance > 0


def test_permanent_failure_is_reported_and_not_retried_until_etag_changes(
    s3, bucket, bedrock, store_env
):
    put_colours(s3, bucket)
    s3.put_object(Bucket=bucket, Key="broken.jpg", Body=b"<html>not a jpeg</html>")

    first = ingest_flow(source=f"s3://{bucket}/")
    assert (first.embedded, first.failed) == (4, 1)
    failure = first.failures[0]
    assert (failure.id, failure.stage, failure.permanent) == (
        f"s3://{bucket}/broken.jpg", "normalize", True)

    second = ingest_flow(source=f"s3://{bucket}/")
    assert (second.skipped, second.failed, second.new) == (1, 0, 0)

    retried = ingest_flow(source=f"s3://{bucket}/", retry_failed=True)
    assert (retried.new, retried.failed) == (1, 1)

    s3.put_object(Bucket=bucket, Key="broken.jpg", Body=image_bytes(COLOURS["red"], seed=7))
    fixed = ingest_flow(source=f"s3://{bucket}/")
    assert (fixed.new, fixed.embedded, fixed.failed, fixed.skipped) == (1, 1, 0, 0)
