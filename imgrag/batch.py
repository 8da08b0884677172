"""Bedrock batch inference for backfills, at the batch price (no Prefect here).

A run's images are downloaded and normalized as for InvokeModel, then written as JSONL
records ``{"recordId", "modelInput"}`` (``recordId``: a hash of URI and ETag; ``modelInput``:
the model's InvokeModel body) under ``<staging>/<job name>/input/``, in files of at most
50,000 records and 1 GB, one job per 100–50,000 records (AWS's default quotas). Beside
them, ``index.jsonl`` maps each recordId to its record id and metadata. A job is created
with the user's service role; its output ``<staging>/<job name>/output/<job id>/*.jsonl.out``
is joined on recordId (the service keeps no order), upserted, and per-record errors become
failures with the model's reason. ``collected.json`` then marks the job done.

Resumable: a job's name starts with ``imgrag-<collection hash>-``, so a later run lists the
collection's jobs, collects those without ``collected.json`` and leaves their records out
of what it submits: the same records are never submitted twice.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, Field

from imgrag.aws import new_session
from imgrag.embedders import model_format
from imgrag.errors import ConfigError, EmbeddingError
from imgrag.normalize import NormalizedImage
from imgrag.pipeline import Runtime, prepare_object, read_text, record_metadata
from imgrag.records import BatchResult, Failure, SourceObject
from imgrag.sources.s3 import make_s3_client
from imgrag.sources.s3_uri import parse_s3_uri

MIN_RECORDS_PER_JOB = 100
MAX_RECORDS_PER_JOB = 50_000  # also per file
MAX_FILE_BYTES = 1_000_000_000  # AWS: 1 GB per input file
PREPARED_AHEAD = 256  # images downloaded and normalized ahead of the JSONL writer
FINISHED = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}
COLLECTED = "collected.json"


class BatchJob(BaseModel):
    """One model invocation job of a run (or of a run that crashed)."""

    name: str
    arn: str
    status: str
    message: str = ""


class Submission(BaseModel):
    """What submitting a run's objects did."""

    jobs: list[BatchJob] = Field(default_factory=list)
    failures: list[Failure] = Field(default_factory=list)  # failed to download or normalize
    leftover: list[SourceObject] = Field(default_factory=list)  # too few for a job
    bytes_downloaded: int = 0


def record_id(obj: SourceObject) -> str:
    """The recordId of an object's version: alphanumeric, stable across runs."""
    return hashlib.sha256(f"{obj.uri}\0{obj.etag}".encode()).hexdigest()[:32]


def use_batch(settings_mode: str, todo: int, threshold: int, batchable: bool) -> bool:
    """Whether a run with ``todo`` images to embed goes through a batch job (a job takes
    at least 100 records; ``auto`` only for a model batch inference supports)."""
    if settings_mode == "batch":
        return todo >= MIN_RECORDS_PER_JOB
    return settings_mode == "auto" and batchable and todo >= max(threshold,
                                                                 MIN_RECORDS_PER_JOB)


class BatchInference:
    """Stages, submits and collects one collection's batch jobs."""

    def __init__(self, rt: Runtime, *, s3: Any = None, bedrock: Any = None) -> None:
        settings = rt.settings
        if not settings.batch_staging_uri:
            raise ConfigError("batch inference needs IMGRAG_BATCH_STAGING_URI (s3://BUCKET/PREFIX)")
        self.rt = rt
        self.format = model_format(settings.model_id)
        self.bucket, prefix = parse_s3_uri(settings.batch_staging_uri)
        self.prefix = f"{prefix.rstrip('/')}/" if prefix.strip("/") else ""
        self.s3 = s3 or make_s3_client(settings.region)
        self.bedrock = bedrock or new_session().client("bedrock", region_name=settings.region)
        digest = hashlib.sha256(settings.collection.encode()).hexdigest()[:8]
        self.name_prefix = f"imgrag-{digest}-"

    # -- resume ----------------------------------------------------------------------

    def pending(self) -> list[BatchJob]:
        """The collection's jobs whose output has not been collected yet."""
        jobs, token = [], None
        while True:
            kwargs = {"nameContains": self.name_prefix, "maxResults": 100}
            page = self._call("list", self.bedrock.list_model_invocation_jobs,
                              **kwargs | ({"nextToken": token} if token else {}))
            jobs += [BatchJob(name=j["jobName"], arn=j["jobArn"], status=j["status"],
                              message=j.get("message", ""))
                     for j in page.get("invocationJobSummaries", [])
                     if j["jobName"].startswith(self.name_prefix)]
            token = page.get("nextToken")
            if not token:
                break
        return [job for job in jobs if not self._exists(f"{self._home(job.name)}{COLLECTED}")]

    def record_ids(self, job: BatchJob) -> set[str]:
        """The recordIds a job was submitted with."""
        return {entry["recordId"] for entry in self._index(job)}

    # -- submit ----------------------------------------------------------------------

    def submit(self, objects: Sequence[SourceObject], run_id: str) -> Submission:
        """Prepare ``objects`` and submit them in jobs of at most 50,000 records (a part
        left with fewer than 100 prepared images is handed back, for InvokeModel)."""
        done = Submission()
        for start in range(0, len(objects), MAX_RECORDS_PER_JOB):
            part = objects[start : start + MAX_RECORDS_PER_JOB]
            name = self._job_name(part, run_id)
            count, failures, nbytes = self._stage(name, part, run_id)
            done.failures += failures
            done.bytes_downloaded += nbytes
            if count < MIN_RECORDS_PER_JOB:
                failed = {f.id for f in failures}
                done.leftover += [o for o in part if o.uri not in failed]
                continue
            home = f"s3://{self.bucket}/{self._home(name)}"
            answer = self._call("submit", self.bedrock.create_model_invocation_job,
                                jobName=name, roleArn=self.rt.settings.batch_role_arn,
                                clientRequestToken=name, modelId=self.format.spec.model_id,
                                inputDataConfig={"s3InputDataConfig": {
                                    "s3Uri": f"{home}input/", "s3InputFormat": "JSONL"}},
                                outputDataConfig={"s3OutputDataConfig": {
                                    "s3Uri": f"{home}output/"}})
            done.jobs.append(BatchJob(name=name, arn=answer["jobArn"], status="Submitted"))
        return done

    def _job_name(self, objects: Sequence[SourceObject], run_id: str) -> str:
        ids = hashlib.sha256("\n".join(sorted(map(record_id, objects))).encode()).hexdigest()
        run = hashlib.sha256(run_id.encode()).hexdigest()
        return f"{self.name_prefix}{ids[:12]}-{run[:8]}"

    def _stage(self, name: str, objects: Sequence[SourceObject],
               run_id: str) -> tuple[int, list[Failure], int]:
        """Download and normalize ``objects`` concurrently and write their JSONL files."""
        home = self._home(name)
        failures: list[Failure] = []
        downloaded = count = 0
        index: list[str] = []
        with _Parts(self.s3, self.bucket, f"{home}input/") as parts:
            for obj, image, failure, nbytes in self._prepared(objects):
                downloaded += nbytes
                if failure is not None:
                    failures.append(failure)
                    continue
                rid = record_id(obj)
                body = self.format.image_body([image.data], self.rt.settings.dim)
                parts.write(f'{{"recordId": "{rid}", "modelInput": {body}}}\n'.encode())
                text = read_text(self.rt, obj, image)
                meta = record_metadata(obj, image, self.rt.embedder, run_id, text)
                index.append(json.dumps({"recordId": rid, "id": obj.uri, "etag": obj.etag,
                                         "metadata": meta, "text": text.text if text else ""}))
                count += 1
        if count:
            self.s3.put_object(Bucket=self.bucket, Key=f"{home}index.jsonl",
                               Body="\n".join(index).encode())
        return count, failures, downloaded

    def _prepared(self, objects: Sequence[SourceObject]) -> Iterator[
            tuple[SourceObject, NormalizedImage | None, Failure | None, int]]:
        """``objects`` downloaded and normalized concurrently, at most PREPARED_AHEAD of
        them held at a time (memory stays flat in the job's size)."""
        for start in range(0, len(objects), PREPARED_AHEAD):
            chunk = objects[start : start + PREPARED_AHEAD]
            yield from self.rt.pool.map(lambda o: (o, *prepare_object(self.rt, o)), chunk)

    # -- wait and collect --------------------------------------------------------------

    def refresh(self, job: BatchJob) -> BatchJob:
        """The job's current status."""
        answer = self._call("check", self.bedrock.get_model_invocation_job,
                            jobIdentifier=job.arn)
        return job.model_copy(update={"status": answer["status"],
                                      "message": answer.get("message") or ""})

    def stop(self, job: BatchJob) -> None:
        """Stop a job that is not finished (its records are submitted again later)."""
        self._call("stop", self.bedrock.stop_model_invocation_job, jobIdentifier=job.arn)

    def collect(self, job: BatchJob, run_id: str) -> BatchResult:
        """Upsert a finished job's vectors, record its errors, and mark it collected."""
        rt = self.rt
        entries = {e["recordId"]: e for e in self._index(job)}
        outputs = dict(self._outputs(job)) if job.status in ("Completed",
                                                             "PartiallyCompleted") else {}
        ids, vectors, metadatas, texts, failures = [], [], [], [], []
        now = datetime.now(UTC).isoformat()
        for rid, entry in entries.items():
            output = outputs.get(rid)
            vector, failure = self._vector(entry, output, job)
            if failure is not None:
                failures.append(failure)
                continue
            ids.append(entry["id"])
            vectors.append(vector)
            metadatas.append(entry["metadata"] | {"ingested_at": now, "run_id": run_id})
            texts.append(entry.get("text", ""))
        if ids:
            rt.store.upsert(ids, vectors, metadatas, texts)
            rt.ledger.forget(ids)
        rt.ledger.record([f for f in failures if f.permanent], run_id)
        self.s3.put_object(Bucket=self.bucket, Key=f"{self._home(job.name)}{COLLECTED}",
                           Body=json.dumps({"run_id": run_id, "status": job.status,
                                            "upserted": len(ids)}).encode())
        return BatchResult(upserted=len(ids), failures=failures, billed_images=len(ids),
                           batch_images=len(ids))

    def _vector(self, entry: dict[str, Any], output: dict[str, Any] | None,
                job: BatchJob) -> tuple[list[float] | None, Failure | None]:
        """One record's vector, or its Failure (4xx errors are permanent)."""
        def failed(reason: str, permanent: bool) -> tuple[None, Failure]:
            return None, Failure(id=entry["id"], etag=entry["etag"], stage="embed",
                                 reason=reason, permanent=permanent)

        if output is None:
            return failed(f"batch job {job.status}: {job.message}".rstrip(": ")
                          if job.status not in ("Completed", "PartiallyCompleted")
                          else "batch job returned no output for the record", False)
        if "error" in output:
            error = output["error"] or {}
            code = error.get("errorCode")
            return failed(f"{code}: {error.get('errorMessage', '')}",
                          isinstance(code, int) and 400 <= code < 500)
        vectors = self.format.vectors(output.get("modelOutput") or {})
        if len(vectors) != 1 or len(vectors[0] or []) != self.rt.settings.dim:
            return failed("batch output holds no vector of the collection's dimension", False)
        return vectors[0], None

    def _outputs(self, job: BatchJob) -> Iterator[tuple[str, dict[str, Any]]]:
        """(recordId, output line) of every ``.jsonl.out`` file of the job."""
        job_id = job.arn.rsplit("/", 1)[1]
        prefix = f"{self._home(job.name)}output/{job_id}/"
        for key in self._keys(prefix):
            if key.endswith(".jsonl.out"):
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
                for line in body.iter_lines():
                    if line.strip():
                        record = json.loads(line)
                        yield record.get("recordId", ""), record

    # -- S3 helpers ----------------------------------------------------------------

    def _home(self, name: str) -> str:
        return f"{self.prefix}{name}/"

    def _index(self, job: BatchJob) -> list[dict[str, Any]]:
        key = f"{self._home(job.name)}index.jsonl"
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def _keys(self, prefix: str) -> Iterable[str]:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                       Prefix=prefix):
            yield from (o["Key"] for o in page.get("Contents", []))

    def _exists(self, key: str) -> bool:
        return any(k == key for k in self._keys(key))

    def _call(self, action: str, method: Any, **kwargs: Any) -> dict[str, Any]:
        """A control-plane call; its errors stop the run with one line."""
        try:
            return method(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise EmbeddingError(f"cannot {action} Bedrock batch job: {error.get('Code')}:"
                                 f" {error.get('Message', '')}") from None
        except BotoCoreError as exc:
            raise EmbeddingError(f"cannot {action} Bedrock batch job: {exc}") from None


class _Parts:
    """JSONL part files of at most 50,000 records and 1 GB, spooled on disk and uploaded."""

    def __init__(self, s3: Any, bucket: str, prefix: str) -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, prefix
        self.number = self.records = self.size = 0
        self.file: IO[bytes] | None = None

    def write(self, line: bytes) -> None:
        if self.file is not None and (self.records == MAX_RECORDS_PER_JOB
                                      or self.size + len(line) > MAX_FILE_BYTES):
            self._upload()
        if self.file is None:
            self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _upload
        self.file.write(line)
        self.records += 1
        self.size += len(line)

    def _upload(self) -> None:
        assert self.file is not None
        self.file.seek(0)
        self.s3.upload_fileobj(self.file, self.bucket, f"{self.prefix}part-{self.number:05d}.jsonl")
        self.file.close()
        self.file = None
        self.number += 1
        self.records = self.size = 0

    def __enter__(self) -> _Parts:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None and exc[0] is None:
            self._upload()
        elif self.file is not None:
            self.file.close()
