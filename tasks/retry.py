"""When a Prefect task is retried: on unexpected (infrastructure) errors only."""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task

from imgrag.errors import ImgragError


def retry_unless_run_error(task: Task[..., Any], task_run: TaskRun, state: State) -> bool:
    """``retry_condition_fn``: retry unexpected errors, never an ImgragError (bad input,
    no access, a store that cannot be used): a retry would fail the same way, and could
    pay Bedrock twice."""
    return not isinstance(state.data, ImgragError)
