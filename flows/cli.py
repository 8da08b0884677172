"""What the ingest and query CLIs share: running as the process, one-line errors (and the
store flags and settings of :mod:`imgrag.cli`)."""

from __future__ import annotations

import gc
import logging
import re
import sys
from collections.abc import Callable
from typing import NoReturn

from prefect.logging.handlers import PrefectConsoleHandler

from imgrag.cli import add_store_arguments, config_error, settings_from_cli
from imgrag.errors import ImgragError

__all__ = ["add_store_arguments", "config_error", "print_error", "run_cli", "settings_from_cli"]


def run_cli(main: Callable[[], int]) -> NoReturn:
    """Run a CLI's ``main`` as this process and exit with its status.

    The ~200k objects a CLI imports (Prefect, Chroma, boto3) are never garbage, yet the
    collector's full passes over them cost ≈ 0.25 s while importing (``flows/__init__.py``
    pauses it) and ≈ 0.5 s at interpreter exit. So they are frozen out of its sight
    (``gc.freeze``) before the run, and everything is frozen again before exiting.
    """
    gc.freeze()
    gc.enable()
    code = main()
    gc.freeze()
    sys.exit(code)


def print_error(exc: ImgragError) -> int:
    """Print ``exc`` as the CLI's one error line; the exit status for it (2)."""
    print(f"imgrag: error: {exc}", file=sys.stderr)
    return 2


# How Prefect states a run ended by an exception: ``Failed('Task run encountered an
# exception ConfigError: ...')`` (quoted with " when the message holds a ').
_FAILED_BY = re.compile(
    r"""^Finished in state Failed\(['"](?:Task|Flow) run encountered an exception:? (\w+): """
)


def _run_error_names() -> set[str]:
    """Class names of ImgragError and all its subclasses (SummaryError, StoreError…)."""
    names: set[str] = set()
    todo: list[type[ImgragError]] = [ImgragError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


class _RunErrorFilter(logging.Filter):
    """Drop console records about a run-level ImgragError, which the CLI prints as one
    line: the records carrying it (tracebacks) and the ``Finished in state Failed(...)``
    lines repeating it. The Prefect API still receives every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ImgragError):
            return False
        failed_by = _FAILED_BY.match(record.getMessage())
        return not (failed_by and failed_by.group(1) in _run_error_names())


_RUN_ERROR_FILTER = _RunErrorFilter()


def hide_run_error_tracebacks() -> None:
    """Keep Prefect's console handler from printing run-level errors the CLI reports."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and _RUN_ERROR_FILTER not in handler.filters:
            handler.addFilter(_RUN_ERROR_FILTER)
