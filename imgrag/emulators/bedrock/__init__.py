"""EMULATOR of Amazon Bedrock for tests, demos and benchmarks (see ``server``): InvokeModel
for Titan, Nova and Cohere embeddings, and batch inference jobs. Not a model."""

from imgrag.emulators.bedrock.common import (
    COLOUR_CONCEPTS,
    ERROR_STATUS,
    THROTTLE_MESSAGE,
    BedrockError,
    count_tokens,
    embed_image,
    embed_text,
)
from imgrag.emulators.bedrock.server import EmulatorStats, FakeBedrock, main
from imgrag.emulators.bedrock.titan import MODEL_ID

__all__ = [
    "COLOUR_CONCEPTS",
    "ERROR_STATUS",
    "MODEL_ID",
    "THROTTLE_MESSAGE",
    "BedrockError",
    "EmulatorStats",
    "FakeBedrock",
    "count_tokens",
    "embed_image",
    "embed_text",
    "main",
]
