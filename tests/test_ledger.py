"""The failure ledger: consistent reads while batches write, and swept like the store."""

from __future__ import annotations

import threading

import pytest

from flows.ingest_flow import ingest_flow
from imgrag.ledger import FailureLedger
from imgrag.pipeline import LEDGER_NAME
from imgrag.records import Failure, SourceObject
from imgrag.sync import ScopePlanner, in_shard
from tests.conftest import COLOURS, image_bytes


def failure(uri: str) -> Failure:
    return Failure(id=uri, etag="e", stage="normalize", reason="not an image", permanent=True)


def test_reads_never_see_half_of_a_batch_being_recorded(tmp_path):
    ledger = FailureLedger(tmp_path / "ledger.sqlite3", "images")
    batch = [failure(f"s3://b/{i}.jpg") for i in range(200)]
    seen: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(40):
                ledger.record(batch, "run")
                ledger.forget([f.id for f in batch])
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        try:
            for _ in range(150):
                seen.append(len(ledger.known("s3://b/")))
                seen.append(len(ledger.entries("s3://b/")))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    ledger.close()

    assert errors == []
    assert set(seen) <= {0, 200}


def test_planner_sweeps_ledger_entries_the_listing_did_not_contain_within_its_shard():
    known = {f"s3://b/{i}.jpg": "e" for i in range(40)}
    listed = [SourceObject(uri=u, bucket="b", key=u[7:], etag="e", size=1)
              for u in list(known)[:10]]
    planner = ScopePlanner("s3://b/", {}, known, shard=(0, 2))
    assert list(planner.todo(listed)) == []

    gone = planner.failures_gone()

    listed_uris = {o.uri for o in listed}
    expected = sorted(u for u in known if in_shard(u, (0, 2)) and u not in listed_uris)
    assert gone == expected and 0 < len(expected) < 30
    assert planner.failures_gone(["s3://b/"]) == []  # nothing under unreadable paths


@pytest.mark.usefixtures("prefect_harness")
def test_ingest_forgets_the_failure_of_an_object_deleted_from_the_source(
    tmp_path, bedrock, store_env
):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "red.png").write_bytes(image_bytes(COLOURS["red"], fmt="PNG"))
    (folder / "broken.jpg").write_bytes(b"<html>not a jpeg</html>")
    assert ingest_flow(source=str(folder)).failed == 1
    ledger = FailureLedger(store_env / LEDGER_NAME, "images")
    assert [f.id for f in ledger.entries()] == [(folder / "broken.jpg").resolve().as_uri()]

    (folder / "broken.jpg").unlink()
    report = ingest_flow(source=str(folder))

    assert (report.deleted, report.unchanged) == (0, 1)
    assert ledger.entries() == []
    ledger.close()
