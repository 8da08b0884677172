"""Stale vectors: a changed object whose new bytes fail permanently stops serving its old
vector; a record normalized by an older ``normalize_version`` is embedded again."""

from __future__ import annotations

import pytest

from flows.ingest_flow import ingest_flow
from imgrag.normalize import NORMALIZE_VERSION
from imgrag.records import Indexed, SourceObject
from imgrag.settings import Settings
from imgrag.store import ImageStore
from imgrag.sync import ScopePlanner
from tests.conftest import COLOURS, image_bytes

pytestmark = pytest.mark.usefixtures("prefect_harness")


def stored_etags(bucket: str) -> dict[str, str]:
    store = ImageStore.open(Settings(), create=False)
    return {uri: str(meta["etag"]) for uri, meta in store.iter_metadata({"bucket": bucket})}


def test_changed_object_that_fails_permanently_loses_its_old_record(s3, bucket, bedrock,
                                                                    store_env):
    for name in ("red", "blue"):
        s3.put_object(Bucket=bucket, Key=f"{name}.jpg", Body=image_bytes(COLOURS[name]))
    ingest_flow(source=f"s3://{bucket}/")
    s3.put_object(Bucket=bucket, Key="red.jpg", Body=b"<html>not a jpeg any more</html>")

    report = ingest_flow(source=f"s3://{bucket}/")

    assert (report.changed, report.failed, report.stale_removed) == (1, 1, 1)
    assert list(stored_etags(bucket)) == [f"s3://{bucket}/blue.jpg"]
    again = ingest_flow(source=f"s3://{bucket}/")
    assert (again.skipped, again.stale_removed, again.deleted) == (1, 0, 0)


def test_changed_object_with_a_transient_failure_keeps_its_record(s3, bucket, bedrock,
                                                                  store_env, monkeypatch):
    s3.put_object(Bucket=bucket, Key="red.jpg", Body=image_bytes(COLOURS["red"]))
    ingest_flow(source=f"s3://{bucket}/")
    before = stored_etags(bucket)
    s3.put_object(Bucket=bucket, Key="red.jpg", Body=image_bytes(COLOURS["red"], seed=9))
    monkeypatch.setenv("IMGRAG_BEDROCK_MAX_ATTEMPTS", "1")
    bedrock.fail_next(1, "ServiceUnavailableException")

    report = ingest_flow(source=f"s3://{bucket}/")

    assert (report.failed, report.failures[0].permanent, report.stale_removed) == (1, False, 0)
    assert stored_etags(bucket) == before  # retried next run; meanwhile the old one serves


def test_record_from_an_older_normalize_version_is_embedded_again(s3, bucket, bedrock,
                                                                  store_env):
    for name in ("red", "blue"):
        s3.put_object(Bucket=bucket, Key=f"{name}.jpg", Body=image_bytes(COLOURS[name]))
    ingest_flow(source=f"s3://{bucket}/")
    store = ImageStore.open(Settings(), create=False)
    red = f"s3://{bucket}/red.jpg"
    store.collection.update(ids=[red], metadatas=[{"normalize_version": 0}])
    meta = store.get([red])[red]
    assert (meta["normalize_version"], meta["etag"]) == (
        0, s3.head_object(Bucket=bucket, Key="red.jpg")["ETag"])  # only the version is old
    bedrock.reset_stats()

    report = ingest_flow(source=f"s3://{bucket}/")

    assert (report.changed, report.unchanged, report.embedded) == (1, 1, 1)
    assert bedrock.stats.image_calls == 1
    assert store.get([red])[red]["normalize_version"] == NORMALIZE_VERSION


def test_planner_sweeps_a_stale_record_of_a_known_failure():
    """A record left from older bytes beside a ledger entry for the listed bytes (e.g. from
    before this fix) goes, even when the listing's deletions are withheld."""
    uri = "s3://b/x.jpg"
    others = {f"s3://b/{i}.jpg": Indexed("e", NORMALIZE_VERSION) for i in range(11)}  # gone
    manifest = {uri: Indexed("A", NORMALIZE_VERSION), **others}
    planner = ScopePlanner("s3://b/", manifest, {uri: "B"})
    listed = SourceObject(uri=uri, bucket="b", key="x.jpg", etag="B", size=1)
    assert list(planner.todo([listed])) == []

    sweep = planner.sweep(max_fraction=0.5)

    assert (planner.plan.skipped, sweep.stale, sweep.deleted, sweep.withheld) == (
        1, [uri], [], 11)
