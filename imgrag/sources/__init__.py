"""Image and video sources (S3, local folder) behind one protocol, opened from a URI or path.

The S3 names load boto3 on first use, so a local folder never pays for importing it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgrag.errors import ConfigError
from imgrag.settings import Settings
from imgrag.sources.base import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    FetchError,
    Source,
    is_image_key,
    is_video_key,
)
from imgrag.sources.local import LocalSource
from imgrag.sources.s3_uri import parse_s3_uri

if TYPE_CHECKING:
    from imgrag.sources.s3 import S3Source, make_s3_client

_S3_NAMES = ("S3Source", "make_s3_client")

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "FetchError",
    "LocalSource",
    "S3Source",
    "Source",
    "check_source",
    "is_image_key",
    "is_video_key",
    "make_s3_client",
    "open_source",
    "parse_s3_uri",
]


def __getattr__(name: str) -> Any:
    if name in _S3_NAMES:
        from imgrag.sources import s3

        return getattr(s3, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_source(source: str, settings: Settings, s3_client: Any = None) -> Source:
    """``s3://bucket/prefix`` → S3Source; anything else is a local folder path."""
    if source.startswith("s3://"):
        bucket, prefix = parse_s3_uri(source)  # a bad URI is refused before boto3 loads
        from imgrag.sources.s3 import S3Source, make_s3_client

        client = s3_client or make_s3_client(settings.region, max_pool=settings.concurrency)
        return S3Source(bucket, prefix, client, video=settings.video,
                        inventory=settings.inventory)
    if settings.inventory:
        raise ConfigError("an inventory lists an S3 bucket: the source must be s3://…")
    state = settings.resolved_state_dir
    state.mkdir(parents=True, exist_ok=True)
    return LocalSource(Path(source), hash_cache_path=state / "local-hashes.sqlite3",
                       max_object_bytes=settings.max_object_bytes, video=settings.video)


def check_source(source: str, settings: Settings) -> None:
    """Raise a one-line ConfigError/SourceError when ``source`` cannot be listed.

    Writes nothing (no state directory, no hash cache), so it is safe before a run starts.
    """
    if source.startswith("s3://"):
        open_source(source, settings).check()
    elif settings.inventory:
        raise ConfigError("an inventory lists an S3 bucket: the source must be s3://…")
    else:
        LocalSource(Path(source)).check()
