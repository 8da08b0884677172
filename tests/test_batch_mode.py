"""Bedrock batch inference: staging within the quotas, the emulator's control plane through
the real boto3 ``bedrock`` client, the join on recordId, and a crashed run's job collected
by the next run without submitting its records again."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import chromadb
import pytest
from botocore.exceptions import ClientError

from imgrag import batch
from imgrag.batch import FINISHED, BatchInference, record_id
from imgrag.embedders import make_embedder
from imgrag.emulators.bedrock import FakeBedrock
from imgrag.ledger import FailureLedger
from imgrag.ocr import OCR_VERSION, OcrResult
from imgrag.pipeline import Runtime
from imgrag.settings import Settings
from imgrag.sources import LocalSource
from imgrag.store import ImageStore
from tests import corpus
from tests.processes import kill_group, spawn_ingest, wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]  # this checkout's code in the child
ROLE = "arn:aws:iam::123456789012:role/imgrag-batch"
IMAGES = 110  # a job takes at least 100 records


@pytest.fixture
def fake_bedrock(monkeypatch: pytest.MonkeyPatch, s3_server: str):
    """The emulator for both Bedrock endpoints; its jobs use the moto S3 server."""
    with FakeBedrock() as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.url)
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", fake.url)
        yield fake


@pytest.fixture
def staging(s3, bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"s3://{bucket}/batch/"
    monkeypatch.setenv("IMGRAG_BATCH_STAGING_URI", uri)
    monkeypatch.setenv("IMGRAG_BATCH_ROLE_ARN", ROLE)
    return uri


def test_control_plane_through_boto3(fake_bedrock: FakeBedrock, staging: str) -> None:
    client = boto3.session.Session().client("bedrock")
    spec = {"roleArn": ROLE, "modelId": "amazon.titan-embed-image-v1",
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": f"{staging}in/"}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": f"{staging}out/"}}}
    fake_bedrock.jobs.delay_s = 3600
    arn = client.create_model_invocation_job(jobName="imgrag-a-1", clientRequestToken="t1",
                                             **spec)["jobArn"]
    again = client.create_model_invocation_job(jobName="imgrag-a-1", clientRequestToken="t1",
                                               **spec)["jobArn"]
    assert again == arn and fake_bedrock.jobs.created == 1  # idempotent by token
    with pytest.raises(ClientError, match="ConflictException"):
        client.create_model_invocation_job(jobName="imgrag-a-1", **spec)
    with pytest.raises(ClientError, match="ValidationException"):
        client.create_model_invocation_job(jobName="bad name!", **spec)
    job = client.get_model_invocation_job(jobIdentifier=arn)
    assert job["status"] == "InProgress" and job["submitTime"].year >= 2024
    listed = client.list_model_invocation_jobs(nameContains="imgrag-a")
    assert [j["jobArn"] for j in listed["invocationJobSummaries"]] == [arn]
    client.stop_model_invocation_job(jobIdentifier=arn)
    assert client.get_model_invocation_job(jobIdentifier=arn)["status"] == "Stopped"
    fake_bedrock.jobs.delay_s = 0
    arn = client.create_model_invocation_job(jobName="imgrag-a-2", **spec)["jobArn"]
    job = client.get_model_invocation_job(jobIdentifier=arn)  # no input files: it fails
    assert job["status"] == "Failed" and "No .jsonl" in job["message"]


def _runtime(tmp_path: Path, count: int) -> Runtime:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(count):
        rgb = ((220, 20, 30), (30, 200, 40), (20, 40, 220))[i % 3]
        (folder / f"{i:03}.jpg").write_bytes(corpus.small_jpeg(rgb, seed=i))
    settings = Settings(chroma_path=tmp_path / "db", dim=256)
    return Runtime(settings, LocalSource(folder), ImageStore.open(settings),
                   make_embedder(settings), FailureLedger(tmp_path / "ledger", "images"),
                   ThreadPoolExecutor(4))


def test_records_are_staged_within_limits_and_joined_on_record_id(
        fake_bedrock: FakeBedrock, staging: str, s3, bucket: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "MAX_FILE_BYTES", 40_000)  # several input files per job
    fake_bedrock.jobs.error_rate = 0.1
    rt = _runtime(tmp_path, IMAGES)
    try:
        inference = BatchInference(rt)
        objects = list(rt.source.list_objects())
        submission = inference.submit(objects, "run-1")
        (job,) = submission.jobs
        files = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="batch/")["Contents"]
                 if o["Key"].endswith(".jsonl") and "/input/" in o["Key"]]
        assert len(files) > 2
        assert [j.name for j in inference.pending()] == [job.name]
        assert inference.record_ids(job) == {record_id(o) for o in objects}
        while (job := inference.refresh(job)).status not in FINISHED:
            time.sleep(0.05)
        assert job.status == "PartiallyCompleted"
        result = inference.collect(job, "run-1")
        assert inference.pending() == []
        on_demand = dict(zip((o.uri for o in objects), rt.embedder.embed_images(
            [rt.source.fetch(o) for o in objects]), strict=True))
        stored = {uri: rt.store.get_embedding(uri) for uri in on_demand}
    finally:
        rt.close()
    assert result.upserted + len(result.failures) == IMAGES
    assert 0 < len(result.failures) < IMAGES // 4
    assert {f.reason for f in result.failures} == {
        "500: Internal error processing the record (emulated)."}
    assert not any(f.permanent for f in result.failures)
    for uri, vector in stored.items():  # each output line went to its own record
        assert vector is None or vector == pytest.approx(on_demand[uri], abs=1e-6)
    assert sum(v is not None for v in stored.values()) == result.upserted


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_killed_after_submitting_is_collected_by_the_next_without_resubmitting(
        fake_bedrock: FakeBedrock, staging: str, s3, bucket: str, store_env: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.ingest import ingest_flow

    for i in range(IMAGES):
        s3.put_object(Bucket=bucket, Key=f"photos/{i:03}.jpg", Body=corpus.small_jpeg(seed=i))
    source = f"s3://{bucket}/photos/"
    fake_bedrock.jobs.delay_s = 3600
    fake_bedrock.jobs.error_rate = 0.05
    proc = spawn_ingest(["--source", source, "--mode", "batch"], tmp_path,
                        IMGRAG_BATCH_POLL_S="0.1", PYTHONPATH=str(REPO_ROOT))
    try:
        wait_until(lambda: fake_bedrock.jobs.created == 1, 120, "the job to be created", proc)
        wait_until(lambda: fake_bedrock.jobs.checks >= 3, 60, "the polling task to retry", proc)
    finally:
        kill_group(proc)
    assert fake_bedrock.stats.requests == 0  # no InvokeModel: everything went to the job

    fake_bedrock.jobs.delay_s = 0
    monkeypatch.setenv("IMGRAG_BATCH_POLL_S", "0.1")
    report = ingest_flow(source=source, mode="batch")

    assert fake_bedrock.jobs.created == 1  # found by name, never submitted again
    errors = len(report.failures)
    assert 0 < errors < IMAGES // 4 and report.embedded == IMAGES - errors
    assert report.batch_images == report.billed_images == report.embedded
    assert report.estimated_cost_usd == pytest.approx(report.embedded * 0.00006 * 0.5)
    assert fake_bedrock.stats.requests == 0

    again = ingest_flow(source=source, mode="batch")  # too few left for a job: InvokeModel
    assert (again.new, again.embedded, again.batch_images) == (errors, errors, 0)
    assert fake_bedrock.jobs.created == 1 and fake_bedrock.stats.image_calls == errors
    page = chromadb.PersistentClient(path=str(store_env)).get_collection(
        "images", embedding_function=None).get()
    assert len(page["ids"]) == len(set(page["ids"])) == IMAGES


class _Reader:
    """Stands in for the OCR engine (real OCR of 110 images would take a minute)."""

    def read(self, image: bytes) -> OcrResult:
        return OcrResult(text=f"SIGN {len(image) % 7}", language="en", confidence=0.9)


def test_batch_jobs_store_the_ocr_text_of_their_records(
        fake_bedrock: FakeBedrock, staging: str, tmp_path: Path) -> None:
    rt = _runtime(tmp_path, IMAGES)
    rt.ocr = _Reader()
    try:
        inference = BatchInference(rt)
        (job,) = inference.submit(list(rt.source.list_objects()), "run-1").jobs
        while (job := inference.refresh(job)).status not in FINISHED:
            time.sleep(0.05)
        assert inference.collect(job, "run-1").upserted == IMAGES
        page = rt.store.collection.get(include=["documents", "metadatas"])
    finally:
        rt.close()
    assert {doc.split()[0] for doc in page["documents"]} == {"SIGN"}
    assert {m["ocr_version"] for m in page["metadatas"]} == {OCR_VERSION}
