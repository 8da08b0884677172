"""What every command line of imgrag shares (the flows' CLIs and the search app): the store
flags and settings built from flags, with one-line errors. No Prefect here, and nothing
heavy at import: ``--help`` and flag errors stay fast."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from imgrag.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import ValidationError

    from imgrag.settings import Settings


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the ingest and query CLIs and the search app."""
    parser.add_argument("--store", metavar="URL", help="vector store (IMGRAG_STORE_URL): "
                        "chroma://PATH, chroma+http://HOST:PORT or "
                        "postgresql://USER@HOST/DB?table=images (pgvector)")
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
    from pydantic import ValidationError

    from imgrag.settings import Settings

    try:
        settings = Settings.from_overrides(**overrides)
    except ValidationError as exc:
        raise config_error(exc) from None
    if overrides.get("store_url") and (overrides.get("chroma_path")
                                       or overrides.get("chroma_url")):
        raise ConfigError("--store and --chroma-path/--chroma-url exclude each other")
    if overrides.get("chroma_path") and settings.chroma_url:
        raise ConfigError("--chroma-path (an embedded store) and a Chroma server URL"
                          " (--chroma-url or IMGRAG_CHROMA_URL) exclude each other")
    return settings
