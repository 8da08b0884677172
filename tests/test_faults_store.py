"""Store faults: a write that fails is retried alone (the batch is never embedded again), then
the run stops with one line and exit 2 having billed at most one batch; a store that comes
back within the retries loses nothing. Counted: Bedrock calls, records, ledger entries."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import chromadb
import pytest
from chromadb.api.models.Collection import Collection
from chromadb.errors import InternalError

from flows.ingest import main
from flows.ingest_flow import ingest_flow
from imgrag.emulators.chroma_server import ChromaServer
from imgrag.ledger import FailureLedger
from imgrag.pipeline import LEDGER_NAME
from tests import corpus

pytestmark = pytest.mark.usefixtures("prefect_harness")

IMAGES = 12
BATCH = 4
DISK_FULL = "error returned from database: (code: 13) database or disk is full"


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imgrag.store._WRITE_BACKOFF_S", 0.05)


@pytest.fixture
def photos(s3, bucket) -> tuple[str, set[str]]:
    """IMAGES small JPEGs under ``photos/``: the source URI and the record ids to expect."""
    for i in range(IMAGES):
        s3.put_object(Bucket=bucket, Key=f"photos/{i:02}.jpg", Body=corpus.small_jpeg(seed=i))
    return f"s3://{bucket}/photos/", {f"s3://{bucket}/photos/{i:02}.jpg" for i in range(IMAGES)}


def stored_ids(client: Any) -> list[str]:
    names = {c.name for c in client.list_collections()}
    if "images" not in names:
        return []
    return client.get_collection("images", embedding_function=None).get(include=[])["ids"]


def ledger_entries(state_dir) -> int:
    book = FailureLedger(state_dir / LEDGER_NAME, "images")
    try:
        return len(book.entries())
    finally:
        book.close()


class FailingWrites:
    """Chroma's ``Collection.upsert`` failing (as on a full disk) from its ``first``-th call
    on, counting the calls; ``heal`` makes it write again."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, first: int = 1) -> None:
        self.calls = 0
        self.first = first
        self.healed = False
        upsert = Collection.upsert

        def failing_upsert(collection: Collection, **kwargs: Any) -> None:
            self.calls += 1
            if self.calls >= self.first and not self.healed:
                raise InternalError(DISK_FULL)
            upsert(collection, **kwargs)

        monkeypatch.setattr(Collection, "upsert", failing_upsert)


def test_disk_full_bills_one_batch_retries_the_write_alone_then_exits_2_with_one_line(
    photos, bedrock, store_env, capfd, monkeypatch
):
    source, expected = photos
    monkeypatch.setenv("IMGRAG_STORE_WRITE_ATTEMPTS", "3")
    writes = FailingWrites(monkeypatch)

    code = main(["--source", source, "--batch-size", str(BATCH), "--concurrency", "2"])

    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("imgrag: error: cannot write 4 records"), err
    assert "disk is full" in err[0] and "after 3 attempts" in err[0]
    assert bedrock.stats.image_calls == BATCH  # one batch billed, never embedded again
    assert writes.calls == 3  # the write alone was retried
    assert stored_ids(chromadb.PersistentClient(path=str(store_env))) == []
    assert ledger_entries(store_env) == 0  # not the objects' fault

    writes.healed = True  # space freed: the next run embeds everything, once
    bedrock.reset_stats()
    report = ingest_flow(source=source, batch_size=BATCH, concurrency=2)

    assert (report.new, report.embedded, report.failed) == (IMAGES, IMAGES, 0)
    assert bedrock.stats.image_calls == IMAGES
    assert sorted(stored_ids(chromadb.PersistentClient(path=str(store_env)))) == sorted(expected)
    assert ledger_entries(store_env) == 0


def test_store_breaking_mid_run_stops_new_embedding_and_loses_no_stored_batch(
    photos, bedrock, store_env, monkeypatch
):
    source, expected = photos
    monkeypatch.setenv("IMGRAG_STORE_WRITE_ATTEMPTS", "2")
    writes = FailingWrites(monkeypatch, first=2)  # the first batch is stored

    with pytest.raises(Exception, match="disk is full") as raised:
        ingest_flow(source=source, batch_size=BATCH, concurrency=2)

    assert type(raised.value).__name__ == "StoreError"
    billed = bedrock.stats.image_calls
    assert 2 * BATCH <= billed <= 3 * BATCH  # batch 1, batch 2, what batch 3 had begun
    assert len(stored_ids(chromadb.PersistentClient(path=str(store_env)))) == BATCH

    writes.healed = True
    bedrock.reset_stats()
    report = ingest_flow(source=source, batch_size=BATCH, concurrency=2)

    assert (report.unchanged, report.embedded) == (BATCH, IMAGES - BATCH)
    assert bedrock.stats.image_calls == IMAGES - BATCH
    assert sorted(stored_ids(chromadb.PersistentClient(path=str(store_env)))) == sorted(expected)


@pytest.fixture
def chroma_server(tmp_path, monkeypatch) -> Iterator[ChromaServer]:
    server = ChromaServer(tmp_path / "server").start()
    monkeypatch.setenv("IMGRAG_CHROMA_URL", server.url)
    monkeypatch.setenv("IMGRAG_STATE_DIR", str(tmp_path / "state"))
    yield server
    server.stop()


def test_chroma_server_gone_then_back_within_the_retries_loses_and_re_bills_nothing(
    photos, bedrock, chroma_server, tmp_path, monkeypatch
):
    source, expected = photos
    upsert = Collection.upsert
    second_batch = f"{source}{BATCH:02}.jpg"
    attempts: Counter[str] = Counter()  # by a write's first id
    lock = threading.Lock()

    def server_gone_until_a_retry(collection: Collection, **kwargs: Any) -> None:
        with lock:  # a restart holds back the other writes until the server is up
            first = kwargs["ids"][0]
            attempts[first] += 1
            if first == second_batch and attempts[first] == 1:
                chroma_server.stop()  # gone before the second batch's write reaches it
            elif attempts[first] > 1 and not chroma_server.healthy():
                chroma_server.start()  # and back for the first retry of a write
        upsert(collection, **kwargs)

    monkeypatch.setattr(Collection, "upsert", server_gone_until_a_retry)
    report = ingest_flow(source=source, batch_size=BATCH, concurrency=2)

    assert attempts[second_batch] == 2  # the write failed once, then went through
    assert (report.embedded, report.failed) == (IMAGES, 0)
    assert bedrock.stats.image_calls == IMAGES  # nothing embedded twice
    client = chromadb.HttpClient(host=chroma_server.host, port=chroma_server.port)
    assert sorted(stored_ids(client)) == sorted(expected)
    assert ledger_entries(tmp_path / "state") == 0
