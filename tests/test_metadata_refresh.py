"""The same bytes uploaded again (same ETag, new LastModified): metadata refreshed, no embedding."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from flows.ingest_flow import ingest_flow
from imgrag.filters import QueryFilters
from imgrag.normalize import NORMALIZE_VERSION
from imgrag.query import SearchRequest, run_search
from imgrag.records import Indexed, SourceObject
from imgrag.settings import Settings
from imgrag.sync import ScopePlanner
from tests.conftest import COLOURS, image_bytes
from tests.test_ingest_flow import stored

OLD = datetime(2024, 1, 1, tzinfo=UTC)
NEW = datetime(2030, 1, 1, tzinfo=UTC)


def listed(key: str, when: datetime, size: int = 10) -> SourceObject:
    return SourceObject(uri=f"s3://b/{key}", bucket="b", key=key, etag="e", size=size,
                        last_modified=when)


def test_planner_collects_unchanged_records_whose_listing_facts_moved():
    manifest = {f"s3://b/{k}": Indexed("e", NORMALIZE_VERSION, OLD.isoformat(), 10)
                for k in ("same", "touched", "resized")}
    planner = ScopePlanner("s3://b/", manifest)

    todo = list(planner.todo([listed("same", OLD), listed("touched", NEW),
                              listed("resized", OLD, size=11)]))

    assert todo == []
    assert planner.plan.unchanged == 3
    assert [o.key for o in planner.refreshed] == ["touched", "resized"]


@pytest.mark.usefixtures("prefect_harness")
def test_reupload_of_the_same_bytes_refreshes_last_modified_without_embedding(
        tmp_path, bedrock, store_env):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, rgb in COLOURS.items():
        path = folder / f"{name}.png"
        path.write_bytes(image_bytes(rgb, fmt="PNG"))
        os.utime(path, (OLD.timestamp(), OLD.timestamp()))
    ingest_flow(source=str(folder))
    red = folder / "red.png"
    os.utime(red, (NEW.timestamp(), NEW.timestamp()))  # same bytes, written again
    bedrock.reset_stats()

    report = ingest_flow(source=str(folder))

    assert (report.unchanged, report.refreshed, report.embedded) == (4, 1, 0)
    assert bedrock.stats.requests == 0
    meta = stored(store_env)[red.as_uri()]
    assert (meta["last_modified"], meta["last_modified_ts"]) == (NEW.isoformat(),
                                                                  NEW.timestamp())
    recent = run_search(Settings(), SearchRequest(text="red", k=4, filters=QueryFilters(
        modified_after=datetime(2029, 1, 1, tzinfo=UTC))))
    assert [h.id for h in recent] == [red.as_uri()]

    assert ingest_flow(source=str(folder)).refreshed == 0  # nothing moved: nothing written
