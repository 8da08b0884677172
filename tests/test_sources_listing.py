"""Source listings: each pass counts for itself, even when passes of one source overlap."""

from __future__ import annotations

import threading

from imgrag.sources import LocalSource, S3Source
from tests.conftest import COLOURS, image_bytes

NAMES = ["a.txt", "b.png", "c.txt", "d.png", "e.png"]  # listed in this order


def test_overlapping_local_listings_count_their_own_ignored_keys(tmp_path):
    for i, name in enumerate(NAMES):
        (tmp_path / name).write_bytes(image_bytes(COLOURS["red"], fmt="PNG", seed=i))
    source = LocalSource(tmp_path)

    first = source.list_objects()
    head = next(iter(first))  # paused after a.txt (ignored) and b.png
    second = source.list_objects()
    assert [o.key for o in second] == ["b.png", "d.png", "e.png"]
    rest = [o.key for o in first]

    assert [head.key, *rest] == ["b.png", "d.png", "e.png"]
    assert (first.ignored, second.ignored) == (2, 2)


def test_overlapping_s3_listings_count_their_own_ignored_keys(s3, bucket):
    for i, name in enumerate(NAMES):
        s3.put_object(Bucket=bucket, Key=name, Body=image_bytes(COLOURS["red"], seed=i))
    source = S3Source(bucket, "", s3)

    first = source.list_objects()
    next(iter(first))
    second = source.list_objects()
    assert len(list(second)) == 3
    assert len(list(first)) == 2

    assert (first.ignored, second.ignored) == (2, 2)


def test_concurrent_local_listings_share_the_hash_cache_safely(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(300):
        (folder / f"{i:03d}.png").write_bytes(image_bytes(COLOURS["blue"], fmt="PNG", seed=i))
    source = LocalSource(folder, hash_cache_path=tmp_path / "hashes.sqlite3")
    expected = {o.key: o.etag for o in LocalSource(folder).list_objects()}
    results: list[dict[str, str] | BaseException] = []

    def list_all() -> None:
        try:
            results.append({o.key: o.etag for o in source.list_objects()})
        except BaseException as exc:  # reported below, not lost in the thread
            results.append(exc)

    threads = [threading.Thread(target=list_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert results == [expected] * 4
