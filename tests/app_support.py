"""The search app's test catalog: the retrieval catalog plus a key made to break a page."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from imgrag.emulators.bedrock import FakeBedrock
from imgrag.records import IngestReport
from imgrag.settings import Settings
from imgrag.store import ImageStore
from tests.conftest import COLOURS, image_bytes
from tests.retrieval import CATALOG, OLD, Catalog, index_source, write_catalog

HOSTILE_KEY = "archive/<img src=x onerror=alert(1)> \"q\" 'x'\t.png"
RECORDS = len(CATALOG) + 1


def app_catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    """Body of a module- or session-scoped fixture: the catalog indexed with the emulator up
    (and kept up), the hostile key among it, a last ingest summary in the collection."""
    base = tmp_path_factory.mktemp("app")
    root = (base / "images").resolve()
    write_catalog(root)
    hostile = root / HOSTILE_KEY
    hostile.write_bytes(image_bytes(COLOURS["green"], size=(80, 60), fmt="PNG", seed=99))
    os.utime(hostile, (OLD.timestamp(), OLD.timestamp()))
    settings = Settings(chroma_path=base / "store", collection="catalog")
    with FakeBedrock() as bedrock, pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock.url)
        result = index_source(settings, str(root))
        assert (result.upserted, result.failures) == (RECORDS, [])
        report = IngestReport(run_id="run-1", source=root.as_uri(), collection="catalog",
                              model_id=settings.model_id, dim=settings.dim, listed=RECORDS,
                              new=RECORDS, embedded=RECORDS, duration_s=0.4)
        ImageStore.open(settings).record_last_ingest(report.summary())
        bedrock.reset_stats()
        yield Catalog(root, settings, bedrock)
