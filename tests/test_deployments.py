"""The deployments in prefect.yaml and deployments/serve.py, against a real Prefect server
(``prefect server start``) started here on loopback, driven with the documented commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Pending, State

from deployments.serve import build_deployments, main
from flows.ingest_flow import ingest_flow
from imgrag.emulators.chroma_server import free_port
from imgrag.errors import ConfigError
from tests.processes import default_sigint

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
SOURCE = "s3://photos/catalog/"


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``condition``; fail with the child's log if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {what} (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal the child's process group; kill it if it has not exited after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect-server-home")


@pytest.fixture(scope="module")
def prefect_server(prefect_home: Path) -> Iterator[str]:
    """``prefect server start`` (API only) on a free loopback port; yields its API URL."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(prefect_home)}
    env.pop("PREFECT_API_URL", None)
    log = prefect_home / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port),
             "--no-ui", "--no-services"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_for(healthy, 120, "healthy Prefect server", proc, log)
        yield url
    finally:
        stop(proc)


@pytest.fixture
def cli_env(prefect_server: str, prefect_home: Path) -> dict[str, str]:
    """The environment a user's shell has after ``export PREFECT_API_URL=...``."""
    return {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_API_URL": prefect_server}


def deployment(api_url: str, name: str) -> DeploymentResponse:
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def cli(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def test_prefect_deploy_all_creates_the_declared_deployments_and_the_server_enforces_them(
    prefect_server, cli_env
):
    cli([PREFECT, "work-pool", "create", "imgrag-process", "--type", "process", "--overwrite"],
        cli_env)
    cli([PREFECT, "--no-prompt", "deploy", "--all"], {**cli_env, "IMGRAG_SOURCE": SOURCE})

    ingest = deployment(prefect_server, "ingest-images/ingest")
    assert ingest.entrypoint == "flows/ingest_flow.py:ingest_flow"
    assert ingest.work_pool_name == "imgrag-process"
    assert ingest.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    assert ingest.parameters == {"source": SOURCE, "collection": "images", "dim": 1024,
                                 "batch_size": 128, "concurrency": 32}
    [schedule] = ingest.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == (
        "0 * * * *", "UTC", True)
    assert ingest.global_concurrency_limit.limit == 1
    assert ingest.concurrency_options.collision_strategy == "ENQUEUE"

    shard = deployment(prefect_server, "ingest-images/ingest-shard")
    assert shard.parameters == {**ingest.parameters, "shard": ""}  # required: no default
    assert (shard.schedules, shard.global_concurrency_limit) == ([], None)

    query = deployment(prefect_server, "query-images/query")
    assert query.entrypoint == "flows/query_flow.py:query_flow"
    assert (query.parameters, query.schedules) == ({"k": 8, "collection": "images"}, [])
    assert "text" in query.parameter_openapi_schema["properties"]

    # The server holds a second ingest run back while one is starting or running; shard
    # runs are not serialized by their deployment (the flow guards each shard itself).
    assert [s.name for s in start_two_runs(prefect_server, ingest)] == [
        "Pending", "AwaitingConcurrencySlot"]
    assert [s.name for s in start_two_runs(prefect_server, shard)] == ["Pending", "Pending"]


def start_two_runs(api_url: str, target: DeploymentResponse) -> list[State]:
    """Create two runs of ``target`` and ask the server to let both start (go Pending), as
    a worker does; the states the server answers with. The runs are deleted then: the one
    held back is rescheduled ~30 s later, and a runner serving the deployment by then (the
    serve test, on a loaded machine) would pick it up and run an ingest."""
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = [client.create_flow_run_from_deployment(target.id) for _ in range(2)]
        try:
            return [client.set_flow_run_state(run.id, Pending()).state for run in runs]
        finally:
            for run in runs:
                client.delete_flow_run(run.id)


def test_serve_registers_ingest_and_query_with_the_schedule_and_pauses_on_stop(
    prefect_server, cli_env, tmp_path
):
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "deployments/serve.py", "--source", SOURCE, "--collection", "served"],
            cwd=REPO, env=cli_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=default_sigint)
    try:
        def served() -> bool:  # registered by serve.py, and its runner is polling for runs
            try:
                found = deployment(prefect_server, "ingest-images/ingest")
            except ObjectNotFound:
                return False
            return found.parameters.get("collection") == "served" and found.status == "READY"

        wait_for(served, 90, "served deployments", proc, log)
        ingest = deployment(prefect_server, "ingest-images/ingest")
        assert ingest.parameters["source"] == SOURCE and not ingest.paused
        query = deployment(prefect_server, "query-images/query")
        assert query.parameters == {"k": 8, "collection": "served"}
        assert [(s.schedule.cron, s.active) for s in ingest.schedules] == [("0 * * * *", True)]
        assert ingest.global_concurrency_limit.limit == 1
    finally:
        stop(proc, signal.SIGINT)
    assert deployment(prefect_server, "ingest-images/ingest").paused  # stopping pauses it


def test_serve_takes_everything_from_prefect_yaml_and_needs_a_source(monkeypatch, capsys):
    monkeypatch.delenv("IMGRAG_SOURCE", raising=False)
    with pytest.raises(ConfigError, match="IMGRAG_SOURCE"):
        build_deployments()
    assert main([]) == 2
    assert "no ingest source" in capsys.readouterr().err

    monkeypatch.setenv("IMGRAG_SOURCE", SOURCE)
    ingest, query = build_deployments(cron="*/5 * * * *")
    assert ingest.parameters["source"] == SOURCE
    assert [s.schedule.cron for s in ingest.schedules] == ["*/5 * * * *"]
    assert (ingest.concurrency_limit, ingest.concurrency_options.collision_strategy) == (
        1, "ENQUEUE")
    assert query.parameters == {"k": 8, "collection": "images"} and not query.schedules


@pytest.mark.usefixtures("prefect_harness")
def test_ingest_run_without_a_source_fails_instead_of_indexing_the_working_directory():
    # What a deployment made without IMGRAG_SOURCE set runs with: source "".
    with pytest.raises(ConfigError, match="no source given"):
        ingest_flow(source="")


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serving would block this test: fail it instead if serve.py gets that far."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("serve() was called")

    monkeypatch.setattr("deployments.serve.serve", refuse)


def test_serve_refuses_to_start_without_a_prefect_api_url(no_serving, monkeypatch, capsys):
    # Without it, serve() would run against a temporary server: schedules vanish on exit.
    monkeypatch.setenv("IMGRAG_SOURCE", SOURCE)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgrag: error: PREFECT_API_URL is not set") and err.count("\n") == 1


def test_serve_rejects_an_invalid_cron_with_one_line(no_serving, capsys):
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert main(["--source", SOURCE, "--cron", "61 * * * *"]) == 2
    assert capsys.readouterr().err == 'imgrag: error: --cron: Invalid cron string: "61 * * * *"\n'
