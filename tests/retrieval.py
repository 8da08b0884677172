"""Shared pieces of the retrieval tests: a small catalog of images, indexed for real.

The catalog is a local folder (ingested through the same pipeline as the flows, with the
Titan emulator) whose files differ in colour, folder, width and modification time, so
every filter has something to keep and something to drop.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imgrag.emulators.bedrock import FakeBedrock
from imgrag.pipeline import Runtime, process_batch
from imgrag.records import BatchResult
from imgrag.settings import Settings
from tests.conftest import COLOURS, image_bytes

OLD = datetime(2020, 1, 1, tzinfo=UTC)
NEW = datetime(2024, 6, 1, tzinfo=UTC)
# key → (colour, size, format, modified)
CATALOG: dict[str, tuple[str, tuple[int, int], str, datetime]] = {
    "catalog/red-shirt.jpg": ("red", (320, 240), "JPEG", NEW),
    "catalog/red-mug.png": ("red", (64, 48), "PNG", NEW),
    "catalog/blue-shirt.jpg": ("blue", (320, 240), "JPEG", OLD),
    "catalog/shoes/red-sneaker.jpg": ("red", (200, 150), "JPEG", NEW),
    "catalog/shoes/green-sneaker.jpg": ("green", (200, 150), "JPEG", OLD),
    "archive/yellow-old.jpg": ("yellow", (64, 48), "JPEG", OLD),
}


@dataclass
class Catalog:
    """An indexed catalog: its folder, the settings of its store, and the emulator."""

    root: Path
    settings: Settings
    bedrock: FakeBedrock

    def uri(self, key: str) -> str:
        return (self.root / key).as_uri()

    def path(self, key: str) -> Path:
        return self.root / key


def write_catalog(root: Path) -> None:
    for seed, (key, (colour, size, fmt, modified)) in enumerate(CATALOG.items()):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(COLOURS[colour], size=size, fmt=fmt, seed=seed))
        os.utime(path, (modified.timestamp(), modified.timestamp()))


def index_source(settings: Settings, source: str) -> BatchResult:
    """Ingest ``source`` through the pipeline the flows use (no Prefect)."""
    rt = Runtime.open(settings, source)
    try:
        return process_batch(rt, list(rt.source.list_objects()), "test")
    finally:
        rt.close()


def catalog_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    """Body of a module-scoped fixture: emulator up, env pointed at it, catalog indexed."""
    base = tmp_path_factory.mktemp("catalog")
    root = (base / "images").resolve()
    write_catalog(root)
    settings = Settings(chroma_path=base / "store", collection="catalog")
    with FakeBedrock() as bedrock, pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock.url)
        result = index_source(settings, str(root))
        assert (result.upserted, result.failures) == (len(CATALOG), [])
        bedrock.reset_stats()
        yield Catalog(root, settings, bedrock)
