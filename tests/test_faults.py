"""Bedrock faults: throttling, 5xx and timeouts are retried within a bounded budget and then
become transient failures (not in the ledger) while the run goes on; ValidationException is
not retried and is a permanent failure with the service's message."""

from __future__ import annotations

import itertools
import time

import chromadb
import pytest

from flows.ingest_flow import ingest_flow
from imgrag.ledger import FailureLedger
from imgrag.pipeline import LEDGER_NAME
from tests import corpus
from tests.processes import wait_until

pytestmark = pytest.mark.usefixtures("prefect_harness")

ATTEMPTS = 2


@pytest.fixture
def three_images(s3, bucket, bedrock, store_env, monkeypatch) -> str:
    """Three images in a bucket, a Bedrock budget of ATTEMPTS; returns the source URI."""
    monkeypatch.setenv("IMGRAG_BEDROCK_MAX_ATTEMPTS", str(ATTEMPTS))
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"img-{i}.jpg", Body=corpus.small_jpeg(seed=i))
    return f"s3://{bucket}/"


def ledger_ids(store_env) -> set[str]:
    book = FailureLedger(store_env / LEDGER_NAME, "images")
    try:
        return {f.id for f in book.entries()}
    finally:
        book.close()


def stored_ids(store_env) -> list[str]:
    """The collection's record ids, sorted (a duplicate would show twice)."""
    collection = chromadb.PersistentClient(path=str(store_env)).get_collection(
        "images", embedding_function=None)
    return sorted(collection.get(include=[])["ids"])


def fail_image(bedrock, number: int, times: int, code: str) -> None:
    """With concurrency 1, fail every attempt of the ``number``-th image (1-based) up to
    ``times`` (later images see no faults, so botocore's adaptive limiter slows few calls)."""
    requests = itertools.count(1)
    bedrock.fail_when(lambda body: code if number <= next(requests) < number + times else None)


@pytest.mark.parametrize(
    "code", ["ThrottlingException", "ServiceUnavailableException", "InternalServerException"],
)
def test_retryable_error_within_the_budget_is_retried_and_everything_is_indexed(
    three_images, bedrock, code
):
    fail_image(bedrock, 3, ATTEMPTS - 1, code)

    report = ingest_flow(source=three_images, concurrency=1)

    assert (report.embedded, report.failed) == (3, 0)
    assert bedrock.stats.requests == 3 + ATTEMPTS - 1


@pytest.mark.parametrize("code", ["ThrottlingException", "ModelTimeoutException"])
def test_retryable_error_beyond_the_budget_is_a_transient_failure_and_the_run_goes_on(
    three_images, bedrock, store_env, code
):
    fail_image(bedrock, 2, ATTEMPTS, code)  # every attempt for the second image

    report = ingest_flow(source=three_images, concurrency=1)

    assert (report.embedded, report.failed) == (2, 1)
    assert bedrock.stats.requests == 3 + ATTEMPTS - 1  # bounded: ATTEMPTS for the second
    [failure] = report.failures
    assert (failure.stage, failure.permanent) == ("embed", False)
    assert code in failure.reason
    assert ledger_ids(store_env) == set()

    bedrock.reset_stats()
    rerun = ingest_flow(source=three_images)
    assert (rerun.new, rerun.skipped, rerun.embedded) == (1, 0, 1)
    assert bedrock.stats.image_calls == 1
    assert stored_ids(store_env) == [f"{three_images}img-{i}.jpg" for i in range(3)]


def test_read_timeout_is_retried_then_a_transient_failure(
    three_images, bedrock, store_env, monkeypatch
):
    monkeypatch.setenv("IMGRAG_BEDROCK_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("IMGRAG_BEDROCK_TIMEOUT_S", "0.3")
    bedrock.latency_ms = 1500  # every call outlives the client's read timeout

    started = time.perf_counter()
    report = ingest_flow(source=three_images, concurrency=3)

    assert (report.embedded, report.failed) == (0, 3)
    assert all(not f.permanent and "timeout" in f.reason.lower() for f in report.failures)
    assert bedrock.stats.requests == 3 * 2
    assert time.perf_counter() - started < 20

    wait_until(lambda: bedrock.inflight == 0, 10, "the timed-out calls to end")
    assert bedrock.stats.image_calls == 3 * 2  # answered after the client gave up: billed

    bedrock.latency_ms = 0
    bedrock.reset_stats()
    assert ingest_flow(source=three_images).embedded == 3
    assert bedrock.stats.image_calls == 3
    assert stored_ids(store_env) == [f"{three_images}img-{i}.jpg" for i in range(3)]
    assert ledger_ids(store_env) == set()


def test_validation_exception_is_not_retried_and_is_a_permanent_failure_with_its_message(
    three_images, bedrock, store_env
):
    message = "Image exceeds max pixels allowed"
    bedrock.fail_next(1, "ValidationException", message)

    report = ingest_flow(source=three_images, concurrency=1)

    assert (report.embedded, report.failed) == (2, 1)
    assert bedrock.stats.requests == 3  # no retry
    [failure] = report.failures
    assert (failure.stage, failure.permanent) == ("embed", True)
    assert failure.reason == f"ValidationException: {message}"
    assert ledger_ids(store_env) == {failure.id}

    bedrock.reset_stats()
    rerun = ingest_flow(source=three_images)
    assert (rerun.skipped, rerun.embedded) == (1, 0)
    assert bedrock.stats.requests == 0


def test_request_quota_throttles_but_every_image_is_indexed(s3, bucket, bedrock, store_env):
    for i in range(8):
        s3.put_object(Bucket=bucket, Key=f"q/{i:02}.jpg", Body=corpus.small_jpeg(seed=i))
    bedrock.set_quota(8, burst=2)

    report = ingest_flow(source=f"s3://{bucket}/q/", concurrency=8, batch_size=8)

    assert (report.embedded, report.failed) == (8, 0)
    assert bedrock.stats.throttled > 0
    assert bedrock.stats.image_calls == 8
