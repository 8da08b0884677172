"""The embedder protocol: what a model declares and the two calls the pipeline makes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class EmbedFailed(Exception):
    """One embedding call failed; ``permanent`` means the same input would fail again."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class Embedder(Protocol):
    """A multimodal embedding model. The pipeline asks these facts, never hard-codes them."""

    model_id: str
    dim: int
    max_batch: int  # images per call
    max_image_side: int  # pixels
    max_image_bytes: int
    text_tokens: int  # text tokens billed so far by this instance

    def embed_images(self, images: Sequence[bytes]) -> list[list[float]]:
        """One vector per JPEG/PNG image (at most ``max_batch``); EmbedFailed on error."""

    def embed_text(self, text: str) -> list[float]:
        """The vector of a text query, truncated to the model's input limit."""

    def close(self) -> None:
        """Close the model client's connections."""
