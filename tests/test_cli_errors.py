"""Run-level failures of ``python -m flows.ingest``: exit status 2, one line on stderr, and
nothing written (no store directory, no state files, no records)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flows.ingest import main
from tests import corpus
from tests.processes import closed_port

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory (where relative default paths would land)."""
    path = tmp_path / "cwd"
    path.mkdir()
    monkeypatch.chdir(path)
    return path


def run_cli(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    out, err = capfd.readouterr()
    return code, err.strip().splitlines(), out


def assert_one_line_error_and_nothing_written(
    result: tuple[int, list[str], str], expected: str, store: Path, workdir: Path
) -> None:
    code, err, out = result
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("imgrag: error: ") and expected in err[0], err[0]
    assert out == ""
    assert not store.exists()
    assert list(workdir.iterdir()) == []


class _AccessDenied(BaseHTTPRequestHandler):
    """An S3 endpoint that refuses everything, the way S3 does (403 + XML error)."""

    disable_nagle_algorithm = True
    body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
            b"<Message>Access Denied</Message><RequestId>1</RequestId></Error>")

    def _deny(self) -> None:
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.body)

    do_GET = do_HEAD = do_PUT = do_POST = _deny

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def denying_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AccessDenied)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS credentials anywhere boto3 looks (env, shared files; IMDS is disabled)."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        empty = tmp_path / var.lower()
        empty.write_text("")
        monkeypatch.setenv(var, str(empty))


def test_missing_bucket_exits_2_with_one_line(s3_server, store_env, workdir, capfd):
    result = run_cli(capfd, "--source", "s3://no-such-bucket-imgrag/photos/")
    assert_one_line_error_and_nothing_written(
        result, "bucket 'no-such-bucket-imgrag' does not exist", store_env, workdir)


@pytest.mark.parametrize(
    "source",
    ["s3://Upper-Case/", "s3://ab/", "s3://a..b/", "s3://-dash/", "s3://under_score/",
     "s3:///no-bucket", "s3://192.168.1.10/", "s3://xn--reserved/", "s3://name-s3alias/",
     "s3://bucket/" + "p" * 1025, "s3://bucket/bad-\udcff-utf8"],
)
def test_invalid_bucket_or_prefix_exits_2_before_any_request(source, store_env, workdir, capfd):
    result = run_cli(capfd, "--source", source)
    assert_one_line_error_and_nothing_written(result, "S3 ", store_env, workdir)


def test_no_credentials_exits_2_for_s3_source(
    s3_server, bucket, no_credentials, store_env, workdir, capfd
):
    result = run_cli(capfd, "--source", f"s3://{bucket}/")
    assert_one_line_error_and_nothing_written(result, "no AWS credentials", store_env, workdir)


def test_no_credentials_exits_2_for_local_folder_before_bedrock_is_called(
    tmp_path, bedrock, no_credentials, store_env, workdir, capfd
):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(corpus.small_jpeg())
    result = run_cli(capfd, "--source", str(folder))
    assert_one_line_error_and_nothing_written(
        result, "no AWS credentials found for Bedrock", store_env, workdir)
    assert bedrock.stats.requests == 0


def test_access_denied_exits_2_with_one_line(denying_s3, store_env, workdir, capfd):
    result = run_cli(capfd, "--source", "s3://private-bucket/x/")
    assert_one_line_error_and_nothing_written(
        result, "access denied to bucket 'private-bucket'", store_env, workdir)


def test_unreachable_chroma_server_exits_2_with_one_line(
    s3, bucket, store_env, workdir, capfd
):
    url = f"http://127.0.0.1:{closed_port()}"
    result = run_cli(capfd, "--source", f"s3://{bucket}/", "--chroma-url", url)
    assert_one_line_error_and_nothing_written(
        result, f"cannot open Chroma store at {url}", store_env, workdir)


def test_store_path_that_is_a_file_exits_2_with_one_line(s3, bucket, workdir, capfd):
    blocker = workdir.parent / "not-a-dir"
    blocker.write_text("a file")
    code, err, _ = run_cli(capfd, "--source", f"s3://{bucket}/", "--chroma-path", str(blocker))
    assert code == 2 and len(err) == 1 and "cannot use store directory" in err[0]
    assert blocker.read_text() == "a file"


def test_missing_local_folder_exits_2_with_one_line(store_env, workdir, capfd):
    result = run_cli(capfd, "--source", str(workdir / "nowhere"))
    assert_one_line_error_and_nothing_written(result, "does not exist", store_env, workdir)


def test_invalid_setting_exits_2_with_one_line(s3, bucket, store_env, workdir, capfd):
    result = run_cli(capfd, "--source", f"s3://{bucket}/", "--batch-size", "0")
    assert_one_line_error_and_nothing_written(result, "invalid batch_size", store_env, workdir)


def test_bedrock_access_denied_mid_run_exits_2_without_traceback_or_records(
    s3, bucket, bedrock, store_env, workdir, capfd
):
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=corpus.small_jpeg())
    bedrock.fail_next(50, "AccessDeniedException")

    code, err, out = run_cli(capfd, "--source", f"s3://{bucket}/")

    assert code == 2 and out == ""
    assert err[-1] == ("imgrag: error: access denied to Bedrock model"
                       " amazon.titan-embed-image-v1")
    assert not any("Traceback" in line for line in err), err
    assert bedrock.stats.requests == 1  # run-fatal: not retried
    assert bedrock.stats.image_calls == 0
