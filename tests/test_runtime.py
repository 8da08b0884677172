"""The per-process Runtime: what it opens it closes, and opening one never stalls another."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from imgrag.errors import StoreError
from imgrag.pipeline import Runtime, close_runtime, hold_runtime, process_batch, runtime_for
from imgrag.settings import Settings
from imgrag.store import ImageStore
from tests.conftest import COLOURS, image_bytes


def connections_to(*urls: str) -> set[tuple]:
    """This process's open TCP connections to the servers at ``urls`` (client side)."""
    ports = {int(url.rsplit(":", 1)[1]) for url in urls}
    return {(c.laddr, c.raddr) for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port in ports and c.status == psutil.CONN_ESTABLISHED}


def open_files_named(name: str) -> list[str]:
    return [f.path for f in psutil.Process().open_files() if Path(f.path).name == name]


def test_closing_a_runtime_closes_its_clients_and_files(s3, bucket, s3_server, bedrock,
                                                        tmp_path):
    s3.put_object(Bucket=bucket, Key="red.jpg", Body=image_bytes(COLOURS["red"]))
    before = connections_to(s3_server, bedrock.url)
    rt = Runtime.open(Settings(chroma_path=tmp_path / "db"), f"s3://{bucket}/")
    assert process_batch(rt, list(rt.source.list_objects()), "run").upserted == 1
    assert connections_to(s3_server, bedrock.url) - before  # keep-alive S3 and Bedrock

    rt.close()

    assert connections_to(s3_server, bedrock.url) - before == set()
    assert open_files_named("imgrag-ledger.sqlite3") == []


def test_a_failed_open_closes_what_it_had_opened(s3, bucket, s3_server, tmp_path):
    ImageStore.open(Settings(chroma_path=tmp_path / "db", dim=256))
    folder = tmp_path / "photos"
    folder.mkdir()
    before = connections_to(s3_server)

    for source in (f"s3://{bucket}/", str(folder)):
        with pytest.raises(StoreError, match="dim 256") as failed:
            Runtime.open(Settings(chroma_path=tmp_path / "db", dim=1024), source)
        # The traceback (alive here) still references the opened source: only an explicit
        # close releases its S3 connection and its hash-cache file.
        assert failed.traceback
        assert connections_to(s3_server) - before == set()
        assert open_files_named("local-hashes.sqlite3") == []


class SlowS3:
    """An S3 endpoint whose ListObjectsV2 answers (empty) only once ``release`` is set."""

    def __init__(self) -> None:
        self.listed = threading.Event()
        self.release = threading.Event()
        self.timed_out = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.listed.set()
                outer.timed_out = not outer.release.wait(timeout=15)
                body = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns='
                        b'"http://s3.amazonaws.com/doc/2006-03-01/"><Name>slow-bucket</Name>'
                        b"<KeyCount>0</KeyCount><MaxKeys>1</MaxKeys>"
                        b"<IsTruncated>false</IsTruncated></ListBucketResult>")
                self.send_response(200)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_runtime_slow_to_open_does_not_hold_up_another_runs_runtime(tmp_path, bedrock,
                                                                      monkeypatch):
    slow = SlowS3()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", slow.url)
    settings = Settings(chroma_path=tmp_path / "db")
    folder = tmp_path / "photos"
    folder.mkdir()
    opened: list[Runtime] = []
    opening = threading.Thread(
        target=lambda: opened.append(hold_runtime(settings, "s3://slow-bucket/")))
    try:
        opening.start()
        assert slow.listed.wait(timeout=30)  # that run is inside Runtime.open, on the network

        other = runtime_for(settings, str(folder))

        assert not slow.release.is_set() and not slow.timed_out
        assert other.source.scope == folder.resolve().as_uri() + "/"
        slow.release.set()
        opening.join(timeout=30)
        assert opened and opened[0].source.scope == "s3://slow-bucket/"
    finally:
        slow.close()
        opening.join(timeout=30)
        close_runtime(settings, "s3://slow-bucket/")
        close_runtime(settings, str(folder))
