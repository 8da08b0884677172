"""Embedding models behind one protocol; ``make_embedder`` picks one from settings.

Model facts (``models``) import nothing heavy; the Bedrock client code (``bedrock``, boto3)
is loaded only when an embedder is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgrag.embedders.base import Embedder, EmbedFailed, ModelSpec
from imgrag.embedders.models import model_format, model_spec

if TYPE_CHECKING:
    from imgrag.settings import Settings

__all__ = ["EmbedFailed", "Embedder", "ModelSpec", "TitanEmbedder", "check_embedder",
           "make_embedder", "model_format", "model_spec"]


def make_embedder(settings: Settings) -> Embedder:
    """The embedder for ``settings.model_id``; one per process is enough (it is thread-safe)."""
    from imgrag.embedders.bedrock import EMBEDDERS

    return EMBEDDERS[model_spec(settings.model_id).model_id](
        settings.dim,
        region=settings.region,
        max_attempts=settings.bedrock_max_attempts,
        max_pool=settings.concurrency,
        read_timeout=settings.bedrock_timeout_s,
    )


def check_embedder(settings: Settings) -> None:
    """Raise a one-line ImgragError when the model cannot be called at all; sends nothing."""
    from imgrag.embedders.bedrock import check_credentials

    model_spec(settings.model_id)
    check_credentials()


def __getattr__(name: str) -> Any:
    """``TitanEmbedder`` and friends, imported on first use (they load boto3)."""
    if name in ("TitanEmbedder", "NovaEmbedder", "CohereEmbedder", "BedrockEmbedder"):
        from imgrag.embedders import bedrock

        return getattr(bedrock, name)
    raise AttributeError(name)
