"""The ingest and query flows expose OCR, hybrid matching and query algebra."""

from __future__ import annotations

import pytest

from flows.ingest_flow import ingest_flow
from flows.query_flow import query_flow
from tests.test_ocr import jpeg

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_flows_backfill_text_and_match_it(tmp_path, bedrock, store_env):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "sign.jpg").write_bytes(jpeg("blue", 1, "BAKERY"))
    (folder / "plain.jpg").write_bytes(jpeg("red", 2))
    assert ingest_flow(source=str(folder)).embedded == 2
    bedrock.reset_stats()
    report = ingest_flow(source=str(folder), ocr=True)
    assert (report.ocr_read, report.ocr_backfilled, report.embedded) == (2, 2, 0)
    assert bedrock.stats.image_calls == 0

    [first, second] = query_flow("bakery", k=2)  # auto: the collection has OCR text
    assert first.id == (folder / "sign.jpg").as_uri()
    assert "text" in first.matched and first.snippet == "[BAKERY]"
    assert second.matched == ["vector"]
    assert query_flow("bakery", k=2, text_match="off")[0].matched is None
    hits = query_flow("red blue -blue", k=2, negative=["green"], cutoff="gap")
    assert hits[0].id == (folder / "plain.jpg").as_uri()
