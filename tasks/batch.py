"""Prefect tasks of a batch-mode ingest: submit, wait, collect (imgrag.batch does the work).

Waiting is a polling task whose retry delay is the poll interval: each attempt is one
GetModelInvocationJob call, and between attempts the task is AwaitingRetry (visible in the
UI) while the run holds no thread pool, no connection and no image. Prefect's
``suspend_flow_run`` would free the worker process too, but it only works for deployment
runs and needs something outside to resume them; a run with ``IMGRAG_BATCH_WAIT_S=0``
frees it instead: it submits and ends, and the next (scheduled) run collects.
"""

from __future__ import annotations

import math
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task

from imgrag.batch import FINISHED, BatchInference, BatchJob, Submission, record_id, use_batch
from imgrag.embedders import model_spec
from imgrag.pipeline import runtime_for
from imgrag.records import BatchResult, SourceObject
from imgrag.settings import Settings


class JobRunning(Exception):
    """A batch job is not finished yet: the polling task tries again after its delay."""


def _batch(settings: dict[str, Any], source: str) -> BatchInference:
    return BatchInference(runtime_for(Settings(**settings), source))


def _still_running(task: Task[..., Any], task_run: TaskRun, state: State) -> bool:
    return isinstance(state.data, JobRunning)


@task(name="pending-batch-jobs", cache_policy=NO_CACHE, persist_result=False)
def pending_batch_jobs(settings: dict[str, Any], source: str) -> list[tuple[BatchJob, list[str]]]:
    """The collection's jobs not collected yet (a crashed or detached run's), with their
    recordIds."""
    batch = _batch(settings, source)
    return [(job, sorted(batch.record_ids(job))) for job in batch.pending()]


@task(name="submit-batch-jobs", cache_policy=NO_CACHE, persist_result=False)
def submit_batch_jobs(settings: dict[str, Any], source: str, objects: list[SourceObject],
                      run_id: str) -> Submission:
    """Stage ``objects`` as JSONL in S3 and create their jobs."""
    return _batch(settings, source).submit(objects, run_id)


@task(name="check-batch-job", task_run_name="check-{job.name}", cache_policy=NO_CACHE,
      persist_result=False)
def check_batch_job(settings: dict[str, Any], source: str, job: BatchJob) -> BatchJob:
    """The job once finished; JobRunning (retried after the poll interval) until then."""
    job = _batch(settings, source).refresh(job)
    if job.status not in FINISHED:
        raise JobRunning(f"batch job {job.name} is {job.status}")
    return job


def wait_for_batch_job(settings: dict[str, Any], source: str, job: BatchJob) -> BatchJob | None:
    """The finished job, or None when it is still running after ``batch_wait_s``."""
    s = Settings(**settings)
    checks = check_batch_job.with_options(
        retries=math.ceil(s.batch_wait_s / s.batch_poll_s), retry_delay_seconds=s.batch_poll_s,
        retry_condition_fn=_still_running)
    try:
        return checks(settings, source, job)
    except JobRunning:
        return None


@task(name="collect-batch-job", task_run_name="collect-{job.name}", cache_policy=NO_CACHE,
      persist_result=False, retries=2)
def collect_batch_job(settings: dict[str, Any], source: str, job: BatchJob,
                      run_id: str) -> BatchResult:
    """Join a finished job's output on recordId and upsert it (idempotent: upsert by id)."""
    return _batch(settings, source).collect(job, run_id)


def embed_with_batch_jobs(
    settings: Settings, source: str, todo: list[SourceObject], run_id: str
) -> tuple[list[SourceObject], list[BatchResult], list[str]]:
    """Collect the collection's uncollected jobs, submit ``todo`` in new jobs when the mode
    says so, wait for them and collect them.

    Returns the objects left for InvokeModel (all of ``todo`` when no job is made, minus
    those already in an uncollected job), the jobs' results, and the new jobs' names."""
    plain = settings.public_dict()
    pending = pending_batch_jobs(plain, source)
    submitted = {rid for _, ids in pending for rid in ids}
    todo = [obj for obj in todo if record_id(obj) not in submitted]
    jobs = [job for job, _ in pending]
    results: list[BatchResult] = []
    names: list[str] = []
    if use_batch(settings.mode, len(todo), settings.batch_auto_threshold,
                 model_spec(settings.model_id).batch_inference):
        submission = submit_batch_jobs(plain, source, todo, run_id)
        results.append(BatchResult(failures=submission.failures,
                                   bytes_downloaded=submission.bytes_downloaded))
        jobs += submission.jobs
        names = [job.name for job in submission.jobs]
        todo = submission.leftover
    for job in jobs:
        finished = wait_for_batch_job(plain, source, job)
        if finished is not None:
            results.append(collect_batch_job(plain, source, finished, run_id))
    return todo, results, names
