"""The notebook API writes an embedded store only under its writer lock: while another
process (an ingest) holds it, an upsert or the creation of a store is refused at once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from imgrag import build_image_records, get_chroma_collection, upsert_images_to_chroma
from imgrag.errors import StoreLockedError
from tests.conftest import COLOURS, image_bytes
from tests.processes import kill_group

_HOLD_LOCK = """
import sys, time
from imgrag.lock import WriterLock
WriterLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def hold_lock(store) -> subprocess.Popen[bytes]:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(store)],
                              stdout=subprocess.PIPE, start_new_session=True)
    assert holder.stdout.readline() == b"held\n"
    return holder


def test_notebook_upsert_is_refused_while_another_process_holds_the_writer_lock(
    tmp_path, bedrock
):
    store = tmp_path / "store"
    photo = tmp_path / "red.jpg"
    photo.write_bytes(image_bytes(COLOURS["red"], seed=1))
    records = build_image_records(["red.jpg"], [photo])
    collection = get_chroma_collection(store, "things")
    holder = hold_lock(store)
    try:
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            upsert_images_to_chroma(collection, records)
        assert collection.count() == 0 and bedrock.stats.requests == 0
        get_chroma_collection(store, "things")  # opening an existing collection still works
        with pytest.raises(StoreLockedError):  # creating one is a write
            get_chroma_collection(store, "others")
    finally:
        kill_group(holder)

    assert upsert_images_to_chroma(collection, records) == []
    assert collection.count() == 1
