"""One writer per embedded store: a second ingest is refused at once with a message naming
the lock file; a lock left by a killed process never blocks the next run."""

from __future__ import annotations

import subprocess
import sys
import time

import chromadb
import pytest

from flows.ingest import main
from flows.ingest_flow import ingest_flow
from imgrag.errors import StoreLockedError
from imgrag.lock import LOCK_NAME, WriterLock, check_unlocked
from tests import corpus
from tests.processes import kill_group, spawn_ingest, wait_until

pytestmark = pytest.mark.usefixtures("prefect_harness")

_HOLD_LOCK = """
import sys, time
from imgrag.lock import WriterLock
WriterLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_second_ingest_on_the_same_store_is_refused_at_once_and_runs_after_the_holder_is_killed(
    s3, bucket, bedrock, store_env, tmp_path, capfd
):
    for i in range(20):
        s3.put_object(Bucket=bucket, Key=f"{i:02}.jpg", Body=corpus.small_jpeg(seed=i))
    source = f"s3://{bucket}/"
    bedrock.latency_ms = 200
    holder = spawn_ingest(["--source", source, "--concurrency", "1"], tmp_path)
    try:
        wait_until(lambda: bedrock.stats.requests >= 1, 90, "the first run to embed", holder)

        started = time.perf_counter()
        code = main(["--source", source])
        refused_in = time.perf_counter() - started
        err = capfd.readouterr().err.strip().splitlines()
        assert code == 2 and refused_in < 5
        assert len(err) == 1 and err[0].startswith("imgrag: error: ")
        assert str(store_env / LOCK_NAME) in err[0] and f"pid {holder.pid}" in err[0]
        with pytest.raises(StoreLockedError):  # the flow itself takes the lock too
            ingest_flow(source=source)
        assert holder.poll() is None  # the first run was not disturbed
    finally:
        kill_group(holder)

    bedrock.latency_ms = 0
    assert main(["--source", source]) == 0
    page = chromadb.PersistentClient(path=str(store_env)).get_collection(
        "images", embedding_function=None).get()
    assert sorted(page["ids"]) == sorted(f"s3://{bucket}/{i:02}.jpg" for i in range(20))


def test_lock_of_a_killed_process_is_released_by_the_kernel(tmp_path):
    store = tmp_path / "store"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(store)],
                              stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert holder.stdout.readline() == b"held\n"
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            check_unlocked(store)
        with pytest.raises(StoreLockedError, match=LOCK_NAME):
            WriterLock(store).acquire()
        check_unlocked(tmp_path / "another-store")  # other stores are not affected
    finally:
        kill_group(holder)

    assert (store / LOCK_NAME).read_text() == str(holder.pid)  # the stale file is still there
    check_unlocked(store)
    with WriterLock(store):
        assert (store / LOCK_NAME).read_text() != str(holder.pid)
