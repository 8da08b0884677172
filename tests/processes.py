"""Real child processes (the ingest CLI, for kill -9 and second-writer tests) and ports.

The child talks to the session's Prefect test API (no temporary server of its own), the
moto S3 server and the Titan emulator of the calling test, through the environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prefect.settings import get_current_settings


def default_sigint() -> None:
    """In a child, before exec: SIGINT back to its default. A suite started as a background
    job (``make test &``) ignores SIGINT and children inherit that, so Python in them never
    installs its KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn_ingest(args: Sequence[str], workdir: Path, **env: str) -> subprocess.Popen[bytes]:
    """``python -m flows.ingest ARGS`` in its own process group; output to files in workdir.
    It takes SIGINT as a terminal's Ctrl-C would."""
    child_env = os.environ.copy()
    child_env["PREFECT_API_URL"] = str(get_current_settings().api.url)
    child_env.update(env)
    with open(workdir / "ingest.out", "wb") as out, open(workdir / "ingest.err", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.ingest", *args], cwd=workdir, env=child_env,
            stdout=out, stderr=err, start_new_session=True, preexec_fn=default_sigint,
        )


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``condition`` every 20 ms; fail with ``what`` (and the child's stderr) on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"ingest exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child and everything it started (its own process group); reap it."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
