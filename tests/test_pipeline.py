"""process_batch with a multi-image embedder: vectors stay with their images, or fail."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from imgrag.ledger import FailureLedger
from imgrag.pipeline import Runtime, process_batch
from imgrag.settings import Settings
from imgrag.sources import LocalSource
from imgrag.store import ImageStore
from tests.conftest import COLOURS, image_bytes

CHANNELS = {"red": 0, "green": 1, "blue": 2}


class ColourEmbedder:
    """An Embedder taking up to 4 images a call: the one-hot vector of each image's
    strongest RGB channel. ``drop`` leaves that many vectors off the end of every answer."""

    model_id = "amazon.titan-embed-image-v1"
    dim = 256
    max_batch = 4
    max_image_side = 2048
    max_image_bytes = 5 * 1024 * 1024
    text_tokens = 0

    def __init__(self, drop: int = 0) -> None:
        self.drop = drop

    def embed_images(self, images: Sequence[bytes]) -> list[list[float]]:
        vectors = [self._vector(data) for data in images]
        return vectors[: len(vectors) - self.drop]

    def embed_text(self, text: str) -> list[float]:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing held open."""

    def _vector(self, data: bytes) -> list[float]:
        pixel = Image.open(io.BytesIO(data)).convert("RGB").getpixel((10, 10))
        channel = max(range(3), key=lambda c: pixel[c])
        return [1.0 if i == channel else 0.0 for i in range(self.dim)]


@pytest.fixture
def runtime_with(tmp_path: Path) -> Iterator:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(CHANNELS):
        (folder / f"{name}.png").write_bytes(image_bytes(COLOURS[name], fmt="PNG", seed=i))
    settings = Settings(chroma_path=tmp_path / "db", dim=256)
    opened: list[Runtime] = []

    def make(embedder: ColourEmbedder) -> Runtime:
        rt = Runtime(settings, LocalSource(folder), ImageStore.open(settings), embedder,
                     FailureLedger(tmp_path / "ledger.sqlite3", settings.collection),
                     ThreadPoolExecutor(2))
        opened.append(rt)
        return rt

    yield make
    for rt in opened:
        rt.close()


def test_multi_image_calls_keep_each_vector_with_its_image(runtime_with):
    rt = runtime_with(ColourEmbedder())
    objects = list(rt.source.list_objects())

    result = process_batch(rt, objects, "run")

    assert (result.upserted, result.failures, result.billed_images) == (3, [], 3)
    for obj in objects:
        vector = rt.store.get_embedding(obj.uri)
        assert vector.index(max(vector)) == CHANNELS[obj.key.removesuffix(".png")]


def test_a_short_answer_from_the_model_fails_the_call_transiently(runtime_with):
    rt = runtime_with(ColourEmbedder(drop=1))
    objects = list(rt.source.list_objects())

    result = process_batch(rt, objects, "run")

    assert result.upserted == 0 and rt.store.count() == 0
    assert {(f.stage, f.permanent) for f in result.failures} == {("embed", False)}
    assert len(result.failures) == 3
    assert "returned 2 vectors for 3 images" in result.failures[0].reason
    assert rt.ledger.entries() == []  # transient: retried next run, not recorded
