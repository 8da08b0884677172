"""What the Prefect UI shows for a run: the artifacts of ingest and query runs, read back
from the Prefect API as the UI reads them."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterLevel,
)
from prefect.logging.handlers import APILogHandler

import tasks.report
from flows.ingest_flow import ingest_flow
from flows.query import main as query_main
from flows.query_flow import query_flow
from imgrag.emulators.bedrock import count_tokens
from tests.test_ingest_flow import put_colours

pytestmark = pytest.mark.usefixtures("prefect_harness")


def artifacts(key: str, flow_run_id: str | None = None) -> list:
    """Artifacts with ``key`` (of one flow run), oldest first."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]) if flow_run_id else None,
        ))
    return sorted(found, key=lambda a: a.created)


def table(artifact) -> list[dict]:
    """The rows of a table artifact (stored as a JSON string)."""
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def test_ingest_run_publishes_summary_failures_and_progress(
    s3, bucket, bedrock, store_env, monkeypatch
):
    monkeypatch.setenv("IMGRAG_COLLECTION", "artifacts-ingest")
    monkeypatch.setattr(tasks.report, "MAX_FAILURE_ROWS", 2)
    put_colours(s3, bucket)
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"broken-{i}.jpg", Body=b"<html>not a jpeg</html>")

    report = ingest_flow(source=f"s3://{bucket}/", batch_size=2)

    [summary] = artifacts("ingest-summary-artifacts-ingest", report.run_id)
    metrics = {row["metric"]: row["value"] for row in table(summary)}
    assert {k: metrics[k] for k in ("listed", "new", "embedded", "failed", "billed_images")} == {
        "listed": 7, "new": 7, "embedded": 4, "failed": 3, "billed_images": 4}
    assert metrics["duration_s"] > 0 and metrics["images_per_s"] > 0
    assert metrics["estimated_cost_usd"] == pytest.approx(4 * 0.00006)

    [failures] = artifacts("ingest-failures-artifacts-ingest", report.run_id)
    rows = table(failures)
    assert len(rows) == 3  # two rows, then the count of the rest
    assert {r["stage"] for r in rows[:2]} == {"normalize"}
    assert rows[2]["id"] == "... and 1 more"

    [progress] = artifacts("ingest-progress-artifacts-ingest", report.run_id)
    assert progress.type == "progress"
    assert float(progress.data) == 100.0
    assert progress.description == "7 of 7 objects"

    # Logs: failures are summed up once per batch (2 of the 4 batches had some), not per image.
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        warnings = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[report.run_id]), level=LogFilterLevel(ge_=30)))
    assert sorted(log.message.split(";")[0] for log in warnings) == [
        "batch 1: 1 failed (normalize 1)", "batch 2: 2 failed (normalize 2)"]


def test_query_run_publishes_hits_with_inline_thumbnails_and_cost(
    s3, bucket, bedrock, store_env, monkeypatch
):
    monkeypatch.setenv("IMGRAG_COLLECTION", "artifacts-query")
    put_colours(s3, bucket)
    ingest_flow(source=f"s3://{bucket}/")

    hits = query_flow("a red object", k=3)

    markdown = artifacts("query-hits-artifacts-query")[-1].data
    assert markdown.startswith("### Query: a red object")
    tokens = int(re.search(r"Bedrock text tokens (\d+)", markdown).group(1))
    assert tokens == count_tokens("a red object") > 0  # as the emulator billed them
    assert f"estimated cost ${tokens * 0.0008 / 1000:.6f}" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "data:" in line]
    assert len(rows) == 3
    for hit, row in zip(hits, rows, strict=True):
        assert row.startswith(f"| {hit.rank} | {hit.distance:.4f} |") and hit.id in row
    data = base64.b64decode(re.search(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", rows[0])[1])
    with Image.open(io.BytesIO(data)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= tasks.report.ARTIFACT_IMAGE_SIDE
        red, green, blue = thumb.convert("RGB").getpixel((thumb.width // 2, thumb.height // 2))
    assert red > 180 and green < 60 and blue < 60  # the top hit's own pixels


def test_query_artifact_and_html_gallery_fetch_each_hit_once_and_escape_the_query(
    s3, bucket, bedrock, store_env, monkeypatch, s3_requests, tmp_path
):
    monkeypatch.setenv("IMGRAG_COLLECTION", "artifacts-fetch")
    put_colours(s3, bucket)
    ingest_flow(source=f"s3://{bucket}/")
    before = s3_requests.object_gets(bucket)

    assert query_main(["a red object", "-k", "3", "--html", str(tmp_path / "g.html")]) == 0

    assert s3_requests.object_gets(bucket) == before + 3  # artifact and gallery: one fetch
    markdown = artifacts("query-hits-artifacts-fetch")[-1].data
    assert markdown.count("](data:image/jpeg;base64,") == 3

    monkeypatch.setenv("IMGRAG_ARTIFACT_THUMBNAILS", "false")
    assert query_main(["a *blue* <b>object</b> [x](http://e.example)", "-k", "4"]) == 0

    assert s3_requests.object_gets(bucket) == before + 3  # the 4th hit was never fetched
    [artifact] = artifacts("query-hits-artifacts-fetch")[-1:]
    assert "data:" not in artifact.data
    assert len([line for line in artifact.data.splitlines() if line.startswith("| ")]) == 5
    escaped = r"a \*blue\* &lt;b&gt;object&lt;/b&gt; \[x\](http://e.example)"
    assert artifact.data.startswith(f"### Query: {escaped}\n")
    assert artifact.description == f"Hits of: {escaped}"
