"""Vision re-ranking against the fake OpenAI server (real openai client): order, reasons,
the cache, and every fallback to the vector order."""

from __future__ import annotations

import json

import pytest

from flows.query import main
from imgrag.query import SearchReport, SearchRequest, run_search
from tests.fake_openai import API_KEY
from tests.retrieval import CATALOG


def search(catalog, **options):
    report = SearchReport()
    request = SearchRequest(text="red", k=len(CATALOG), rerank=True, **options)
    return run_search(catalog.settings, request, report=report), report


@pytest.fixture
def fresh_cache(catalog):
    (catalog.settings.resolved_state_dir / "imgrag-rerank-cache.sqlite3").unlink(missing_ok=True)


def vector_order(catalog):
    return [h.id for h in run_search(catalog.settings, SearchRequest(text="red",
                                                                     k=len(CATALOG)))]


def test_one_request_reorders_the_top_hits_with_reasons_then_the_cache_answers(
        catalog, fake_openai, fresh_cache):
    before = vector_order(catalog)
    hits, report = search(catalog, rerank_top=4, rerank_model="gpt-test-vision")

    assert len(fake_openai.requests) == 1
    body = fake_openai.requests[0]
    assert body["model"] == "gpt-test-vision"
    assert body["response_format"]["json_schema"]["name"] == "rerank"
    assert [h.id for h in hits] == before[:4][::-1] + before[4:]  # the fake reverses S1..S4
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert hits[0].reason == "S4 looks relevant" and hits[4].reason is None
    outcome = report.rerank
    assert (outcome.cached, outcome.prompt_tokens, outcome.completion_tokens) == (
        False, 100, 20)
    assert outcome.cost_usd == pytest.approx((100 * 0.75 + 20 * 4.5) / 1e6)
    assert report.warnings == []

    again, report = search(catalog, rerank_top=4, rerank_model="gpt-test-vision")
    assert len(fake_openai.requests) == 1 and report.rerank.cached
    assert [(h.id, h.reason) for h in again] == [(h.id, h.reason) for h in hits]
    search(catalog, rerank_top=4, rerank_model="another-model")
    assert len(fake_openai.requests) == 2  # the model is part of the key


@pytest.mark.parametrize("fault", ["429", "400", "malformed", "unknown labels", "no key"])
def test_every_failure_keeps_the_vector_order_with_a_warning(
        catalog, fake_openai, fresh_cache, monkeypatch, fault):
    if fault in ("429", "400"):
        fake_openai.fail_next(int(fault), n=3 if fault == "429" else 1)  # 429: 2 retries
    elif fault == "malformed":
        fake_openai.rerank_content = "Sure! S2 is best."
    elif fault == "unknown labels":
        fake_openai.rerank_content = json.dumps({"ranking": [{"label": "S99", "reason": "?"}]})
    else:
        monkeypatch.delenv("OPENAI_API_KEY")
    hits, report = search(catalog, rerank_top=4)
    assert [h.id for h in hits] == vector_order(catalog)
    assert all(h.reason is None for h in hits)
    [warning] = report.warnings
    assert warning.startswith("re-ranking skipped, vector order kept: ")
    expected = {"429": "429", "400": "400", "malformed": "not the requested JSON",
                "unknown labels": "names none", "no key": "OPENAI_API_KEY"}[fault]
    assert expected in warning
    fake_openai.rerank_content = None
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    hits, report = search(catalog, rerank_top=4)  # a failure is not cached: asked again
    assert report.rerank.cached is False and hits[0].reason == "S4 looks relevant"


def test_the_cli_prints_reasons_cost_and_a_warning_line(catalog, fake_openai, fresh_cache,
                                                        capsys, monkeypatch):
    # a terminal query with no Prefect API (the session's harness may be up: not for it)
    monkeypatch.setattr("flows.query.configured_api_url", lambda: None)
    args = ["red", "-k", "3", "--rerank", "--chroma-path", str(catalog.settings.chroma_path),
            "--collection", catalog.settings.collection]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "why: S3 looks relevant" in out
    assert "re-ranked by gpt-5.4-mini: 100 prompt + 20 completion tokens" in err
    fake_openai.fail_next(429, n=3)
    assert main([*args, "--rerank-top", "2"]) == 0  # the hits are still printed, exit 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3
    assert err.startswith("imgrag: warning: re-ranking skipped") and "429" in err
