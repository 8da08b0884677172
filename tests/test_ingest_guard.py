"""The server-mode guard at the Prefect server: shards of one N run side by side; an
unsharded run, a second run of a shard, or a run with another N is refused while shards
run; the guard of one collection leaves others alone."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from imgrag.errors import StoreLockedError
from tasks.guard import exclusive_ingest

pytestmark = pytest.mark.usefixtures("prefect_harness")

URL = "http://chroma.test:8000"  # the guard only needs to know it is server mode


def refused(collection: str, shard: str | None) -> bool:
    try:
        with exclusive_ingest(URL, collection, shard):
            return False
    except StoreLockedError:
        return True


def test_shards_of_one_n_run_together_and_conflicting_runs_are_refused():
    with ExitStack() as running:
        running.enter_context(exclusive_ingest(URL, "guarded", "0/2"))
        assert not refused("guarded", "1/2")  # the other shard of the same N
        running.enter_context(exclusive_ingest(URL, "guarded", "1/2"))
        assert refused("guarded", None)  # unsharded over the same records
        assert refused("guarded", "0/1")  # the same thing, spelled as a shard
        assert refused("guarded", "0/2")  # a second run of a running shard
        assert refused("guarded", "2/3")  # another N would overlap the running shards
        assert not refused("elsewhere", None)  # other collections are not affected

    with exclusive_ingest(URL, "guarded", None):
        assert refused("guarded", None)
        assert refused("guarded", "1/2")
    assert not refused("guarded", "2/3")  # nothing runs: a new N may start


def test_a_refused_run_leaves_no_slot_behind():
    with exclusive_ingest(URL, "tidy", "0/2"):
        assert refused("tidy", "0/2") and refused("tidy", "0/4")
        assert not refused("tidy", "1/2")
    assert not refused("tidy", None)
