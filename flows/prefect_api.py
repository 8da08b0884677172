"""Which Prefect API a CLI run will talk to, found without importing Prefect, and the
temporary server's start-up budget and failures turned into one line.

Prefect's own settings module takes seconds to import on a slow machine, so the CLIs read
the two places a user configures the API (``PREFECT_API_URL`` in the environment, or the
active profile in ``$PREFECT_HOME/profiles.toml``, as ``prefect config set`` writes it).
Where Prefect is already imported (a notebook, a test harness), its settings decide.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imgrag.errors import ImgragError

# A temporary server imports Prefect's server (8-12 s on a busy 2-core machine) and, on a
# new Prefect home, migrates its database first; Prefect's default budget is 20 s.
EPHEMERAL_STARTUP_BUDGET_S = 300
STARTUP_TIMEOUT_VAR = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
SERVER_ADVICE = ("run `prefect server start` and set PREFECT_API_URL="
                 "http://127.0.0.1:4200/api to skip this")


class OrchestratorError(ImgragError):
    """The Prefect API cannot be reached, or a temporary Prefect server did not start."""


def _profile_api_url() -> str | None:
    """PREFECT_API_URL of the active profile in Prefect's profiles file, if any."""
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or document.get("active") or "ephemeral"
    profile = document.get("profiles", {}).get(active, {})
    url = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return url if isinstance(url, str) and url else None


def configured_api_url() -> str | None:
    """The Prefect API URL runs of this process will use; None when Prefect would start a
    temporary server of its own."""
    if "prefect.settings" in sys.modules:  # already paid for: let Prefect decide
        from prefect.settings import get_current_settings

        return get_current_settings().api.url
    return os.environ.get("PREFECT_API_URL") or _profile_api_url()


def prepare_flow_run(what: str) -> None:
    """Before a flow runs in this process: without a configured API, say on one line that
    a temporary Prefect server starts (and how to avoid it), and give it a start-up budget
    fit for a slow machine unless the user chose one."""
    if configured_api_url():
        return
    os.environ.setdefault(STARTUP_TIMEOUT_VAR, str(EPHEMERAL_STARTUP_BUDGET_S))
    print(f"imgrag: starting a temporary Prefect server for this {what} (up to "
          f"{os.environ[STARTUP_TIMEOUT_VAR]} s on a busy machine); {SERVER_ADVICE}",
          file=sys.stderr, flush=True)


_UNREACHABLE = re.compile(r"^Failed to reach API at (\S+)")


@contextmanager
def prefect_errors() -> Iterator[None]:
    """Turn Prefect failing to reach its API, or to start a temporary server, into a
    one-line OrchestratorError."""
    import httpx

    try:
        yield
    except RuntimeError as exc:
        message = str(exc)
        if message.startswith("Timed out while attempting to connect to ephemeral"):
            budget = os.environ.get(STARTUP_TIMEOUT_VAR, "20")
            raise OrchestratorError(
                f"the temporary Prefect server did not start within {budget} s; {SERVER_ADVICE}"
                f" (or raise {STARTUP_TIMEOUT_VAR})") from None
        if unreachable := _UNREACHABLE.match(message):
            raise OrchestratorError(
                f"cannot reach the Prefect API at {unreachable.group(1).rstrip('/')} "
                "(check PREFECT_API_URL and that the server is running)") from None
        raise
    except httpx.HTTPError as exc:
        try:
            where = f" at {exc.request.url.scheme}://{exc.request.url.netloc.decode()}"
        except RuntimeError:  # raised by httpx when the error carries no request
            where = ""
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OrchestratorError(f"Prefect API{where} failed: {first}") from None
