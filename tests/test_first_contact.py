"""What a new user meets first, run as a user runs it (child processes, no Prefect harness):
cheap --help and input errors, a terminal query that needs no Prefect server, and a
Prefect API that cannot be reached (or a temporary server that cannot start) as one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import closed_port
from tests.retrieval import Catalog

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("prefect", "chromadb", "boto3", "botocore")


def child_env(**extra: str) -> dict[str, str]:
    """The test session's hermetic environment, with no Prefect API configured."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -X importtime ARGS`` from the repository root."""
    return subprocess.run([sys.executable, "-X", "importtime", *args], cwd=REPO,
                          env=env or child_env(), capture_output=True, text=True,
                          timeout=timeout)


def imported(stderr: str) -> set[str]:
    """Top-level packages named by -X importtime's report."""
    return {m.group(1) for m in re.finditer(r"^import time:.*\|\s+([\w]+)", stderr, re.M)}


def messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


@pytest.mark.parametrize("args, status, expected", [
    (["-m", "flows.query", "--help"], 0, None),
    (["-m", "flows.ingest", "--help"], 0, None),
    (["-m", "flows.query", "red", "-k", "0"], 2, "invalid k"),
    (["-m", "flows.query", "red", "-k", "1000000000000"], 2, "invalid k"),
    (["-m", "flows.query", "red", "--where", '{"$where": "1"}'], 2, "unknown operator"),
    (["-m", "flows.query", "red", "--where", "[" * 50_000 + "]" * 50_000], 2, "deeper than"),
    (["-m", "flows.query", "red", "--modified-after", "yesterday"], 2, "invalid date"),
    (["-m", "flows.query", "--image", "/no/such.jpg"], 2, "not found"),
    (["-m", "flows.ingest", "--source", "/no/such/folder"], 2, "/no/such/folder"),
    (["-m", "flows.ingest", "--source", "s3://Bad_Bucket/"], 2, "invalid S3 bucket name"),
    (["-m", "flows.ingest", "--source", ".", "--batch-size", "0"], 2, "batch_size"),
])
def test_help_and_input_errors_load_no_heavy_library(args, status, expected):
    done = run(*args)

    assert done.returncode == status, done.stderr[-2000:]
    assert imported(done.stderr).isdisjoint(HEAVY), imported(done.stderr) & set(HEAVY)
    if expected is None:
        assert done.stdout.startswith("usage: python -m flows.")
    else:
        [line] = messages(done.stderr)
        assert line.startswith("imgrag: error: ") and expected in line, line


def test_a_query_argument_that_is_not_utf8_is_one_line():
    done = subprocess.run([sys.executable.encode(), b"-m", b"flows.query", b"red\xff"],
                          cwd=REPO, env=child_env(), capture_output=True, timeout=120)

    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [
        "imgrag: error: the query text is not valid UTF-8 (check the terminal's locale): "
        "red\\udcff"]


def test_a_terminal_query_without_a_prefect_api_runs_in_process(catalog: Catalog, tmp_path):
    env = child_env(AWS_ENDPOINT_URL_BEDROCK_RUNTIME=catalog.bedrock.url,
                    PREFECT_HOME=str(tmp_path / "prefect-home"))

    done = run("-m", "flows.query", "red", "-k", "3", "--chroma-path",
               str(catalog.settings.chroma_path), "--collection", catalog.settings.collection,
               env=env)

    assert done.returncode == 0, done.stderr[-2000:]
    keys = [line.split()[2].rsplit("/", 1)[-1] for line in done.stdout.splitlines()]
    assert len(keys) == 3 and all(k.startswith("red-") for k in keys), done.stdout
    assert "prefect" not in imported(done.stderr)  # no flow, no temporary server
    assert messages(done.stderr) == []
    assert not (tmp_path / "prefect-home").exists()


def test_an_unreachable_prefect_api_is_one_line_and_exit_2(tmp_path):
    api = f"http://127.0.0.1:{closed_port()}/api"
    env = child_env(PREFECT_API_URL=api)
    (tmp_path / "photos").mkdir()

    done = run("-m", "flows.ingest", "--source", str(tmp_path / "photos"), "--chroma-path",
               str(tmp_path / "store"), env=env)

    assert done.returncode == 2, done.stderr[-2000:]
    assert messages(done.stderr) == [
        f"imgrag: error: cannot reach the Prefect API at {api} (check PREFECT_API_URL and "
        "that the server is running)"]


def test_a_temporary_server_that_cannot_start_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "photos").mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = child_env(  # a database the server can never open, so it never becomes healthy
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{blocker}/no/prefect.db",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="3",
    )

    done = run("-m", "flows.ingest", "--source", str(tmp_path / "photos"), "--chroma-path",
               str(tmp_path / "store"), env=env)

    assert done.returncode == 2, done.stderr[-3000:]
    lines = messages(done.stderr)
    assert "Traceback" not in done.stderr
    assert lines[0].startswith("imgrag: starting a temporary Prefect server for this ingest "
                               "(up to 3 s on a busy machine); run `prefect server start`")
    errors = [line for line in lines if line.startswith("imgrag: error: ")]
    assert errors == [
        "imgrag: error: the temporary Prefect server did not start within 3 s; run `prefect "
        "server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api to skip this (or "
        "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"]
