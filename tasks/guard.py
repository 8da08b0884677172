"""No two ingests over the same records of a collection on a Chroma server, on any worker.

An embedded store is guarded by its file lock (``imgrag.lock``), which only one host can
see. Runs writing to a Chroma server may start on any Prefect worker, so they meet at the
Prefect server instead, in global concurrency limits created on first use and held (with
a lease the client renews) for the whole run:

- ``imgrag-ingest:<collection>``: one slot per running shard, its capacity set to the N
  of the shard runs in progress (an unsharded run is shard 0 of 1: capacity 1, exclusive);
- ``imgrag-ingest:<collection>:shard-<i>-of-<n>``: one slot, so a shard runs once at a time;
- ``imgrag-ingest:<collection>:admit``: held for a moment while a run checks the running N
  and takes its slots, so two starting runs never both pass.

So shards of one N run side by side; a run of another N (or an unsharded run) is refused at
once with a one-line error while any shard runs, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.runtime import flow_run

from imgrag.errors import StoreError, StoreLockedError
from imgrag.sync import parse_shard

ADMIT_WAIT_S = 30  # admission is held for a few requests; wait this long for it at most


def ingest_limit_name(collection: str, shard: str | None) -> str:
    """The limit that makes a run exclusive: ``imgrag-ingest:images`` for an unsharded run
    (its capacity is 1 then), ``imgrag-ingest:images:shard-0-of-4`` for a shard."""
    name = f"imgrag-ingest:{collection}"
    index, count = parse_shard(shard) or (0, 1)
    return name if count == 1 else f"{name}:shard-{index}-of-{count}"


def ensure_limit(name: str, limit: int = 1) -> None:
    """Create the limit (``limit`` slots) unless it exists; concurrent creators are fine."""
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit))


@contextmanager
def exclusive_ingest(chroma_url: str | None, collection: str, shard: str | None) -> Iterator[None]:
    """Hold the collection's and the shard's slots for a server-mode run; no-op for an
    embedded store. StoreLockedError if a run over the same records is in progress."""
    if not chroma_url:
        yield
        return
    index, count = parse_shard(shard) or (0, 1)
    group = f"imgrag-ingest:{collection}"
    what = f"collection {collection!r}" + (f" shard {index}/{count}" if count > 1 else "")
    run_id = flow_run.get_id()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=run_id) if run_id else None
    for name in (f"{group}:admit", group):
        ensure_limit(name)
    with ExitStack() as stack:
        with ExitStack() as admission:
            _take_slot(admission, f"{group}:admit", what, None, wait=True)
            _join_group(group, count, what)
            _take_slot(stack, group, what, holder)
            if count > 1:
                name = ingest_limit_name(collection, shard)
                ensure_limit(name)
                _take_slot(stack, name, what, holder)
        yield


def _join_group(group: str, count: int, what: str) -> None:
    """Set the group limit's capacity to ``count`` unless runs of another N hold it."""
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(group)
        if not limit.active or limit.limit == count:  # inactive: switched off in the UI
            return
        if limit.active_slots > 0:
            running = "an unsharded ingest" if limit.limit == 1 else f"shards of N={limit.limit}"
            raise StoreLockedError(
                f"{running} running (Prefect concurrency limit {group!r}); {what} would"
                " ingest the same records; this run changed nothing")
        client.update_global_concurrency_limit(group, GlobalConcurrencyLimitUpdate(limit=count))


def _take_slot(stack: ExitStack, name: str, what: str, holder: ConcurrencyLeaseHolder | None,
               wait: bool = False) -> None:
    """Hold one slot of ``name`` until ``stack`` closes; StoreLockedError at once (or after
    ADMIT_WAIT_S when ``wait``) if none is free. Not strict: a limit switched off
    (inactive) in the UI switches its guard off."""
    try:
        stack.enter_context(concurrency(
            name, occupy=1, max_retries=None if wait else 0,
            timeout_seconds=ADMIT_WAIT_S if wait else None, strict=False, holder=holder,
            raise_on_lease_renewal_failure=False,
        ))
    except (ConcurrencySlotAcquisitionError, TimeoutError) as exc:
        if isinstance(exc, ConcurrencySlotAcquisitionError) and not _slot_taken(exc):
            raise StoreError(f"cannot take Prefect concurrency limit {name!r}: {exc}") from None
        raise StoreLockedError(
            f"another ingest of {what} is running (Prefect concurrency limit {name!r});"
            " this run changed nothing"
        ) from None


def _slot_taken(exc: ConcurrencySlotAcquisitionError) -> bool:
    """The server answered 423 Locked: every slot is held by other runs."""
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423
