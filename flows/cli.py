"""What the ingest and query CLIs share: running as the process, one-line errors, terminal-safe
text (and the store flags and settings of :mod:`imgrag.cli`)."""

from __future__ import annotations

import gc
import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from imgrag.cli import add_store_arguments, config_error, settings_from_cli
from imgrag.errors import ConfigError, ImgragError

__all__ = ["add_store_arguments", "config_error", "print_error", "run_cli", "settings_from_cli"]


def run_cli(main: Callable[[], int]) -> NoReturn:
    """Run a CLI's ``main`` as this process and exit with its status.

    The ~200k objects a CLI imports (Prefect, Chroma, boto3) are never garbage, yet the
    collector's full passes over them cost ≈ 0.25 s while importing (see ``quiet_gc``)
    and ≈ 0.5 s at interpreter exit, so everything is frozen out of its sight before
    exiting. An interrupt is one line, never a traceback.
    """
    gc.freeze()
    gc.enable()  # flows/__init__.py paused it for the CLI module's own imports
    try:
        code = main()
    except KeyboardInterrupt:  # before main's own handler was reached
        code = print_interrupted("command")
    gc.freeze()
    sys.exit(code)


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Import the heavy libraries (Prefect, Chroma, boto3) with the collector paused, then
    freeze what they created out of its sight: they are never garbage."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def print_error(exc: ImgragError) -> int:
    """Print ``exc`` as the CLI's one error line; the exit status for it (2)."""
    print(f"imgrag: error: {safe_text(str(exc))}", file=sys.stderr)
    return 2


def print_interrupted(what: str) -> int:
    """The one line for Ctrl-C; the exit status for it (130, as shells report SIGINT)."""
    print(f"imgrag: interrupted: {what} stopped (batches already embedded are stored)",
          file=sys.stderr)
    return 130


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def require_utf8(flag: str, value: str | None) -> None:
    """ConfigError when a command-line value holds bytes that are not UTF-8 (Python keeps
    them as lone surrogates; they cannot be embedded, stored or printed)."""
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        name = "the query text" if flag == "text" else f"--{flag.replace('_', '-')}"
        raise ConfigError(f"{name} is not valid UTF-8 (check the terminal's locale): "
                          f"{safe_text(value)}") from None


def safe_text(text: str) -> str:
    """``text`` fit for a terminal: control characters (ESC, CR, ...) and undecodable
    bytes shown as escapes, so an object key cannot move the cursor or clear the screen.
    ``--json`` output is exact instead."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape",
                                                       "backslashreplace").decode(), text)


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
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and _RUN_ERROR_FILTER not in handler.filters:
            handler.addFilter(_RUN_ERROR_FILTER)
