"""OpenAI vision summaries against a fake OpenAI-compatible server (real openai client)."""

from __future__ import annotations

import base64
import io
import sys

import pytest
from PIL import Image

from imgrag.query import SearchRequest, run_search
from imgrag.records import Hit
from imgrag.summarize import (
    SUMMARY_IMAGE_SIDE,
    SummaryError,
    make_openai_client,
    summarize_hits,
)
from tests.fake_openai import API_KEY
from tests.retrieval import CATALOG, Catalog


def red_hits(catalog: Catalog) -> list[Hit]:
    return run_search(catalog.settings, SearchRequest(text="red", k=len(CATALOG)))


def image_parts(request: dict) -> list[dict]:
    user = next(m for m in request["messages"] if m["role"] == "user")
    return [p for p in user["content"] if p["type"] == "image_url"]


def test_request_carries_the_model_and_the_top_images_as_jpeg_data_urls(catalog, fake_openai):
    hits = red_hits(catalog)
    summary = summarize_hits("red", hits, catalog.settings, n_images=3, model="gpt-test-vision",
                             client=make_openai_client(max_retries=0))
    (request,) = fake_openai.requests
    assert request["model"] == "gpt-test-vision"
    parts = image_parts(request)
    assert len(parts) == 3
    for part in parts:
        url = part["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
            assert im.format == "JPEG" and max(im.size) <= SUMMARY_IMAGE_SIDE
    user = next(m for m in request["messages"] if m["role"] == "user")
    labels = [p["text"] for p in user["content"] if p["type"] == "text"][1:]
    assert labels == ["S1", "S2", "S3"]
    assert "red" in user["content"][0]["text"]
    assert all(h.id not in str(request) for h in hits)  # URIs stay on this machine

    assert [s.label for s in summary.sources] == ["S1", "S2", "S3"]
    assert [s.id for s in summary.sources] == [h.id for h in hits[:3]]
    assert summary.cited == ["S1", "S2"]  # what the fake's answer cites
    assert summary.model == "gpt-test-vision"
    assert f"S1  {hits[0].id}" in str(summary)


def test_without_an_api_key_the_error_says_what_to_set(catalog, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SummaryError, match="set OPENAI_API_KEY"):
        summarize_hits("red", red_hits(catalog), catalog.settings)


def test_a_rate_limit_is_one_readable_line(catalog, fake_openai):
    fake_openai.fail_next(429)
    with pytest.raises(SummaryError) as info:
        summarize_hits("red", red_hits(catalog), catalog.settings,
                       client=make_openai_client(max_retries=0))
    message = str(info.value)
    assert message.startswith("OpenAI rate limit or quota exceeded (429): Rate limit reached")
    assert "\n" not in message
    assert len(fake_openai.requests) == 1


def test_client_retries_follow_the_client_settings(catalog, fake_openai):
    fake_openai.fail_next(429, n=1, headers={"retry-after-ms": "10"})
    summary = summarize_hits("red", red_hits(catalog), catalog.settings,
                             client=make_openai_client(max_retries=1))
    assert len(fake_openai.requests) == 2 and summary.cited


def test_a_bad_request_is_one_readable_line(catalog, fake_openai):
    fake_openai.fail_next(400)
    with pytest.raises(SummaryError, match=r"^OpenAI rejected the request \(400\): Invalid image"):
        summarize_hits("red", red_hits(catalog), catalog.settings,
                       client=make_openai_client(max_retries=0))


def test_a_wrong_key_and_an_unreachable_server_are_readable(catalog, fake_openai, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    with pytest.raises(SummaryError, match=r"rejected the API key \(401\)"):
        summarize_hits("red", red_hits(catalog), catalog.settings,
                       client=make_openai_client(max_retries=0))
    url = fake_openai.url
    fake_openai.stop()
    with pytest.raises(SummaryError, match=f"cannot reach OpenAI at {url}"):
        summarize_hits("red", red_hits(catalog), catalog.settings,
                       client=make_openai_client(max_retries=0, api_key=API_KEY))


def test_hits_whose_images_are_gone_are_not_sent(catalog, fake_openai):
    hits = red_hits(catalog)
    gone = Hit(rank=0, id="s3://nowhere-bucket/x.jpg", distance=0.0,
               metadata={"bucket": "nowhere-bucket", "key": "x.jpg"})  # no etag recorded
    summary = summarize_hits("red", [gone, *hits], catalog.settings, n_images=3,
                             client=make_openai_client(max_retries=0))
    assert len(image_parts(fake_openai.requests[0])) == 2
    assert [s.id for s in summary.sources] == [h.id for h in hits[:2]]


def test_without_the_openai_package_the_error_names_the_extra(catalog, monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai → ImportError
    with pytest.raises(SummaryError, match=r"pip install 'imgrag\[summaries\]'"):
        summarize_hits("red", red_hits(catalog), catalog.settings)
