"""What the ingest and query CLIs share: store flags, settings from flags, one-line errors."""

from __future__ import annotations

import argparse
import gc
import logging
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from prefect.logging.handlers import PrefectConsoleHandler
from pydantic import ValidationError

from imgrag.errors import ConfigError, ImgragError
from imgrag.settings import Settings


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


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the ingest and query CLIs."""
    parser.add_argument("--chroma-path", help="embedded Chroma directory "
                        "(IMGRAG_CHROMA_PATH, default ./chroma_images_db)")
    parser.add_argument("--chroma-url", help="Chroma server URL, e.g. http://localhost:8000 "
                        "(IMGRAG_CHROMA_URL)")
    parser.add_argument("--collection", help="collection name (IMGRAG_COLLECTION, "
                        "default images)")
    parser.add_argument("--model", help="embedding model: titan, nova, cohere or a Bedrock "
                        "model id (IMGRAG_MODEL, default titan); a query uses its collection's")
    parser.add_argument("--dim", type=int, help="embedding length, one of the model's "
                        "(IMGRAG_DIM, default the model's)")
    parser.add_argument("--region", help="AWS region for Bedrock and S3 (default: boto3's)")


def config_error(exc: ValidationError) -> ConfigError:
    """The first problem of a pydantic ValidationError as a one-line ConfigError."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return ConfigError(f"invalid {field}: {message}" if field else message)


def settings_from_cli(**overrides: Any) -> Settings:
    """Settings from the environment with non-None flags (or flow parameters) on top;
    ConfigError (one line) if a value is invalid."""
    try:
        settings = Settings.from_overrides(**overrides)
    except ValidationError as exc:
        raise config_error(exc) from None
    if overrides.get("chroma_path") and settings.chroma_url:
        raise ConfigError("--chroma-path (an embedded store) and a Chroma server URL"
                          " (--chroma-url or IMGRAG_CHROMA_URL) exclude each other")
    return settings


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
