"""boto3 sessions that share one botocore data loader per process.

Each call returns a fresh Session (credentials and configuration resolved from the
environment as usual, per session), but the parsed service models and endpoint rules are
kept by one shared loader: a client costs a few milliseconds instead of ~70 ms of JSON
parsing, which matters for every run of a long-lived process and for the CLI's start-up.
"""

from __future__ import annotations

import threading

import boto3
import botocore.session
from botocore.loaders import Loader

_lock = threading.Lock()
_loader: Loader | None = None


def new_session() -> boto3.session.Session:
    """A new boto3 Session whose service models come from the process-wide loader."""
    global _loader
    core = botocore.session.get_session()
    with _lock:
        if _loader is None:
            _loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _loader)
        session = boto3.session.Session(botocore_session=core)
        paths = _loader.search_paths  # boto3 appends its data folder for every session
        paths[:] = list(dict.fromkeys(paths))
    return session
