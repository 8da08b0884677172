"""The notebook API's cached embedder follows the settings of each call."""

from __future__ import annotations

import pytest

from imgrag import titan_embed_text
from imgrag.errors import EmbeddingError


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
