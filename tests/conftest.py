"""Hermetic test environment: moto S3 server, the Titan emulator, Prefect's test harness.

Environment is set at import time, before Prefect, boto3 or Chroma read it.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

_SESSION_HOME = tempfile.mkdtemp(prefix="imgrag-tests-")
os.environ.update(
    {
        "PREFECT_HOME": os.path.join(_SESSION_HOME, "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "DO_NOT_TRACK": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
)
_TEST_POSTGRES_URL = os.environ.get("IMGRAG_TEST_POSTGRES_URL")  # read before IMGRAG_* go
_EMPTY = os.path.join(_SESSION_HOME, "empty")
open(_EMPTY, "w").close()
os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = _EMPTY  # not ~/.aws
for _var in list(os.environ):
    if _var.startswith(("IMGRAG_", "AWS_ENDPOINT_URL")) or _var in (
        "AWS_PROFILE", "AWS_SESSION_TOKEN", "PREFECT_API_URL", "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
    ):
        os.environ.pop(_var)
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)

import boto3  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from imgrag.emulators.bedrock import FakeBedrock  # noqa: E402
from imgrag.settings import Settings  # noqa: E402

Settings.model_config["env_file"] = None  # a developer's ./.env must not reach the tests

COLOURS = {
    "red": (220, 20, 30),
    "green": (30, 200, 40),
    "blue": (20, 40, 220),
    "yellow": (240, 220, 30),
}


def image_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48),
                fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A small image of mostly one colour, with a seed-dependent corner so bytes differ."""
    image = Image.new("RGB", size, colour)
    image.putpixel((0, 0), (seed % 256, (seed * 7) % 256, (seed * 13) % 256))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test harness (temporary API + database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on loopback, reached through AWS_ENDPOINT_URL_S3."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    os.environ["AWS_ENDPOINT_URL_S3"] = url
    yield url
    server.stop()
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)


@pytest.fixture
def s3(s3_server: str):
    """A boto3 S3 client against the moto server."""
    return boto3.client("s3", endpoint_url=s3_server)


@pytest.fixture
def bucket(s3) -> str:
    """A fresh, empty bucket per test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def bedrock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBedrock]:
    """The Titan emulator, reached through AWS_ENDPOINT_URL_BEDROCK_RUNTIME."""
    with FakeBedrock() as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.url)
        yield fake


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server with pgvector: IMGRAG_TEST_POSTGRES_URL when given, else one
    started from the pgserver wheel for the session."""
    if _TEST_POSTGRES_URL:
        yield _TEST_POSTGRES_URL
        return
    from imgrag.emulators.postgres import PostgresServer

    with PostgresServer(Path(_SESSION_HOME) / "pg") as server:
        yield server.url


@pytest.fixture
def pg_store_url(postgres_url: str) -> Iterator[str]:
    """A store URL naming a fresh table; the table and its catalog row go afterwards."""
    import psycopg

    from imgrag.emulators.postgres import with_table

    table = f"t_{uuid.uuid4().hex[:12]}"
    yield with_table(postgres_url, table)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        if conn.execute("SELECT to_regclass('imgrag_catalog')").fetchone()[0]:
            conn.execute("DELETE FROM imgrag_catalog WHERE name = %s", [table])


@pytest.fixture
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh embedded Chroma directory, set through IMGRAG_CHROMA_PATH."""
    path = tmp_path / "chroma"
    monkeypatch.setenv("IMGRAG_CHROMA_PATH", str(path))
    return path


class S3RequestLog(logging.Handler):
    """Counts requests the moto server answered, from its own (werkzeug) access log."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def object_gets(self, bucket: str) -> int:
        """GetObject requests on ``bucket`` (listings carry ``list-type=2`` and don't count)."""
        return sum(f'"GET /{bucket}/' in line and "list-type" not in line for line in self.lines)


@pytest.fixture
def s3_requests(s3_server: str) -> Iterator[S3RequestLog]:
    """The moto server's request log for the duration of a test."""
    log = S3RequestLog()
    logger = logging.getLogger("werkzeug")
    logger.addHandler(log)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield log
    logger.removeHandler(log)
    logger.setLevel(previous)


@pytest.fixture
def console_capfd(capfd: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """``capfd`` that also sees Prefect's console log lines, as a user's terminal does.

    Prefect's console handler keeps the stream pytest had installed when Prefect set up
    logging; here its rich console writes to whatever ``sys.stderr`` is at each line."""
    from prefect.logging.handlers import PrefectConsoleHandler

    consoles = [h.console for h in logging.getLogger().handlers
                if isinstance(h, PrefectConsoleHandler)]
    saved = [(c.file, c.stderr) for c in consoles]
    for console in consoles:
        console.file, console.stderr = None, True  # type: ignore[assignment]
    yield capfd
    for console, (file, stderr) in zip(consoles, saved, strict=True):
        console.file, console.stderr = file, stderr


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory):
    """A small catalog indexed through the real pipeline, once per test module."""
    from tests.retrieval import catalog_fixture

    yield from catalog_fixture(tmp_path_factory)


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch):
    """The fake OpenAI-compatible server, reached through OPENAI_BASE_URL."""
    from tests.fake_openai import API_KEY, FakeOpenAI

    with FakeOpenAI() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        yield fake
