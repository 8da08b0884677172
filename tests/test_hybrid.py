"""Fusion of vector hits and text matches, the gap cutoff, and query algebra (negative terms,
an image and a text in one call) against the Titan emulator."""

from __future__ import annotations

import pytest

from imgrag.embedders.base import average
from imgrag.hybrid import RRF_K, fuse, query_terms, snippet, terms_pattern
from imgrag.query import SearchRequest, cut_by_gap, run_search, subtract
from imgrag.records import Hit
from tests.conftest import COLOURS, image_bytes
from tests.retrieval import CATALOG


def hit(rid: str, distance: float = 0.5, **extra) -> Hit:
    return Hit(rank=0, id=rid, distance=distance, **extra)


def test_terms_and_snippets():
    assert query_terms("The red EXIT sign, exit 4711 a") == ["red", "exit", "sign", "4711"]
    assert snippet("ITEM 2.50\nBAKERY\nTOTAL", ["bakery"]) == "ITEM 2.50 [BAKERY] TOTAL"
    long = "x " * 100 + "receipt 4711 " + "y " * 100
    marked = snippet(long, ["4711"])
    assert marked.startswith("…") and marked.endswith("…") and "receipt [4711]" in marked
    assert terms_pattern(["a1", "b"]) == r"(?i)\b(?:a1|b)\b"


def test_reciprocal_rank_fusion():
    vector = [hit("v1"), hit("both"), hit("v3")]
    text = [hit("both", snippet="[EXIT]"), hit("t2", snippet="[exit] 2")]
    fused = fuse(vector, text, k=4)
    assert [h.id for h in fused] == ["both", "v1", "t2", "v3"]
    assert fused[0].matched == ["vector", "text"] and fused[0].snippet == "[EXIT]"
    assert (fused[1].matched, fused[1].snippet) == (["vector"], None)
    assert fused[2].matched == ["text"]
    assert [h.rank for h in fused] == [1, 2, 3, 4]
    # both score 1/(RRF_K+2) + 1/(RRF_K+1): above any single list's first place
    assert 1 / (RRF_K + 2) + 1 / (RRF_K + 1) > 1 / (RRF_K + 1)
    assert [h.id for h in fuse([hit("v")], [hit("t")], k=1)] == ["t"]  # ties: the word wins


def test_gap_cutoff_and_vector_algebra():
    hits = [hit(str(i), d) for i, d in enumerate([0.2, 0.22, 0.25, 0.6, 0.62])]
    assert [h.id for h in cut_by_gap(hits)] == ["0", "1", "2"]
    assert cut_by_gap(hits[:2]) == hits[:2]
    assert subtract([1.0, 0.0], [[0.0, 1.0]]) == pytest.approx([0.894427, -0.447214], abs=1e-6)
    assert average([2.0, 0.0], [0.0, 1.0]) == pytest.approx([0.707107, 0.707107], abs=1e-6)


def test_negative_terms(catalog):
    def colours(text: str, negative: tuple[str, ...] = ()) -> list[str]:
        request = SearchRequest(text=text, k=len(CATALOG), negative=list(negative))
        return [CATALOG[h.id.split("/images/", 1)[1]][0]
                for h in run_search(catalog.settings, request)]

    assert colours("red shirt")[0] == "red"
    assert colours("red green -red")[0] == "green"
    assert colours("red green", negative=("red",))[0] == "green"
    catalog.bedrock.reset_stats()
    colours("red green -red")
    assert catalog.bedrock.stats.requests == 0  # every term's vector came from the cache


def test_an_image_and_a_text_in_one_call(catalog, tmp_path):
    outside = tmp_path / "blue.png"
    outside.write_bytes(image_bytes(COLOURS["blue"], size=(80, 60), fmt="PNG", seed=99))
    catalog.bedrock.reset_stats()
    request = SearchRequest(image=str(outside), text="yellow", k=3)
    combined = run_search(catalog.settings, request)
    assert catalog.bedrock.stats.image_calls == catalog.bedrock.stats.requests == 1  # both
    ids = [h.id.rsplit("/", 1)[1] for h in combined]
    assert {"blue-shirt.jpg", "yellow-old.jpg"} == set(ids[:2])

    indexed = catalog.path("catalog/shoes/green-sneaker.jpg")
    catalog.bedrock.reset_stats()
    hits = run_search(catalog.settings, SearchRequest(image=str(indexed), text="yellow",
                                                      k=2, exclude_self=True))
    stats = catalog.bedrock.stats  # the stored vector, averaged here with the text's
    assert (stats.image_calls, stats.text_calls) == (0, 1)
    assert indexed.as_uri() not in [h.id for h in hits]


@pytest.mark.parametrize("mode", ["embedded", "server"])
def test_document_search_in_both_chroma_modes(tmp_path, mode):
    from imgrag.emulators.chroma_server import ChromaServer
    from imgrag.settings import Settings
    from imgrag.store import ImageStore

    def check(settings: Settings) -> None:
        store = ImageStore.open(settings)
        meta = [{"etag": "e", "ocr_version": 1, "ocr_confidence": c} for c in (0.9, 0.99)]
        store.upsert(["a", "b", "c"], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
                     [*meta, {"etag": "e", "ocr_version": 0}], ["EXIT 4711", "exits", ""])
        assert store.has_texts()
        assert [m[0] for m in store.text_matches(r"(?i)\b(?:exit)\b", 10)] == ["a"]
        store.set_texts(["b", "gone"], ["Exit here", "x"], [{"ocr_confidence": 0.5}] * 2)
        matches = store.text_matches(r"(?i)\b(?:exit)\b", 10, where={"etag": "e"})
        assert sorted((rid, text, vec) for rid, text, _, vec in matches) == [
            ("a", "EXIT 4711", [1.0, 0.0]), ("b", "Exit here", [0.0, 1.0])]
        assert store.get(["b"])["b"]["ocr_confidence"] == 0.5  # merged, vector kept

    settings = Settings(chroma_path=tmp_path / "store", collection="docs", dim=256)
    if mode == "embedded":
        check(settings)
        return
    with ChromaServer(tmp_path / "server") as server:
        check(settings.model_copy(update={"chroma_url": server.url}))


def test_the_gallery_says_why_each_hit_is_there():
    from imgrag.gallery import render_html
    from imgrag.thumbnails import Thumbnail

    hits = [hit("a", matched=["vector", "text"], snippet="x [EXIT] <b>", reason="red & exit"),
            hit("b", matched=["vector"])]
    page = render_html(hits, [Thumbnail(id="a", error="gone"), Thumbnail(id="b", error="x")],
                       "exit")
    assert "matched: vector, text<br>text: x <mark>EXIT</mark> &lt;b&gt;" in page
    assert "why: red &amp; exit" in page and "matched: vector</figcaption>" in page
