"""S3 faults: a connection dropped in the middle of an object's body is a transient download
failure for that object alone (not paid for, not in the ledger); the next run fetches it.
S3 is moto behind a proxy that cuts chosen responses short."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import urlsplit

import chromadb
import pytest

from flows.ingest_flow import ingest_flow
from imgrag.ledger import FailureLedger
from imgrag.pipeline import LEDGER_NAME
from tests import corpus

pytestmark = pytest.mark.usefixtures("prefect_harness")


class _CuttingProxy(BaseHTTPRequestHandler):
    """Forwards to moto; the first GetObject of each path in ``cut`` sends its headers and
    half its body, then the connection is closed."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    upstream: ClassVar[tuple[str, int]] = ("127.0.0.1", 0)
    cut: ClassVar[set[str]] = set()

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        response = upstream.getresponse()
        payload = response.read()
        upstream.close()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("content-length", "transfer-encoding", "connection",
                                    "date", "server"):
                self.send_header(name, value)
        length = int(response.getheader("Content-Length") or len(payload))
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "GET" and self.path in self.cut:
            self.cut.discard(self.path)
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def cutting_s3(s3_server, monkeypatch) -> Iterator[type[_CuttingProxy]]:
    """The proxy in front of moto, as the S3 endpoint imgrag uses."""
    url = urlsplit(s3_server)
    handler = type("Proxy", (_CuttingProxy,), {"upstream": (url.hostname, url.port),
                                                "cut": set()})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{proxy.server_address[1]}")
    yield handler
    proxy.shutdown()
    proxy.server_close()


def test_connection_dropped_mid_body_fails_that_object_transiently_and_the_next_run_gets_it(
    s3, bucket, bedrock, store_env, cutting_s3
):
    for i in range(6):
        s3.put_object(Bucket=bucket, Key=f"p/{i}.jpg", Body=corpus.small_jpeg(seed=i))
    cutting_s3.cut |= {f"/{bucket}/p/1.jpg", f"/{bucket}/p/4.jpg"}
    source = f"s3://{bucket}/p/"

    report = ingest_flow(source=source, concurrency=2)

    assert (report.embedded, report.failed) == (4, 2)
    assert sorted(f.id for f in report.failures) == [f"{source}1.jpg", f"{source}4.jpg"]
    assert all((f.stage, f.permanent) == ("download", False) for f in report.failures)
    assert bedrock.stats.image_calls == 4  # nothing paid for a broken download
    book = FailureLedger(store_env / LEDGER_NAME, "images")
    assert book.entries() == []
    book.close()

    bedrock.reset_stats()
    rerun = ingest_flow(source=source)

    assert (rerun.unchanged, rerun.new, rerun.embedded, rerun.failed) == (4, 2, 2, 0)
    assert bedrock.stats.image_calls == 2
    ids = chromadb.PersistentClient(path=str(store_env)).get_collection(
        "images", embedding_function=None).get(include=[])["ids"]
    assert sorted(ids) == [f"{source}{i}.jpg" for i in range(6)]
