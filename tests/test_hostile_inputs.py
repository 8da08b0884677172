"""Bad and hostile input: every bad file fails with a readable reason, the run still exits 0,
every valid image of the same run is indexed, and nothing is written outside the store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import chromadb
import numpy as np
import pytest

from flows.ingest import main
from flows.ingest_flow import ingest_flow
from imgrag.embedders import TitanEmbedder
from imgrag.ledger import FailureLedger
from imgrag.normalize import normalize_image
from imgrag.notebook import download_s3_objects
from imgrag.pipeline import LEDGER_NAME
from imgrag.records import Hit, SourceObject
from imgrag.settings import Settings
from imgrag.sources import FetchError, S3Source
from imgrag.store import ImageStore
from imgrag.thumbnails import ThumbnailLoader
from tests import corpus

pytestmark = pytest.mark.usefixtures("prefect_harness")


def stored(chroma_path: Path) -> dict[str, dict]:
    """id → metadata of the default collection, read with a fresh client."""
    client = chromadb.PersistentClient(path=str(chroma_path))
    page = client.get_collection("images", embedding_function=None).get(include=["metadatas"])
    return dict(zip(page["ids"], page["metadatas"], strict=True))


def ledger(chroma_path: Path) -> dict[str, str]:
    """uri → etag of the permanent failures recorded beside the store."""
    book = FailureLedger(chroma_path / LEDGER_NAME, "images")
    try:
        return {f.id: f.etag for f in book.entries()}
    finally:
        book.close()


def upload_corpus(s3, bucket: str) -> dict[str, str]:
    """Every VALID and INVALID corpus file; returns key → ETag."""
    etags = {}
    for key, make in corpus.VALID.items():
        etags[key] = s3.put_object(Bucket=bucket, Key=key, Body=make())["ETag"]
    for key, (make, _) in corpus.INVALID.items():
        etags[key] = s3.put_object(Bucket=bucket, Key=key, Body=make())["ETag"]
    return etags


def test_corpus_run_exits_0_fails_each_bad_file_with_a_reason_and_indexes_every_valid_image(
    s3, bucket, bedrock, store_env, capsys
):
    etags = upload_corpus(s3, bucket)

    code = main(["--source", f"s3://{bucket}/", "--json", "--batch-size", "8",
                 "--concurrency", "4"])

    assert code == 0
    report = json.loads(capsys.readouterr().out)
    failures = {f["id"]: f for f in report["failures"]}
    assert set(failures) == {f"s3://{bucket}/{key}" for key in corpus.INVALID}
    for key, (_, word) in corpus.INVALID.items():
        failure = failures[f"s3://{bucket}/{key}"]
        assert word in failure["reason"], (key, failure["reason"])
        assert (failure["stage"], failure["permanent"], failure["etag"]) == (
            "normalize", True, etags[key])
    records = stored(store_env)
    assert set(records) == {f"s3://{bucket}/{key}" for key in corpus.VALID}
    assert report["embedded"] == len(corpus.VALID) == bedrock.stats.image_calls
    assert bedrock.stats.errors == 0  # Titan's limits were never hit: big images were shrunk
    for key, etag in etags.items():
        if key in corpus.VALID:
            assert records[f"s3://{bucket}/{key}"]["etag"] == etag
    rotated = records[f"s3://{bucket}/valid/exif-rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (40, 80)  # as displayed
    big = records[f"s3://{bucket}/valid/over-pixel-limit.jpg"]
    assert (big["width"], big["height"]) == (4000, 3000)
    assert ledger(store_env) == {f"s3://{bucket}/{k}": etags[k] for k in corpus.INVALID}


def test_rerun_does_not_download_or_embed_known_bad_files_until_retried_or_changed(
    s3, bucket, bedrock, store_env, s3_requests
):
    for key, (make, _) in corpus.INVALID.items():
        s3.put_object(Bucket=bucket, Key=key, Body=make())
    source = f"s3://{bucket}/"
    assert ingest_flow(source=source).failed == len(corpus.INVALID)
    s3_requests.lines.clear()
    bedrock.reset_stats()

    again = ingest_flow(source=source)
    assert (again.skipped, again.failed, again.bytes_downloaded) == (len(corpus.INVALID), 0, 0)
    assert s3_requests.object_gets(bucket) == 0
    assert bedrock.stats.requests == 0

    retried = ingest_flow(source=source, retry_failed=True)
    assert (retried.skipped, retried.failed) == (0, len(corpus.INVALID))
    assert s3_requests.object_gets(bucket) == len(corpus.INVALID)

    fixed_key = "invalid/truncated.jpg"
    s3.put_object(Bucket=bucket, Key=fixed_key, Body=corpus.small_jpeg())
    fixed = ingest_flow(source=source)
    assert (fixed.changed, fixed.embedded, fixed.skipped) == (0, 1, len(corpus.INVALID) - 1)
    assert f"s3://{bucket}/{fixed_key}" in stored(store_env)
    assert f"s3://{bucket}/{fixed_key}" not in ledger(store_env)


def test_object_above_the_download_limit_is_refused_without_being_downloaded(
    s3, bucket, bedrock, store_env, s3_requests, monkeypatch
):
    monkeypatch.setenv("IMGRAG_MAX_OBJECT_BYTES", "100000")
    s3.put_object(Bucket=bucket, Key="huge.png", Body=corpus.over_byte_limit_png())
    s3.put_object(Bucket=bucket, Key="small.jpg", Body=corpus.small_jpeg())

    report = ingest_flow(source=f"s3://{bucket}/")

    [failure] = report.failures
    assert (failure.id, failure.stage, failure.permanent) == (
        f"s3://{bucket}/huge.png", "download", True)
    assert "above the 100000 byte limit" in failure.reason
    assert report.embedded == 1
    assert s3_requests.object_gets(bucket) == 1  # only small.jpg was fetched


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_hostile_keys_are_indexed_under_their_exact_uri_and_nothing_is_written_outside_the_store(
    s3, bucket, bedrock, store_env, tmp_path, monkeypatch
):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    for i, key in enumerate(corpus.HOSTILE_KEYS):
        s3.put_object(Bucket=bucket, Key=key, Body=corpus.small_jpeg(seed=i))
    before = files_under(tmp_path)

    report = ingest_flow(source=f"s3://{bucket}/")

    assert (report.embedded, report.failed) == (len(corpus.HOSTILE_KEYS), 0)
    records = stored(store_env)
    assert set(records) == {f"s3://{bucket}/{key}" for key in corpus.HOSTILE_KEYS}
    assert {meta["key"] for meta in records.values()} == set(corpus.HOSTILE_KEYS)
    new_files = files_under(tmp_path) - before
    assert new_files and all(store_env in p.parents for p in new_files), new_files
    assert_no_key_text_on_disk(tmp_path, new_files)


def test_thumbnail_cache_and_notebook_downloads_of_hostile_keys_are_files_named_by_uri_hash(
    s3, bucket, bedrock, store_env, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    for i, key in enumerate(corpus.HOSTILE_KEYS):
        s3.put_object(Bucket=bucket, Key=key, Body=corpus.small_jpeg(seed=i))
    ingest_flow(source=f"s3://{bucket}/")
    hits = [Hit(rank=1, id=uri, distance=0.0, metadata=meta)
            for uri, meta in stored(store_env).items()]
    thumbs_dir, downloads = tmp_path / "thumbs", tmp_path / "downloads"
    before = files_under(tmp_path)

    thumbs = ThumbnailLoader(Settings(), cache_dir=thumbs_dir).load(hits)
    paths = download_s3_objects(bucket, list(corpus.HOSTILE_KEYS), downloads)

    assert [t.error for t in thumbs] == [None] * len(hits)
    assert None not in paths
    new_files = files_under(tmp_path) - before
    assert {p.parent for p in new_files} == {thumbs_dir, downloads}
    assert all(re.fullmatch(r"[0-9a-f]{32,64}\.jpg(\.json)?", p.name) for p in new_files)
    assert_no_key_text_on_disk(tmp_path, new_files)


def assert_no_key_text_on_disk(root: Path, new_files: set[Path]) -> None:
    """No file got a name from key text, and nothing escaped to the directories above."""
    names = {p.name for p in new_files}
    assert not names & {"x.jpg", "abs.jpg", "slash.jpg", "dot.jpg", "ñandú.jpg"}
    for directory in (root, root.parent, root.parent.parent):
        assert not (directory / "x.jpg").exists() and not (directory / "abs.jpg").exists()


def test_local_folder_symlink_leading_outside_the_folder_is_not_read(
    tmp_path, bedrock, store_env
):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(corpus.small_jpeg(seed=1))
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "inside.jpg").write_bytes(corpus.small_jpeg(seed=2))
    (folder / "escape.jpg").symlink_to(outside / "secret.jpg")
    (folder / "escape-dir").symlink_to(outside, target_is_directory=True)

    report = ingest_flow(source=str(folder))

    assert report.embedded == 1
    assert set(stored(store_env)) == {(folder / "inside.jpg").resolve().as_uri()}


_BOMB_PROBE = """
import resource, sys, time
from imgrag.normalize import NormalizeError, normalize_image
from tests.corpus import bomb_png
data = bomb_png()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    normalize_image(data, max_source_pixels=10**12)
    reason = "decoded"
except NormalizeError as exc:
    reason = exc.reason
elapsed = time.perf_counter() - start
grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(len(data), grown_kb, elapsed, reason, sep="\\t")
"""


def test_decompression_bomb_is_refused_before_decoding_without_allocating_memory():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _BOMB_PROBE], cwd=root, capture_output=True,
                         text=True, timeout=60, check=True, env=os.environ.copy()).stdout
    size, grown_kb, elapsed, reason = out.strip().split("\t")
    assert int(size) < 1000  # a tiny file declaring 30000×30000 RGB (2.7 GB decoded)
    assert "too large" in reason  # decoding the cut-off IDAT would have said "truncated"
    assert int(grown_kb) < 20_000  # peak memory grew by less than 20 MB
    assert float(elapsed) < 1.0


# ------------------------------------------------------- objects changed after listing


def listed(s3, bucket: str, key: str) -> SourceObject:
    source = S3Source(bucket, "", s3)
    return next(obj for obj in source.list_objects() if obj.key == key)


def test_object_overwritten_after_listing_is_not_fetched_for_the_listed_etag(s3, bucket):
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=corpus.small_jpeg(seed=1))
    obj = listed(s3, bucket, "a.jpg")
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=corpus.small_jpeg(seed=2))

    with pytest.raises(FetchError) as info:
        S3Source(bucket, "", s3).fetch(obj)
    assert (info.value.reason, info.value.permanent) == ("object changed since listing", False)


def test_response_etag_is_checked_when_a_server_ignores_if_match(s3_server, bucket, s3):
    blind = boto3.client("s3", endpoint_url=s3_server)

    def drop_if_match(request, **_: object) -> None:
        del request.headers["If-Match"]

    blind.meta.events.register("before-sign.s3.GetObject", drop_if_match)
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=corpus.small_jpeg(seed=1))
    obj = listed(s3, bucket, "a.jpg")
    new = corpus.small_jpeg(seed=2)
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=new)
    ignored = blind.get_object(Bucket=bucket, Key="a.jpg", IfMatch=obj.etag)["Body"].read()
    assert ignored == new  # this client really does get the new version despite IfMatch

    with pytest.raises(FetchError, match="changed since listing"):
        S3Source(bucket, "", blind).fetch(obj)


def test_object_deleted_after_listing_is_a_transient_failure(s3, bucket):
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=corpus.small_jpeg())
    obj = listed(s3, bucket, "a.jpg")
    s3.delete_object(Bucket=bucket, Key="a.jpg")

    with pytest.raises(FetchError) as info:
        S3Source(bucket, "", s3).fetch(obj)
    assert (info.value.reason, info.value.permanent) == ("object deleted since listing", False)


def titan_vector(bedrock_url: str, data: bytes) -> np.ndarray:
    """What the pipeline would store for ``data``: normalized, embedded by the emulator."""
    client = boto3.client("bedrock-runtime", endpoint_url=bedrock_url)
    image = normalize_image(data).data
    return np.array(TitanEmbedder(1024, client=client).embed_images([image])[0])


def test_overwrite_during_a_run_never_stores_a_record_whose_etag_and_vector_disagree(
    s3, bucket, bedrock, store_env
):
    red, blue = corpus.small_jpeg((220, 20, 30)), corpus.small_jpeg((20, 40, 220))
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=corpus.small_jpeg(seed=3))
    s3.put_object(Bucket=bucket, Key="b.jpg", Body=red)
    overwritten: list[str] = []

    def overwrite_b_while_a_is_embedded(body: dict) -> None:
        if not overwritten:  # b.jpg is listed already, and fetched after a.jpg's call
            overwritten.append(s3.put_object(Bucket=bucket, Key="b.jpg", Body=blue)["ETag"])

    bedrock.fail_when(overwrite_b_while_a_is_embedded)
    first = ingest_flow(source=f"s3://{bucket}/", concurrency=1)
    bedrock.fail_when(None)

    assert overwritten and first.embedded == 1
    [failure] = first.failures
    assert (failure.id, failure.stage, failure.permanent) == (
        f"s3://{bucket}/b.jpg", "download", False)
    assert f"s3://{bucket}/b.jpg" not in stored(store_env)
    assert ledger(store_env) == {}  # transient: the next run retries it

    second = ingest_flow(source=f"s3://{bucket}/")
    assert (second.new, second.embedded) == (1, 1)
    record = stored(store_env)[f"s3://{bucket}/b.jpg"]
    assert record["etag"] == overwritten[0] == s3.head_object(Bucket=bucket, Key="b.jpg")["ETag"]
    vector = np.array(ImageStore.open(Settings(), create=False).get_embedding(
        f"s3://{bucket}/b.jpg"))
    assert np.dot(vector, titan_vector(bedrock.url, blue)) > 0.999
    assert np.dot(vector, titan_vector(bedrock.url, red)) < 0.9
