"""One ingest at a time per collection shard on a Chroma server, across every worker.

An embedded store is guarded by its file lock (``imgrag.lock``), which only one host can
see. Runs writing to a Chroma server may start on any Prefect worker, so they meet at the
Prefect server instead: a global concurrency limit of 1 per (collection, shard), created on
first use and held (with a lease the client renews) for the whole run. A second run of the
same shard is refused at once with a one-line error; other shards run side by side.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.runtime import flow_run

from imgrag.errors import StoreError, StoreLockedError
from imgrag.sync import parse_shard


def ingest_limit_name(collection: str, shard: str | None) -> str:
    """The concurrency limit a run holds, e.g. ``imgrag-ingest:images:shard-0-of-4``."""
    name = f"imgrag-ingest:{collection}"
    parsed = parse_shard(shard)
    if parsed is not None:
        name += f":shard-{parsed[0]}-of-{parsed[1]}"
    return name


def ensure_limit(name: str) -> None:
    """Create the limit (1 slot) unless it exists; concurrent creators are fine."""
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextmanager
def exclusive_ingest(chroma_url: str | None, collection: str, shard: str | None) -> Iterator[None]:
    """Hold the (collection, shard) slot for a server-mode run; no-op for an embedded store."""
    if not chroma_url:
        yield
        return
    name = ingest_limit_name(collection, shard)
    ensure_limit(name)
    run_id = flow_run.get_id()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=run_id) if run_id else None
    with ExitStack() as stack:
        try:  # not strict: a limit switched off (inactive) in the UI switches the guard off
            stack.enter_context(concurrency(
                name, occupy=1, max_retries=0, strict=False, holder=holder,
                raise_on_lease_renewal_failure=False,
            ))
        except ConcurrencySlotAcquisitionError as exc:
            if not _slot_taken(exc):
                raise StoreError(f"cannot take Prefect concurrency limit {name!r}: {exc}") from None
            what = f"collection {collection!r}" + (f" shard {shard}" if shard else "")
            raise StoreLockedError(
                f"another ingest of {what} is running (Prefect concurrency limit {name!r});"
                " this run changed nothing"
            ) from None
        yield


def _slot_taken(exc: ConcurrencySlotAcquisitionError) -> bool:
    """The server answered 423 Locked: the one slot is held by another run."""
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423
