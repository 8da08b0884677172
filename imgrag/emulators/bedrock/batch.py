"""Bedrock batch inference (``CreateModelInvocationJob`` and friends), emulated.

A job reads every ``.jsonl`` file under its input S3 URI (or that one file), answers each
``{"recordId", "modelInput"}`` line with the model's InvokeModel answer, and writes
``<output>/<jobId>/<file>.out`` lines ``{"recordId", "modelInput", "modelOutput" | "error":
{"errorCode", "errorMessage"}}`` in an order of its own (as the service: join on recordId)
and ``<output>/<jobId>/manifest.json.out`` (counts). It runs on the first Get or List
``delay_s`` after its submission (``delay_s`` may be changed while a job waits);
``error_rate`` of the records (chosen by a hash of their recordId) fail with a 500. The
documented quotas are enforced: at least ``min_records`` (100) records per job, at most
50,000 per file and per job, 1 GB per file; breaking one fails the job.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from imgrag.emulators.bedrock.common import BedrockError, validation

MIN_RECORDS = 100
MAX_RECORDS = 50_000  # per file and per job
MAX_FILE_BYTES = 1024**3
ACCOUNT = "123456789012"
_NAME_RE = re.compile(r"^[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9+\-.]){0,63}$")
_ROLE_RE = re.compile(r"^arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+$")
_ACTIVE = {"Submitted", "Validating", "Scheduled", "InProgress", "Stopping"}
AnswerRecord = Callable[[str, Any], dict[str, Any]]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise validation(f"Invalid S3 URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


class BatchJobs:
    """The jobs of one emulator, run against S3 (boto3) when they are due; thread-safe."""

    def __init__(self, answer: AnswerRecord, *, delay_s: float = 0.0, error_rate: float = 0.0,
                 min_records: int = MIN_RECORDS) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self.error_rate = error_rate
        self.min_records = min_records
        self.created = 0  # CreateModelInvocationJob calls that made a job
        self.checks = 0  # GetModelInvocationJob calls
        self._jobs: dict[str, dict[str, Any]] = {}  # jobArn -> job description
        self._submitted: dict[str, float] = {}  # jobArn -> monotonic submission time
        self._lock = threading.Lock()
        self._running = threading.Lock()  # one job processed at a time
        self._s3: Any = None

    # -- S3 ------------------------------------------------------------------------

    @property
    def s3(self) -> Any:
        """An S3 client from the environment (``AWS_ENDPOINT_URL_S3``), made on first use."""
        if self._s3 is None:
            import boto3

            self._s3 = boto3.session.Session().client("s3")
        return self._s3

    def read_s3(self, uri: str) -> bytes:
        """An object's bytes (what the service reads for ``s3Location`` inputs)."""
        bucket, key = _split_s3(uri)
        try:
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:  # NoSuchKey, AccessDenied, ...
            raise validation(f"Unable to read {uri}: {exc}") from None

    # -- operations ----------------------------------------------------------------

    def create(self, body: Any, model_of: Callable[[str], str]) -> dict[str, Any]:
        """CreateModelInvocationJob; the same clientRequestToken returns the same job."""
        if not isinstance(body, dict):
            raise validation("Request body must be a JSON object")
        name, role = body.get("jobName", ""), body.get("roleArn", "")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise validation(f"1 validation error detected: Value '{name}' at 'jobName'"
                             " failed to satisfy constraint")
        if not isinstance(role, str) or not _ROLE_RE.match(role):
            raise validation(f"1 validation error detected: Value '{role}' at 'roleArn'"
                             " failed to satisfy constraint")
        model = model_of(str(body.get("modelId", "")))
        try:
            input_uri = body["inputDataConfig"]["s3InputDataConfig"]["s3Uri"]
            output_uri = body["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"]
        except (KeyError, TypeError):
            raise validation("inputDataConfig.s3InputDataConfig.s3Uri and"
                             " outputDataConfig.s3OutputDataConfig.s3Uri are required") from None
        for uri in (input_uri, output_uri):
            _split_s3(uri)  # a ValidationException unless s3://...
        token = body.get("clientRequestToken")
        with self._lock:
            for job in self._jobs.values():
                if token and job.get("clientRequestToken") == token:
                    return {"jobArn": job["jobArn"]}
                if job["jobName"] == name:
                    raise BedrockError("ConflictException",
                                       f"A job with name {name} already exists", 400)
            job_id = uuid.uuid4().hex[:12]
            arn = f"arn:aws:bedrock:us-east-1:{ACCOUNT}:model-invocation-job/{job_id}"
            self._jobs[arn] = {
                "jobArn": arn, "jobName": name, "modelId": model, "roleArn": role,
                "clientRequestToken": token, "status": "Submitted", "submitTime": _now(),
                "lastModifiedTime": _now(),
                "inputDataConfig": body["inputDataConfig"],
                "outputDataConfig": body["outputDataConfig"],
                "timeoutDurationInHours": body.get("timeoutDurationInHours", 24),
            }
            self.created += 1
            self._submitted[arn] = time.monotonic()
            self._jobs[arn]["status"] = "InProgress"
        return {"jobArn": arn}

    def get(self, identifier: str) -> dict[str, Any]:
        """GetModelInvocationJob by ARN (or by the job id at its end)."""
        self._run_due()
        with self._lock:
            self.checks += 1
            return dict(self._job(identifier))

    def stop(self, identifier: str) -> dict[str, Any]:
        """StopModelInvocationJob: a job not finished yet is Stopped and writes nothing."""
        with self._lock:
            job = self._job(identifier)
            if job["status"] not in _ACTIVE:
                raise validation(f"Job {job['jobArn']} is {job['status']} and cannot be stopped")
            job.update(status="Stopped", lastModifiedTime=_now(), endTime=_now())
        return {}

    def list(self, query: dict[str, str]) -> dict[str, Any]:
        """ListModelInvocationJobs with ``nameContains`` / ``statusEquals`` (one page)."""
        self._run_due()
        with self._lock:
            jobs = [dict(j) for j in self._jobs.values()
                    if query.get("nameContains", "") in j["jobName"]
                    and query.get("statusEquals", j["status"]) == j["status"]]
        jobs.sort(key=lambda j: j["submitTime"], reverse=True)
        return {"invocationJobSummaries": jobs}

    def _job(self, identifier: str) -> dict[str, Any]:
        for arn, job in self._jobs.items():
            if identifier in (arn, arn.rsplit("/", 1)[1]):
                return job
        raise BedrockError("ResourceNotFoundException", f"Job {identifier} not found", 404)

    # -- running -------------------------------------------------------------------

    def _run_due(self) -> None:
        """Process the jobs whose delay has passed (in the calling request's thread)."""
        with self._running:
            now = time.monotonic()
            with self._lock:
                due = [arn for arn, job in self._jobs.items() if job["status"] == "InProgress"
                       and now >= self._submitted[arn] + self.delay_s]
            for arn in due:
                self._run(arn)

    def _run(self, arn: str) -> None:
        job = self._jobs[arn]
        try:
            counts = self._process(job)
        except BedrockError as err:
            update = {"status": "Failed", "message": err.message}
        except Exception as exc:  # the emulator must still end the job
            update = {"status": "Failed", "message": f"Emulator error: {exc!r}"}
        else:
            update = {"status": "PartiallyCompleted" if counts["errorRecordCount"]
                      else "Completed", **counts}
        with self._lock:
            if job["status"] == "InProgress":  # not stopped meanwhile
                job.update(update, lastModifiedTime=_now(), endTime=_now())

    def _process(self, job: dict[str, Any]) -> dict[str, int]:
        bucket, key = _split_s3(job["inputDataConfig"]["s3InputDataConfig"]["s3Uri"])
        listed = self.s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
        files = [o for o in listed if o["Key"].endswith(".jsonl")]
        if not files:
            raise validation("No .jsonl input files found")
        if any(o["Size"] > MAX_FILE_BYTES for o in files):
            raise validation("An input file is larger than 1 GB")
        inputs = {}
        for obj in files:
            lines = self.s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().splitlines()
            records = [json.loads(line) for line in lines if line.strip()]
            if len(records) > MAX_RECORDS:
                raise validation(f"{obj['Key']} has more than {MAX_RECORDS} records")
            inputs[obj["Key"].rsplit("/", 1)[-1]] = records
        total = sum(map(len, inputs.values()))
        if not self.min_records <= total <= MAX_RECORDS:
            raise validation(f"A job takes {self.min_records} to {MAX_RECORDS} records,"
                             f" not {total}")
        out_bucket, out_key = _split_s3(job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"])
        prefix = f"{out_key.rstrip('/')}/{job['jobArn'].rsplit('/', 1)[1]}/".lstrip("/")
        errors = 0
        rng = random.Random(job["jobArn"])
        for name, records in inputs.items():
            lines = []
            for record in records:
                result = self._record(job["modelId"], record)
                errors += "error" in result
                lines.append(json.dumps(result))
            rng.shuffle(lines)  # the service keeps no order either
            self.s3.put_object(Bucket=out_bucket, Key=f"{prefix}{name}.out",
                               Body="\n".join(lines).encode() + b"\n")
        counts = {"totalRecordCount": total, "processedRecordCount": total,
                  "successRecordCount": total - errors, "errorRecordCount": errors}
        self.s3.put_object(Bucket=out_bucket, Key=f"{prefix}manifest.json.out",
                           Body=json.dumps(counts).encode())
        return counts

    def _record(self, model: str, record: Any) -> dict[str, Any]:
        record_id = record.get("recordId", "") if isinstance(record, dict) else ""
        out: dict[str, Any] = {"recordId": record_id,
                               "modelInput": record.get("modelInput") if record_id else None}
        digest = hashlib.sha256(str(record_id).encode()).digest()
        if int.from_bytes(digest[:4], "big") / 2**32 < self.error_rate:
            out["error"] = {"errorCode": 500, "errorMessage": "Internal error processing"
                            " the record (emulated)."}
            return out
        try:
            out["modelOutput"] = self.answer(model, out["modelInput"])
        except BedrockError as err:
            out["error"] = {"errorCode": err.status, "errorMessage": err.message}
        return out
