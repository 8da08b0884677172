"""Hostile local files: names that are not UTF-8, files too large to read, files replaced by
FIFOs or by symlinks leaving the folder. Listing never reads more than it must, readers read
only regular files inside the folder and at most size + 1 bytes, and nothing blocks."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.ingest_flow import ingest_flow
from imgrag.errors import ConfigError
from imgrag.query import read_image_ref
from imgrag.records import Hit, SourceObject
from imgrag.settings import Settings
from imgrag.sources import FetchError, LocalSource
from imgrag.sources.local import content_etag
from imgrag.store import ImageStore
from imgrag.thumbnails import ThumbnailLoader
from tests import corpus

MiB = 1024 * 1024


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``'s result or exception, failing the test if it takes over ``seconds``
    (a blocked read stays behind in a daemon thread)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as out:
        out.truncate(size)
    return path


@pytest.fixture
def fifos() -> Iterator[Callable[[Path], Path]]:
    """Makes FIFOs; afterwards opens each for writing once, so a reader stuck on one ends."""
    made: list[Path] = []

    def make(path: Path) -> Path:
        os.mkfifo(path)
        made.append(path)
        return path

    yield make
    for path in made:
        with contextlib.suppress(OSError):  # ENXIO: nobody is reading it
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "photos"
    path.mkdir()
    (path / "a.jpg").write_bytes(corpus.small_jpeg(seed=1))
    return path


def listed(source: LocalSource) -> dict[str, SourceObject]:
    return {obj.key: obj for obj in source.list_objects()}


def test_listing_hashes_in_chunks_and_leaves_files_over_the_limit_unread(folder):
    sparse(folder / "huge.jpg", 256 * MiB)
    sparse(folder / "medium.jpg", 12 * MiB)
    source = LocalSource(folder, max_object_bytes=16 * MiB)

    tracemalloc.start()
    try:
        objects = listed(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 4 * MiB  # neither file was read whole
    assert set(objects) == {"a.jpg", "huge.jpg", "medium.jpg"}
    assert objects["huge.jpg"].size == 256 * MiB
    assert objects["medium.jpg"].etag == content_etag(bytes(12 * MiB))


def test_hash_cache_keeps_what_a_crashed_listing_computed(folder, tmp_path):
    for i in range(2, 5):
        (folder / f"{chr(96 + i)}.jpg").write_bytes(corpus.small_jpeg(seed=i))
    cache = tmp_path / "hashes.sqlite3"
    crash = ("import os, sys; from imgrag.sources import LocalSource\n"
             "objects = iter(LocalSource(sys.argv[1], sys.argv[2]).list_objects())\n"
             "next(objects); next(objects); os._exit(9)")
    done = subprocess.run([sys.executable, "-c", crash, str(folder), str(cache)], timeout=60,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 9
    first_two = ["a.jpg", "b.jpg"]
    before = {name: (folder / name).stat() for name in first_two}
    for name in first_two:  # same size and mtime, other bytes: only a cache hit keeps its ETag
        path = folder / name
        path.write_bytes(path.read_bytes()[::-1])
        os.utime(path, ns=(before[name].st_atime_ns, before[name].st_mtime_ns))

    source = LocalSource(folder, cache)
    try:
        objects = listed(source)
    finally:
        source.close()

    fresh = listed(LocalSource(folder))
    assert [objects[name].etag != fresh[name].etag for name in first_two] == [True, True]


@pytest.fixture
def indexed(folder) -> tuple[LocalSource, SourceObject]:
    """The folder's source and the listed object of ``a.jpg``."""
    source = LocalSource(folder)
    return source, listed(source)["a.jpg"]


def test_fetch_refuses_a_symlink_leaving_the_folder_even_to_the_same_bytes(indexed, tmp_path):
    source, obj = indexed
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((source.root / "a.jpg").read_bytes())
    (source.root / "a.jpg").unlink()
    (source.root / "a.jpg").symlink_to(outside)

    with pytest.raises(FetchError, match="outside the folder"):
        source.fetch(obj)


def test_fetch_of_a_file_replaced_by_a_fifo_fails_at_once(indexed, fifos):
    source, obj = indexed
    (source.root / "a.jpg").unlink()
    fifos(source.root / "a.jpg")

    with pytest.raises(FetchError, match="not a regular file"):
        within(5, lambda: source.fetch(obj))


def test_fetch_reads_at_most_the_listed_size_plus_one(indexed):
    source, obj = indexed
    sparse(source.root / "a.jpg", 64 * MiB)

    tracemalloc.start()
    try:
        with pytest.raises(FetchError, match="changed since listing"):
            source.fetch(obj)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MiB


def hit_of(obj: SourceObject) -> Hit:
    return Hit(rank=1, id=obj.uri, distance=0.0, metadata=obj.model_dump(mode="json"))


def test_thumbnails_of_records_replaced_by_a_fifo_or_an_outside_symlink_are_errors(
    indexed, tmp_path, fifos
):
    source, obj = indexed
    (source.root / "b.jpg").write_bytes(corpus.small_jpeg(seed=2))
    other = listed(source)["b.jpg"]
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((source.root / "b.jpg").read_bytes())
    (source.root / "b.jpg").unlink()
    (source.root / "b.jpg").symlink_to(outside)
    (source.root / "a.jpg").unlink()
    fifos(source.root / "a.jpg")
    loader = ThumbnailLoader(Settings(state_dir=tmp_path / "state"))

    thumbs = within(10, lambda: loader.load([hit_of(obj), hit_of(other)]))

    assert [t.data for t in thumbs] == [None, None]
    assert [t.error for t in thumbs] == ["not a regular file",
                                         "file is a link leading outside the folder"]


def test_query_image_that_is_a_fifo_is_a_one_line_error(tmp_path, fifos):
    fifo = fifos(tmp_path / "query.jpg")

    with pytest.raises(ConfigError, match=r"query\.jpg"):
        within(5, lambda: read_image_ref(str(fifo), Settings()))


def stored(store_env: Path) -> dict[str, dict]:
    store = ImageStore.open(Settings(chroma_path=store_env), create=False)
    page = store.collection.get(include=["metadatas"])
    return dict(zip(page["ids"], page["metadatas"], strict=True))


@pytest.mark.usefixtures("prefect_harness")
def test_a_file_name_that_is_not_utf8_is_indexed_under_its_percent_encoded_bytes(
    folder, bedrock, store_env
):
    (folder / os.fsdecode(b"caf\xe9.jpg")).write_bytes(corpus.small_jpeg((20, 40, 220)))

    report = ingest_flow(source=str(folder))

    assert (report.embedded, report.failed) == (2, 0)
    uri = folder.resolve().as_uri() + "/caf%E9.jpg"
    records = stored(store_env)
    assert sorted(records) == sorted([uri, folder.resolve().as_uri() + "/a.jpg"])
    assert records[uri]["key"] == "caf\\xe9.jpg"  # bytes that are not UTF-8, escaped
    [thumb] = ThumbnailLoader(Settings(chroma_path=store_env)).load(
        [Hit(rank=1, id=uri, distance=0.0, metadata=records[uri])])
    assert (thumb.error, thumb.origin) == (None, "source")

    bedrock.reset_stats()
    rerun = ingest_flow(source=str(folder))
    assert (rerun.unchanged, rerun.embedded, bedrock.stats.requests) == (2, 0, 0)


@pytest.mark.usefixtures("prefect_harness")
def test_a_file_over_the_size_limit_is_a_failure_with_its_reason_and_skipped_next_time(
    folder, bedrock, store_env, monkeypatch
):
    monkeypatch.setenv("IMGRAG_MAX_OBJECT_BYTES", str(MiB))
    sparse(folder / "huge.jpg", 64 * MiB)

    report = ingest_flow(source=str(folder))

    assert (report.embedded, report.failed, bedrock.stats.image_calls) == (1, 1, 1)
    [failure] = report.failures
    assert failure.id.endswith("/huge.jpg") and failure.permanent
    assert failure.reason == f"object is {64 * MiB} bytes, above the {MiB} byte limit"
    bedrock.reset_stats()
    rerun = ingest_flow(source=str(folder))
    assert (rerun.skipped, rerun.embedded, bedrock.stats.requests) == (1, 0, 0)
