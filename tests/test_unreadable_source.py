"""A listing that could not read part of a folder never deletes the records there.

chmod 000 does not stop root (CAP_DAC_OVERRIDE), and the tests run as root here: real
permission errors come from a child interpreter started by ``setpriv`` without the DAC
capabilities. The flow test makes ``os.scandir`` (the stdlib call ``os.walk`` lists a
folder with) raise PermissionError for one folder: the error a real unreadable folder
gives, at the boundary of the standard library, in the flow's own process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import chromadb
import pytest

from flows.ingest_flow import ingest_flow
from imgrag.errors import SourceError
from imgrag.normalize import NORMALIZE_VERSION
from imgrag.records import Indexed, SourceObject
from imgrag.sources import LocalSource
from imgrag.sync import ScopePlanner
from tests.conftest import COLOURS, image_bytes

DROP_DAC = "-dac_override,-dac_read_search"
CHILD = """
import json, sys
from imgrag.sources import LocalSource
listing = LocalSource(sys.argv[1]).list_objects()
print(json.dumps({"keys": [o.key for o in listing], "unreadable": listing.unreadable}))
"""


def list_without_privileges(root: Path) -> dict:
    """List ``root`` in a child interpreter for which chmod 000 really denies reads."""
    command = [sys.executable, "-c", CHILD, str(root)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: chmod cannot deny reads")
        command = [setpriv, f"--inh-caps={DROP_DAC}", f"--bounding-set={DROP_DAC}", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder outside pytest's 0700 tmp tree; permissions restored before removal."""
    path = Path(tempfile.mkdtemp(prefix="imgrag-unreadable-"))
    yield path
    for sub in path.rglob("*"):
        sub.chmod(0o755)
    shutil.rmtree(path)


def png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(COLOURS["red"], fmt="PNG", seed=seed))


def test_unreadable_folder_and_file_are_reported_not_silently_left_out(shared_dir):
    png(shared_dir / "ok" / "a.png", 1)
    png(shared_dir / "locked" / "b.png", 2)
    png(shared_dir / "secret.png", 3)
    (shared_dir / "locked").chmod(0o000)
    (shared_dir / "secret.png").chmod(0o000)

    result = list_without_privileges(shared_dir)

    assert result["keys"] == ["ok/a.png"]
    root = shared_dir.resolve()
    assert sorted(result["unreadable"]) == sorted(
        [(root / "locked").as_uri() + "/", (root / "secret.png").as_uri()])


def test_a_fifo_named_like_an_image_is_ignored_not_read(tmp_path):
    png(tmp_path / "a.png", 1)
    os.mkfifo(tmp_path / "pipe.jpg")  # reading it would block the listing forever

    listing = LocalSource(tmp_path).list_objects()

    assert [o.key for o in listing] == ["a.png"]
    assert listing.ignored == 1


def fail_scandir_of(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    real = os.scandir

    def scandir(path=None):
        if path is not None and Path(path).resolve() == folder.resolve():
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real() if path is None else real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_a_root_folder_that_cannot_be_listed_is_a_source_error(tmp_path, monkeypatch):
    png(tmp_path / "a.png", 1)
    fail_scandir_of(monkeypatch, tmp_path)

    with pytest.raises(SourceError, match="cannot list folder"):
        list(LocalSource(tmp_path).list_objects())


def test_planner_keeps_records_under_unreadable_folders_and_files():
    keys = ("a.png", "locked/b.png", "locked2.png", "secret.png", "gone.png")
    manifest = {f"file:///r/{k}": Indexed("e", NORMALIZE_VERSION) for k in keys}
    planner = ScopePlanner("file:///r/", manifest)
    listed = SourceObject(uri="file:///r/a.png", bucket="", key="a.png", etag="e", size=1)
    list(planner.todo([listed]))

    deleted = planner.deleted(["file:///r/locked/", "file:///r/secret.png"])

    assert deleted == ["file:///r/gone.png", "file:///r/locked2.png"]


@pytest.mark.usefixtures("prefect_harness")
def test_ingest_keeps_records_of_an_unreadable_subfolder(tmp_path, bedrock, store_env,
                                                         monkeypatch):
    folder = tmp_path / "photos"
    for i, key in enumerate(["top.png", "gone.png", "locked/a.png", "locked/b.png"]):
        png(folder / key, i)
    assert ingest_flow(source=str(folder)).embedded == 4
    (folder / "gone.png").unlink()
    fail_scandir_of(monkeypatch, folder / "locked")

    report = ingest_flow(source=str(folder))

    assert (report.deleted, report.unreadable, report.unchanged) == (1, 1, 1)
    assert "records under them were kept" in report.warnings[0]
    page = chromadb.PersistentClient(path=str(store_env)).get_collection(
        "images", embedding_function=None).get()
    root = folder.resolve()
    assert sorted(page["ids"]) == sorted(
        (root / key).as_uri() for key in ("top.png", "locked/a.png", "locked/b.png"))
