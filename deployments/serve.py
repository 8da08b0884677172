"""Serve the ``ingest`` and ``query`` deployments from this process, for teams without a
work pool: ``python deployments/serve.py`` (``--help`` for the flags).

The deployments are the ones ``prefect.yaml`` declares — same parameters, cron schedule and
concurrency limit, read from that file (``{{ $ENV_VAR }}`` placeholders resolved from the
environment, as ``prefect deploy`` does) — so the two ways to run imgrag never drift apart.
Flow runs execute in subprocesses of this one; stopping it pauses the schedule.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL
from prefect.utilities.templating import apply_values

from flows.cli import print_error
from flows.ingest_flow import ingest_flow
from flows.query_flow import query_flow
from imgrag.errors import ConfigError

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"
SERVED: dict[str, Flow[..., Any]] = {"ingest": ingest_flow, "query": query_flow}


def load_specs(path: Path = PREFECT_YAML) -> dict[str, dict[str, Any]]:
    """Deployment name → its prefect.yaml entry, environment placeholders resolved."""
    document = yaml.safe_load(path.read_text())
    return {spec["name"]: apply_values(spec, dict(os.environ)) for spec in document["deployments"]}


def to_deployment(flow: Flow[..., Any], spec: dict[str, Any],
                  parameters: dict[str, Any], cron: str | None) -> RunnerDeployment:
    """A served deployment of ``flow`` from its prefect.yaml entry (``cron`` overrides)."""
    schedules = [Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
                 for s in spec.get("schedules") or []]
    if cron:
        try:
            schedules = [Cron(cron, timezone="UTC")]
        except ValueError as exc:
            raise ConfigError(f"--cron: {str(exc).splitlines()[0]}") from None
    limit = spec.get("concurrency_limit")
    return flow.to_deployment(
        name=spec["name"],
        description=spec.get("description"),
        tags=spec.get("tags"),
        parameters={**spec.get("parameters", {}), **parameters},
        schedules=schedules or None,
        concurrency_limit=ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit,
    )


def build_deployments(source: str | None = None, collection: str | None = None,
                      cron: str | None = None) -> list[RunnerDeployment]:
    """The served deployments; ConfigError when the ingest source is not set anywhere."""
    specs = load_specs()
    common = {"collection": collection} if collection else {}
    ingest_params = {**common, **({"source": source} if source else {})}
    if not {**specs["ingest"].get("parameters", {}), **ingest_params}.get("source"):
        raise ConfigError("no ingest source: set IMGRAG_SOURCE or pass --source")
    return [
        to_deployment(SERVED["ingest"], specs["ingest"], ingest_params, cron),
        to_deployment(SERVED["query"], specs["query"], common, None),
    ]


def check_api_url() -> None:
    """ConfigError unless PREFECT_API_URL is set: without it, ``serve`` would start a
    temporary Prefect server, and the schedule and runs would vanish with this process."""
    if not PREFECT_API_URL.value():
        raise ConfigError("PREFECT_API_URL is not set: point it at a running Prefect server "
                          "(prefect server start) or Prefect Cloud")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python deployments/serve.py",
        description="Serve imgrag's ingest (scheduled) and query deployments from this "
        "process, with the parameters, schedule and concurrency limit of prefect.yaml. Runs "
        "go to the Prefect API named by PREFECT_API_URL.",
    )
    parser.add_argument("--source", help="s3://BUCKET/PREFIX or folder to ingest "
                        "(default: $IMGRAG_SOURCE)")
    parser.add_argument("--collection", help="collection for both deployments "
                        "(default: prefect.yaml's)")
    parser.add_argument("--cron", help="ingest schedule, UTC (default: prefect.yaml's)")
    parser.add_argument("--limit", type=int, default=None,
                        help="most flow runs this process executes at once")
    args = parser.parse_args(argv)
    try:
        deployments = build_deployments(args.source, args.collection, args.cron)
        check_api_url()
    except ConfigError as exc:
        return print_error(exc)
    serve(*deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
