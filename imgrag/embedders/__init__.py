"""Embedding models behind one protocol; ``make_embedder`` picks one from settings."""

from __future__ import annotations

from imgrag.embedders.base import Embedder, EmbedFailed
from imgrag.embedders.titan import TitanEmbedder, check_credentials
from imgrag.errors import ConfigError
from imgrag.settings import TITAN_IMAGE_MODEL_ID, Settings

__all__ = ["EmbedFailed", "Embedder", "TitanEmbedder", "check_embedder", "make_embedder"]


def make_embedder(settings: Settings) -> Embedder:
    """The embedder for ``settings.model_id``; one per process is enough (it is thread-safe)."""
    if settings.model_id == TITAN_IMAGE_MODEL_ID:
        return TitanEmbedder(
            settings.dim,
            region=settings.region,
            max_attempts=settings.bedrock_max_attempts,
            max_pool=settings.concurrency,
            read_timeout=settings.bedrock_timeout_s,
        )
    raise ConfigError(f"unsupported model {settings.model_id!r}")


def check_embedder(settings: Settings) -> None:
    """Raise a one-line ImgragError when the model cannot be called at all; sends nothing."""
    if settings.model_id == TITAN_IMAGE_MODEL_ID:
        check_credentials()
        return
    raise ConfigError(f"unsupported model {settings.model_id!r}")
