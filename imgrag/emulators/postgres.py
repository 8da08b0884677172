"""A real PostgreSQL with pgvector, from the ``pgserver`` wheel, for tests, demos and
benchmarks (no system packages): ``python -m imgrag.emulators.postgres DIR`` prints its URL.

Not an emulator: ``pgserver`` ships PostgreSQL 16 with the ``vector`` extension and runs
it on a Unix socket inside the data directory.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Self


class PostgresServer:
    """A PostgreSQL server in ``directory`` (created if missing), stopped on exit."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._server: Any = None
        self.url = ""

    def __enter__(self) -> Self:
        with warnings.catch_warnings():  # platformdirs, on import: no XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            import pgserver

        self.directory.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.directory, cleanup_mode="stop")
        self.url = self._server.get_uri()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.cleanup()


def with_table(url: str, table: str) -> str:
    """``url`` with the ``table`` parameter imgrag's store URL takes."""
    return f"{url}{'&' if '?' in url else '?'}table={table}"


if __name__ == "__main__":
    with PostgresServer(Path(sys.argv[1] if len(sys.argv) > 1 else ".pgdata")) as pg:
        print(with_table(pg.url, "images"), flush=True)
        while True:
            time.sleep(3600)
