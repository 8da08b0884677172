"""Titan text truncation bounds tokens (CJK included), not words (issue 12 item 9)."""

from __future__ import annotations

import pytest

from imgrag.embedders import TitanEmbedder
from imgrag.emulators.bedrock import FakeBedrock


@pytest.mark.parametrize("text", [
    "red, " * 200,  # 80 words would still be 160 tokens
    "红色的汽车" * 200,  # no spaces: one "word", 1,000 tokens
    "a" * 5000,  # one very long word
])
def test_long_text_is_cut_to_the_documented_token_limit(bedrock: FakeBedrock, text: str) -> None:
    embedder = TitanEmbedder(1024)
    assert len(embedder.embed_text(text)) == 1024
    assert 0 < embedder.text_tokens <= TitanEmbedder.format.spec.max_text_tokens == 256
    assert bedrock.stats.text_calls == 1 and bedrock.stats.errors == 0


def test_text_within_the_limit_is_sent_whole(bedrock: FakeBedrock) -> None:
    embedder = TitanEmbedder(256)
    embedder.embed_text(" ".join(["red"] * 256))
    assert embedder.text_tokens == 256
