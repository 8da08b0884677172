"""The run's cost estimate counts what Bedrock bills: images of successful calls only."""

from __future__ import annotations

import pytest

from flows.ingest_flow import ingest_flow
from tests.conftest import COLOURS, image_bytes

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_cost_estimate_leaves_out_calls_the_model_rejected(s3, bucket, bedrock, store_env,
                                                          monkeypatch):
    for i, name in enumerate(("red", "green", "blue")):
        s3.put_object(Bucket=bucket, Key=f"{name}.jpg", Body=image_bytes(COLOURS[name], seed=i))
    monkeypatch.setenv("IMGRAG_CONCURRENCY", "1")  # one call at a time: the first one fails
    bedrock.fail_next(1, "ValidationException")

    report = ingest_flow(source=f"s3://{bucket}/")

    assert (report.embedded, report.failed, report.failures[0].stage) == (2, 1, "embed")
    assert report.billed_images == bedrock.stats.image_calls == 2  # 200s only
    assert report.estimated_cost_usd == pytest.approx(2 * 0.00006)
