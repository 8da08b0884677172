"""Crash-resume: ``kill -9`` of a real ingest process mid-run, then a re-run, finishes the
job with no duplicate and no missing record, repeating Bedrock calls only for the batches
that were in flight — never for items already upserted."""

from __future__ import annotations

import signal

import chromadb
import pytest

from flows.ingest_flow import MAX_BATCHES_IN_FLIGHT, ingest_flow
from tests import corpus
from tests.processes import kill_group, spawn_ingest, wait_until

pytestmark = pytest.mark.usefixtures("prefect_harness")

IMAGES = 40
BATCH = 4


def stored_etags(chroma_path) -> dict[str, str]:
    client = chromadb.PersistentClient(path=str(chroma_path))
    names = {c.name for c in client.list_collections()}
    if "images" not in names:
        return {}
    page = client.get_collection("images", embedding_function=None).get(include=["metadatas"])
    assert len(page["ids"]) == len(set(page["ids"]))
    return {i: m["etag"] for i, m in zip(page["ids"], page["metadatas"], strict=True)}


def test_kill_9_mid_run_then_rerun_indexes_everything_once_without_re_embedding_stored_items(
    s3, bucket, bedrock, store_env, tmp_path
):
    etags = {}
    for i in range(IMAGES):
        key = f"photos/{i:03}.jpg"
        etags[f"s3://{bucket}/{key}"] = s3.put_object(
            Bucket=bucket, Key=key, Body=corpus.small_jpeg(seed=i))["ETag"]
    bedrock.latency_ms = 100
    source = f"s3://{bucket}/photos/"

    proc = spawn_ingest(["--source", source, "--batch-size", str(BATCH), "--concurrency", "2"],
                        tmp_path)
    try:
        # Batch 4 half embedded: batches 1 and 2 were collected (upserted) before it began.
        wait_until(lambda: bedrock.stats.image_calls >= 3 * BATCH + 2, 90,
                   "batch 4 to be half embedded", proc)
    finally:
        kill_group(proc)
    assert proc.returncode == -9
    wait_until(lambda: bedrock.inflight == 0, 10, "the killed run's calls to drain")
    first_calls = bedrock.stats.image_calls
    survived = stored_etags(store_env)
    assert 2 * BATCH <= len(survived) < IMAGES
    assert all(etags[uri] == etag for uri, etag in survived.items())

    bedrock.reset_stats()
    bedrock.latency_ms = 0
    report = ingest_flow(source=source, batch_size=BATCH, concurrency=2)

    assert (report.unchanged, report.new, report.failed) == (len(survived), IMAGES - len(
        survived), 0)
    assert bedrock.stats.image_calls == IMAGES - len(survived)  # nothing stored is re-embedded
    repeated = first_calls + bedrock.stats.image_calls - IMAGES
    assert 0 <= repeated <= MAX_BATCHES_IN_FLIGHT * BATCH  # only the in-flight batches
    assert stored_etags(store_env) == etags  # all there, once, each with its own ETag


def test_ctrl_c_mid_run_exits_130_with_one_line_and_keeps_the_batches_embedded(
    s3, bucket, bedrock, store_env, tmp_path
):
    for i in range(IMAGES):
        s3.put_object(Bucket=bucket, Key=f"photos/{i:03}.jpg", Body=corpus.small_jpeg(seed=i))
    bedrock.latency_ms = 100
    source = f"s3://{bucket}/photos/"

    proc = spawn_ingest(["--source", source, "--batch-size", str(BATCH), "--concurrency", "2"],
                        tmp_path)
    try:
        wait_until(lambda: bedrock.stats.image_calls >= 3 * BATCH + 2, 90,
                   "batch 4 to be half embedded", proc)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        kill_group(proc)

    err = (tmp_path / "ingest.err").read_text()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.splitlines()[-1] == ("imgrag: interrupted: ingest stopped (batches already "
                                    "embedded are stored)")
    stored = stored_etags(store_env)
    assert len(stored) >= 2 * BATCH  # what was embedded before Ctrl-C is not lost
    billed = bedrock.stats.image_calls
    bedrock.reset_stats()
    bedrock.latency_ms = 0
    report = ingest_flow(source=source, batch_size=BATCH, concurrency=2)
    assert (report.unchanged, report.new) == (len(stored), IMAGES - len(stored))
    assert billed + bedrock.stats.image_calls <= IMAGES + MAX_BATCHES_IN_FLIGHT * BATCH
