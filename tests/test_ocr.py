"""Real OCR (rapidocr on ONNX Runtime) on generated images, and the OCR text kept consistent
with the store across back-fill, re-runs, changes, a crash and deletions."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from bench.quality_corpus import photo, with_text
from imgrag.emulators.bedrock import FakeBedrock
from imgrag.errors import StoreError
from imgrag.ocr import OCR_VERSION, OcrEngine, shared_engine
from imgrag.pipeline import Runtime, process_batch
from imgrag.query import SearchReport, SearchRequest, run_search
from imgrag.records import BatchResult
from imgrag.settings import Settings
from imgrag.sync import ScopePlanner


def jpeg(colour: str, seed: int, word: str = "", angle: float = 0.0) -> bytes:
    image = photo(colour, seed)
    if word:
        image = with_text(image, [word], size=56, angle=angle, low_contrast=False,
                          rng=random.Random(seed))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    return shared_engine(1)  # the one ingest uses: the models load once per session


def test_a_word_a_rotated_word_and_no_text(engine):
    straight = engine.read(jpeg("blue", 1, "BAKERY"))
    assert "BAKERY" in straight.text
    assert straight.language == "en" and straight.confidence > 0.8
    assert straight.cpu_seconds > 0
    assert "GARAGE" in engine.read(jpeg("green", 2, "GARAGE", angle=-8)).text
    blank = engine.read(jpeg("red", 3))
    assert (blank.text, blank.language, blank.confidence) == ("", "", 0.0)


def ingest(settings: Settings, root: Path, fail_upsert: bool = False) -> BatchResult:
    """Plan by ETag and process one batch, as the ingest flow does (no Prefect)."""
    rt = Runtime.open(settings, str(root))
    try:
        scope = rt.source.scope
        planner = ScopePlanner(scope, rt.store.manifest(rt.source.bucket, scope),
                               ocr_version=OCR_VERSION if settings.ocr else 0)
        todo = list(planner.todo(rt.source.list_objects()))
        if fail_upsert:
            def crash(**_kwargs):
                raise RuntimeError("killed")
            rt.store.collection.upsert = crash
        result = process_batch(rt, todo, "t") if todo else BatchResult()
        rt.store.delete(planner.deleted())
        return result
    finally:
        rt.close()


def text_hits(settings: Settings, text: str) -> list[str]:
    report = SearchReport()
    hits = run_search(settings, SearchRequest(text=text, k=3, text_match="on"), report=report)
    return sorted(h.id.rsplit("/", 1)[1] for h in hits if "text" in (h.matched or []))


def test_text_follows_the_store_through_backfill_changes_crash_and_deletion(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "bakery.jpg").write_bytes(jpeg("blue", 1, "BAKERY"))
    (root / "taxi.jpg").write_bytes(jpeg("yellow", 2, "TAXI"))
    (root / "plain.jpg").write_bytes(jpeg("red", 3))
    plain = Settings(chroma_path=tmp_path / "store", collection="ocrtest")
    ocr = plain.model_copy(update={"ocr": True, "store_write_attempts": 1})
    with FakeBedrock() as bedrock, pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock.url)
        assert ingest(plain, root).ocr_read == 0
        assert text_hits(plain, "bakery") == []

        bedrock.reset_stats()
        filled = ingest(ocr, root)  # turning OCR on: back-fill, no model call
        assert (filled.upserted, filled.ocr_backfilled, filled.ocr_read) == (0, 3, 3)
        assert filled.ocr_cpu_s > 0 and bedrock.stats.image_calls == 0
        assert text_hits(ocr, "bakery") == ["bakery.jpg"]
        assert ingest(ocr, root).ocr_read == 0  # unchanged ETags are never read again

        (root / "bakery.jpg").write_bytes(jpeg("blue", 1, "PIZZA"))
        changed = ingest(ocr, root)
        assert (changed.upserted, changed.ocr_read) == (1, 1)
        assert text_hits(ocr, "bakery") == [] and text_hits(ocr, "pizza") == ["bakery.jpg"]

        (root / "taxi.jpg").write_bytes(jpeg("yellow", 2, "HOTEL"))
        with pytest.raises(StoreError, match="killed"):
            ingest(ocr, root, fail_upsert=True)  # vector and text: one write, both or neither
        assert text_hits(ocr, "taxi") == ["taxi.jpg"] and text_hits(ocr, "hotel") == []
        assert ingest(ocr, root).upserted == 1  # the re-run finishes the work
        assert text_hits(ocr, "taxi") == [] and text_hits(ocr, "hotel") == ["taxi.jpg"]

        (root / "bakery.jpg").unlink()
        ingest(ocr, root)
        assert text_hits(ocr, "pizza") == []


def test_a_newer_ocr_version_marks_records_stale(tmp_path):
    from imgrag.records import Indexed, SourceObject

    manifest = {"s3://b/a.jpg": Indexed("e", 1, ocr_version=OCR_VERSION),
                "s3://b/b.jpg": Indexed("e", 1, ocr_version=0)}
    listing = [SourceObject(uri=u, bucket="b", key=u[7:], etag="e", size=1) for u in manifest]
    planner = ScopePlanner("s3://b/", manifest, ocr_version=OCR_VERSION + 1)
    assert [o.uri for o in planner.todo(listing)] == list(manifest)
    assert (planner.plan.unchanged, planner.plan.ocr_backfill) == (2, 2)
    current = ScopePlanner("s3://b/", manifest, ocr_version=OCR_VERSION)
    assert [o.uri for o in current.todo(listing)] == ["s3://b/b.jpg"]
    assert [o.uri for o in ScopePlanner("s3://b/", manifest).todo(listing)] == []
