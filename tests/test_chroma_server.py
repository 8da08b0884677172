"""Chroma server mode and scale-out, against a real ``chroma run`` started here on loopback:
ingest, re-ingest and query over HTTP; the auth token header; shards running concurrently
into one server; the per-shard guard that keeps two runs of one shard apart."""

from __future__ import annotations

import http.client
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import chromadb
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.concurrency.sync import concurrency

from flows.ingest_flow import ingest_flow
from flows.query_flow import query_flow
from imgrag.emulators.chroma_server import ChromaServer
from imgrag.errors import StoreError, StoreLockedError
from imgrag.filters import QueryFilters
from imgrag.query import SearchRequest, resolve_where
from imgrag.records import IngestReport
from imgrag.settings import Settings
from imgrag.store import ImageStore
from imgrag.sync import in_shard
from tasks.guard import ensure_limit, ingest_limit_name
from tests.conftest import COLOURS, image_bytes
from tests.test_ingest_flow import put_colours

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """One real Chroma server for this module's tests (each test uses its own collections)."""
    with ChromaServer(tmp_path_factory.mktemp("chroma-server")) as server:
        yield server


@pytest.fixture
def server_env(chroma_server: ChromaServer, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> ChromaServer:
    """Server mode through the environment; a fresh collection and state dir per test."""
    monkeypatch.setenv("IMGRAG_CHROMA_URL", chroma_server.url)
    monkeypatch.setenv("IMGRAG_COLLECTION", f"t-{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("IMGRAG_STATE_DIR", str(tmp_path / "state"))
    return chroma_server


def records(server: ChromaServer, collection: str) -> dict[str, str]:
    """id → ETag of a collection, read with a fresh HTTP client."""
    client = chromadb.HttpClient(host=server.host, port=server.port)
    page = client.get_collection(collection, embedding_function=None).get(include=["metadatas"])
    return {rid: meta["etag"] for rid, meta in zip(page["ids"], page["metadatas"], strict=True)}


def test_server_mode_ingests_reingests_for_free_and_queries(s3, bucket, bedrock, server_env):
    collection = Settings().collection
    put_colours(s3, bucket)

    first = ingest_flow(source=f"s3://{bucket}/")
    assert (first.new, first.embedded, first.failed) == (4, 4, 0)
    assert set(records(server_env, collection)) == {f"s3://{bucket}/{c}.jpg" for c in COLOURS}

    bedrock.reset_stats()
    second = ingest_flow(source=f"s3://{bucket}/")
    assert (second.unchanged, second.embedded) == (4, 0)
    assert bedrock.stats.requests == 0

    assert query_flow("a blue object", k=2)[0].id == f"s3://{bucket}/blue.jpg"
    with pytest.raises(StoreError, match="cannot open Chroma store"):
        ImageStore.open(Settings(chroma_url="http://127.0.0.1:9"))  # nothing listens there


class _TokenCheckingProxy(BaseHTTPRequestHandler):
    """Forwards to the Chroma server only requests that carry the expected bearer token,
    as an authenticating reverse proxy in front of ``chroma run`` does."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    upstream: ClassVar[tuple[str, int]] = ("127.0.0.1", 0)
    token: ClassVar[str] = ""
    seen: ClassVar[list[str | None]] = []

    def _forward(self) -> None:
        auth = self.headers.get("Authorization")
        self.seen.append(auth)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if auth != f"Bearer {self.token}":
            status, payload, kind = 401, b'{"error":"Unauthorized"}', "application/json"
        else:
            upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            status, payload = response.status, response.read()
            kind = response.getheader("Content-Type", "application/json")
            upstream.close()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_auth_token_is_sent_as_bearer_header_on_every_request(
    s3, bucket, bedrock, server_env, monkeypatch
):
    # Chroma 1.x's Rust server has no built-in authentication: deployments put a proxy in
    # front of it. This proxy refuses requests without the token.
    handler = type("Proxy", (_TokenCheckingProxy,), {
        "upstream": (server_env.host, server_env.port), "token": "s3cret", "seen": []})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("IMGRAG_CHROMA_URL", f"http://127.0.0.1:{proxy.server_address[1]}")
        with pytest.raises(StoreError, match="cannot open Chroma store"):
            ImageStore.open(Settings())

        monkeypatch.setenv("IMGRAG_CHROMA_AUTH_TOKEN", "s3cret")
        handler.seen.clear()
        put_colours(s3, bucket)
        assert ingest_flow(source=f"s3://{bucket}/").embedded == 4
        assert query_flow("a green object", k=1)[0].id == f"s3://{bucket}/green.jpg"
        assert len(handler.seen) > 5 and set(handler.seen) == {"Bearer s3cret"}
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_server_lost_after_the_store_is_opened_is_a_one_line_store_error(server_env):
    # One connection per request (HTTP/1.0): once the proxy stops, connections are refused.
    handler = type("Proxy", (_TokenCheckingProxy,), {
        "protocol_version": "HTTP/1.0", "upstream": (server_env.host, server_env.port),
        "token": "t", "seen": []})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    settings = Settings(chroma_url=f"http://127.0.0.1:{proxy.server_address[1]}",
                        chroma_auth_token="t")
    store = ImageStore.open(settings)
    proxy.shutdown()
    proxy.server_close()

    name = settings.collection
    with pytest.raises(StoreError, match=rf"^cannot query collection '{name}': .*refused"):
        store.query([1.0] + [0.0] * (settings.dim - 1), k=1)
    with pytest.raises(StoreError, match=rf"^cannot read a record of collection '{name}': "):
        store.get_embedding("s3://b/k.jpg")
    request = SearchRequest(text="red", filters=QueryFilters(prefix="catalog/re"))
    with pytest.raises(StoreError, match=r"^cannot read the records under prefix 'catalog/re'"):
        resolve_where(store, request)


def run_shards(source: str, collection: str, count: int) -> list[IngestReport]:
    """Shards 0/N … N-1/N of one ingest, each in its own thread, all at once."""
    reports: list[IngestReport | BaseException | None] = [None] * count

    def run(index: int) -> None:
        try:
            reports[index] = ingest_flow(source=source, collection=collection,
                                         shard=f"{index}/{count}")
        except BaseException as exc:  # re-raised below, in the test's thread
            reports[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for report in reports:
        if isinstance(report, BaseException):
            raise report
    return reports  # type: ignore[return-value]


def test_two_shards_at_once_build_the_same_collection_as_one_unsharded_run(
    s3, bucket, bedrock, server_env
):
    bedrock.latency_ms = 20  # keeps both shards busy at the same time
    keys = [f"img/{i:03d}.jpg" for i in range(24)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=image_bytes(COLOURS["blue"], seed=i))
    source = f"s3://{bucket}/img/"

    single = ingest_flow(source=source, collection="single-run")
    assert single.embedded == 24
    bedrock.reset_stats()
    shards = run_shards(source, "sharded-run", 2)

    assert sorted(r.listed for r in shards) != [0, 24]  # both shards had work
    assert sum(r.embedded for r in shards) == 24 and bedrock.stats.image_calls == 24
    assert records(server_env, "sharded-run") == records(server_env, "single-run")

    # Deletions stay inside a shard: shard 0 removes only its own deleted object.
    uris = [f"s3://{bucket}/{key}" for key in keys]
    gone = [next(u for u in uris if in_shard(u, (index, 2))) for index in (0, 1)]
    for uri in gone:
        s3.delete_object(Bucket=bucket, Key=uri.removeprefix(f"s3://{bucket}/"))
    bedrock.reset_stats()
    shard0 = ingest_flow(source=source, collection="sharded-run", shard="0/2")
    assert (shard0.deleted, shard0.embedded, bedrock.stats.requests) == (1, 0, 0)
    left = records(server_env, "sharded-run")
    assert (gone[0] in left, gone[1] in left) == (False, True)
    shard1 = ingest_flow(source=source, collection="sharded-run", shard="1/2")
    assert shard1.deleted == 1
    assert records(server_env, "sharded-run").keys() == set(uris) - set(gone)


def test_a_second_run_of_a_running_shard_is_refused_and_other_shards_proceed(
    s3, bucket, bedrock, server_env
):
    collection = Settings().collection
    put_colours(s3, bucket)
    source = f"s3://{bucket}/"
    held = ingest_limit_name(collection, "0/2")
    ensure_limit(held)

    with concurrency(held, occupy=1, strict=True):  # a run of shard 0 in progress elsewhere
        with pytest.raises(StoreLockedError, match=r"another ingest of collection .* shard 0/2"):
            ingest_flow(source=source, shard="0/2")
        other = ingest_flow(source=source, shard="1/2")
    assert other.failed == 0

    after = ingest_flow(source=source, shard="0/2")
    assert after.embedded + other.embedded == 4
    assert len(records(server_env, collection)) == 4

    # Switched off in the UI (inactive), the limit guards nothing.
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(held, GlobalConcurrencyLimitUpdate(active=False))
    with concurrency(held, occupy=1):
        assert ingest_flow(source=source, shard="0/2").unchanged == after.embedded
