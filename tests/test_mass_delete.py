"""A listing that looks wrong (empty, or most of a scope gone) deletes nothing unless told."""

from __future__ import annotations

import json
from pathlib import Path

import chromadb
import pytest

from flows.ingest import main as ingest_main
from flows.ingest_flow import ingest_flow
from imgrag.normalize import NORMALIZE_VERSION
from imgrag.records import Indexed, SourceObject
from imgrag.sync import MASS_DELETE_MIN_RECORDS, ScopePlanner
from tests.conftest import COLOURS, image_bytes


def planner_after_listing(indexed: int, listed: int) -> ScopePlanner:
    """A planner over ``indexed`` records of which the first ``listed`` were listed again."""
    uris = [f"s3://b/{i:03d}.jpg" for i in range(indexed)]
    planner = ScopePlanner("s3://b/", {u: Indexed("e", NORMALIZE_VERSION) for u in uris})
    objects = [SourceObject(uri=u, bucket="b", key=u[7:], etag="e", size=1) for u in uris]
    assert list(planner.todo(objects[:listed])) == []
    return planner


def test_empty_listing_withholds_every_deletion():
    sweep = planner_after_listing(3, 0).sweep(max_fraction=0.5)
    assert (sweep.deleted, sweep.withheld) == ([], 3)
    assert "found no images but 3 records are indexed" in sweep.warning


def test_deleting_more_than_the_fraction_of_a_large_scope_is_withheld():
    indexed = MASS_DELETE_MIN_RECORDS + 10  # 20
    sweep = planner_after_listing(indexed, 9).sweep(max_fraction=0.5)  # 11 of 20 gone
    assert (sweep.deleted, sweep.withheld) == ([], 11)
    assert "11 of the 20 records" in sweep.warning

    within = planner_after_listing(indexed, 10).sweep(max_fraction=0.5)  # 10 of 20
    assert (len(within.deleted), within.withheld, within.warning) == (10, 0, "")


def test_small_scopes_and_the_override_delete_normally():
    small = planner_after_listing(MASS_DELETE_MIN_RECORDS, 1).sweep(max_fraction=0.5)
    assert (len(small.deleted), small.withheld) == (MASS_DELETE_MIN_RECORDS - 1, 0)

    allowed = planner_after_listing(3, 0).sweep(max_fraction=0.5, allow_mass_delete=True)
    assert (len(allowed.deleted), allowed.withheld, allowed.warning) == (3, 0, "")


def stored_ids(chroma_path: Path) -> set[str]:
    client = chromadb.PersistentClient(path=str(chroma_path))
    return set(client.get_collection("images", embedding_function=None).get()["ids"])


def write_pngs(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:02d}.png" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(image_bytes(COLOURS["green"], fmt="PNG", seed=i))
    return paths


@pytest.mark.usefixtures("prefect_harness")
def test_empty_folder_keeps_its_records_until_the_cli_allows_it(
    tmp_path, bedrock, store_env, capsys
):
    folder = tmp_path / "mnt"
    paths = write_pngs(folder, 4)
    ingest_flow(source=str(folder))
    indexed = stored_ids(store_env)
    for path in paths:  # e.g. the mount point is there but nothing is mounted on it
        path.unlink()

    report = ingest_flow(source=str(folder))

    assert (report.deleted, report.deletions_withheld) == (0, 4)
    assert stored_ids(store_env) == indexed
    assert main_json(capsys, "--source", str(folder), "--allow-mass-delete")["deleted"] == 4
    assert stored_ids(store_env) == set()


def main_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()
    assert ingest_main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.usefixtures("prefect_harness")
def test_most_of_a_scope_gone_is_withheld_with_a_warning_line_and_exit_0(
    tmp_path, bedrock, store_env, capsys, monkeypatch
):
    folder = tmp_path / "photos"
    paths = write_pngs(folder, 12)
    ingest_flow(source=str(folder))
    for path in paths[:7]:  # 7 of 12 (58 %) gone
        path.unlink()

    capsys.readouterr()
    assert ingest_main(["--source", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "WARNING 7 of the 12 records" in out
    assert len(stored_ids(store_env)) == 12

    monkeypatch.setenv("IMGRAG_MAX_DELETE_FRACTION", "0.6")
    report = ingest_flow(source=str(folder))
    assert (report.deleted, report.deletions_withheld, report.warnings) == (7, 0, [])
    assert len(stored_ids(store_env)) == 5
