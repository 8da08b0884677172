"""``python -m flows.query`` flags, through ``main(argv)`` and the real query flow."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from flows.query import main
from flows.query_flow import query_flow
from imgrag.errors import ConfigError
from imgrag.thumbnails import THUMBNAIL_SIDE
from tests.retrieval import CATALOG, Catalog

pytestmark = pytest.mark.usefixtures("prefect_harness")




def run(catalog: Catalog, capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--chroma-path", str(catalog.settings.chroma_path),
                 "--collection", catalog.settings.collection])
    out = capsys.readouterr()
    return code, out.out, out.err


def hit_keys(out: str) -> list[str]:
    return [h["metadata"]["key"] for h in json.loads(out)]


def test_html_and_contact_sheet_outputs(catalog, capsys, tmp_path):
    code, out, err = run(catalog, capsys, "red dress", "-k", "5", "--html",
                         str(tmp_path / "out.html"), "--contact-sheet", str(tmp_path / "out.png"))
    assert code == 0, err
    assert len(out.splitlines()) == 5
    page = (tmp_path / "out.html").read_text()
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', page)) == 5
    assert "<h1>&quot;red dress&quot;</h1>" in page and "#5</b>" in page
    with Image.open(tmp_path / "out.png") as sheet:
        assert sheet.format == "PNG"
        assert sheet.width == 12 + 4 * (THUMBNAIL_SIDE + 12)  # 5 hits: 4 columns, 2 rows
        assert sheet.height > 2 * THUMBNAIL_SIDE
    assert "wrote" in err and "out.html" in err and "out.png" in err


def test_image_query_with_exclude_self(catalog, capsys):
    ref = str(catalog.path("catalog/shoes/red-sneaker.jpg"))
    code, out, err = run(catalog, capsys, "--image", ref, "--exclude-self", "-k", "2", "--json")
    assert code == 0, err
    assert set(hit_keys(out)) == {"catalog/red-shirt.jpg", "catalog/red-mug.png"}


def test_filter_flags_reach_the_search(catalog, capsys):
    code, out, err = run(catalog, capsys, "red", "--json", "--prefix", "catalog/",
                         "--min-width", "200", "--modified-after", "2024-01-01")
    assert code == 0, err
    assert sorted(hit_keys(out)) == ["catalog/red-shirt.jpg", "catalog/shoes/red-sneaker.jpg"]

    code, out, _ = run(catalog, capsys, "red", "--json", "--bucket", "elsewhere")
    assert (code, json.loads(out)) == (0, [])


def test_max_distance_flag_cuts_weak_hits(catalog, capsys):
    _, out, _ = run(catalog, capsys, "yellow", "--json", "-k", str(len(CATALOG)))
    distances = [h["distance"] for h in json.loads(out)]
    cut = (distances[0] + distances[1]) / 2
    code, out, _ = run(catalog, capsys, "yellow", "--json", "--max-distance", str(cut))
    assert code == 0 and hit_keys(out) == ["archive/yellow-old.jpg"]


def test_repeated_query_is_answered_from_the_text_cache(catalog, capsys):
    before = catalog.bedrock.stats.text_calls
    assert run(catalog, capsys, "green sneakers, twice")[0] == 0
    assert run(catalog, capsys, "green sneakers, twice")[0] == 0
    assert catalog.bedrock.stats.text_calls == before + 1


@pytest.mark.parametrize("argv, message", [
    ([], "give a query text, an example image, or both"),
    (["red", "--text", "blue", "--image", "x.jpg"], "give the text once"),
    (["red", "--not", " "], "a --not text is empty"),
    (["red", "--rerank-top", "1"], "rerank_top"),
    (["red", "--exclude-self"], "--exclude-self needs --image"),
    (["red", "--modified-after", "last week"], "invalid date"),
    (["red", "--min-width", "0"], "min_width"),
    (["red", "--max-distance", "-1"], "max_distance"),
    (["red", "--summarize", "--summary-images", "0"], "--summary-images"),
    (["--image", "/no/such/file.jpg"], "not found"),
])
def test_bad_flags_are_one_line_errors(catalog, capsys, argv, message):
    code, out, err = run(catalog, capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["--image", "NOT_AN_IMAGE"], "the query image is not usable"),
    (["red", "--where", '{"a": 1, "b": 2}'], "invalid where filter: each level must be"),
    (["red", "--where", '{"bucket": {"$bad": 1}}'], "invalid where filter"),
    (["a query Bedrock refuses"], "access denied to Bedrock model"),
])
def test_errors_inside_the_query_flow_are_one_line_and_not_retried(
    catalog, console_capfd, tmp_path, request, argv, message
):
    not_an_image = tmp_path / "bad.jpg"
    not_an_image.write_text("this is not an image")
    argv = [str(not_an_image) if a == "NOT_AN_IMAGE" else a for a in argv]
    catalog.bedrock.reset_stats()
    refused = "Bedrock" in message
    if refused:
        request.addfinalizer(catalog.bedrock.clear_faults)
        catalog.bedrock.fail_next(1, "AccessDeniedException")  # a retry would succeed

    code = main([*argv, "--chroma-path", str(catalog.settings.chroma_path),
                 "--collection", catalog.settings.collection])
    out, err = console_capfd.readouterr()

    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1, err  # no traceback, no Prefect lines repeating it
    assert err.startswith("imgrag: error: ") and message in err, err
    assert catalog.bedrock.stats.requests == (1 if refused else 0)  # not retried


def test_invalid_where_of_a_flow_run_is_a_config_error(catalog):
    # Deployment parameters reach the flow without the CLI's checks.
    with pytest.raises(ConfigError, match="invalid where filter"):
        query_flow("red", where={"a": 1, "b": 2}, collection=catalog.settings.collection,
                   chroma_path=str(catalog.settings.chroma_path))


def test_summarize_json_maps_citations_to_uris(catalog, capsys, fake_openai, tmp_path):
    code, out, err = run(catalog, capsys, "red", "-k", "4", "--json", "--summarize",
                         "--summary-images", "2", "--openai-model", "gpt-test",
                         "--html", str(tmp_path / "g.html"))
    assert code == 0, err
    answer = json.loads(out)
    assert set(answer) == {"hits", "summary", "error"} and answer["error"] is None
    hits, summary = answer["hits"], answer["summary"]
    assert len(hits) == 4 and summary["model"] == "gpt-test"
    assert summary["sources"] == [{"label": "S1", "id": hits[0]["id"]},
                                  {"label": "S2", "id": hits[1]["id"]}]
    assert summary["cited"] == ["S1", "S2"] and "[S1]" in summary["text"]
    assert fake_openai.requests[0]["model"] == "gpt-test"
    assert summary["text"] in (tmp_path / "g.html").read_text()


def test_summarize_text_output_lists_the_sources(catalog, capsys, fake_openai):
    code, out, _ = run(catalog, capsys, "red", "-k", "2", "--summarize")
    assert code == 0
    assert "Summary (" in out and re.search(r"^  S1  file://\S+$", out, re.M)


def test_summarize_without_a_key_still_prints_the_hits(catalog, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code, out, err = run(catalog, capsys, "red", "-k", "3", "--summarize", "--json")
    assert code == 2
    answer = json.loads(out)
    assert len(answer["hits"]) == 3 and answer["summary"] is None
    assert "OPENAI_API_KEY" in answer["error"]
    assert err.startswith("imgrag: error: summaries and re-ranking need an OpenAI API key")
    assert "Traceback" not in err and err.count("\n") == 1


def test_summarize_rate_limited_is_readable_after_the_client_retries(catalog, capsys,
                                                                     fake_openai):
    fake_openai.fail_next(429, n=3, headers={"retry-after-ms": "10"})
    code, out, err = run(catalog, capsys, "red", "-k", "2", "--summarize")
    assert code == 2 and len(out.splitlines()) == 2  # the hits are printed
    assert "OpenAI rate limit or quota exceeded (429)" in err and "Traceback" not in err
    assert len(fake_openai.requests) == 3  # the openai client's default: 2 retries


def test_outputs_to_an_unwritable_path_are_a_one_line_error(catalog, capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(catalog, capsys, "red", "--html", str(Path(blocker, "sub", "g.html")))
    assert code == 2 and err.startswith("imgrag: error: cannot write")
