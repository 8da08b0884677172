"""The notebook API follows the settings of each call and the embedder's declared limits."""

from __future__ import annotations

import inspect
import io

import pytest
from PIL import Image
from pydantic import ValidationError

from imgrag import normalize_image_to_jpeg_bytes, titan_embed_text
from imgrag.embedders import TitanEmbedder
from imgrag.errors import EmbeddingError
from imgrag.normalize import MAX_SOURCE_PIXELS, normalize_image
from imgrag.settings import Settings
from tests.conftest import COLOURS, image_bytes


def test_a_later_bedrock_attempts_setting_is_used_by_the_notebook_embedder(
    bedrock, monkeypatch
):
    bedrock.fail_next(1, "ThrottlingException")
    assert len(titan_embed_text("red shirt")) == 1024  # 8 attempts: the throttle is retried
    sent = bedrock.stats.requests

    monkeypatch.setenv("IMGRAG_BEDROCK_MAX_ATTEMPTS", "1")
    bedrock.fail_next(1, "ThrottlingException")
    with pytest.raises(EmbeddingError, match="Throttling"):
        titan_embed_text("red shirt")
    assert bedrock.stats.requests == sent + 1


def test_notebook_normalization_uses_the_embedders_declared_limits(monkeypatch):
    monkeypatch.setattr(TitanEmbedder, "max_image_side", 300)
    monkeypatch.setattr(TitanEmbedder, "max_image_bytes", 6_000)
    photo = image_bytes(COLOURS["red"], size=(1200, 900), seed=1)
    data = normalize_image_to_jpeg_bytes(photo, max_side=2048)
    with Image.open(io.BytesIO(data)) as im:
        assert max(im.size) <= 300
    assert len(data) <= 6_000


def test_max_source_pixels_setting_cannot_exceed_pillows_limit_and_is_normalizes_default():
    assert Settings().max_source_pixels == MAX_SOURCE_PIXELS == Image.MAX_IMAGE_PIXELS
    assert inspect.signature(normalize_image).parameters["max_source_pixels"].default \
        == MAX_SOURCE_PIXELS
    with pytest.raises(ValidationError):
        Settings(max_source_pixels=MAX_SOURCE_PIXELS + 1)
