"""The search app's JSON API through FastAPI's test client: real Chroma, the Titan emulator,
the fake OpenAI server; every endpoint, the error statuses, the token and loopback rules."""

from __future__ import annotations

import io
import subprocess
import sys
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgrag.app import AppSettings, SearchService, create_app
from imgrag.app.__main__ import main as app_main
from imgrag.app.server import CSP, check_bind
from imgrag.errors import ConfigError
from imgrag.lock import WriterLock
from imgrag.store import ImageStore
from tests.app_support import HOSTILE_KEY, RECORDS, app_catalog
from tests.conftest import COLOURS, image_bytes

LIMITS = AppSettings(max_upload_bytes=100_000, max_upload_pixels=1_000_000)
LOOPBACK = ["127.0.0.1", "localhost"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    yield from app_catalog(tmp_path_factory)


@pytest.fixture(scope="module")
def client(catalog):
    service = SearchService(catalog.settings, LIMITS)
    with TestClient(create_app(service, LOOPBACK), base_url="http://127.0.0.1") as test_client:
        yield test_client
    service.close()


def keys(body: dict) -> list[str]:
    return [hit["metadata"]["key"] for hit in body["hits"]]


def enc(record_id: str) -> str:
    return quote(record_id, safe="")


def test_text_search_ranks_red_first_then_answers_from_the_cache(client, catalog):
    first = client.get("/api/search", params={"q": "red", "k": 3})
    again = client.get("/api/search", params={"q": "red", "k": 3})

    assert first.status_code == again.status_code == 200
    body = first.json()
    assert set(keys(body)) == {"catalog/red-shirt.jpg", "catalog/red-mug.png",
                               "catalog/shoes/red-sneaker.jpg"}
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3]
    hit = body["hits"][0]
    assert hit["thumbnail_url"] == f"/api/thumbnail/{enc(hit['id'])}?size=256"
    assert (body["embedding_cached"], again.json()["embedding_cached"]) == (False, True)
    assert again.json()["hits"] == body["hits"]
    assert catalog.bedrock.stats.text_calls <= 1  # a cached text is never embedded again


def test_filters_of_the_cli_apply(client):
    def search(**filters) -> list[str]:
        response = client.get("/api/search", params={"q": "red", "k": 20, **filters})
        assert response.status_code == 200, response.text
        return keys(response.json())

    assert set(search(prefix="catalog/shoes/")) == {"catalog/shoes/red-sneaker.jpg",
                                                    "catalog/shoes/green-sneaker.jpg"}
    assert set(search(prefix="catalog/red-")) == {"catalog/red-shirt.jpg", "catalog/red-mug.png"}
    assert set(search(min_width=300)) == {"catalog/red-shirt.jpg", "catalog/blue-shirt.jpg"}
    assert "catalog/blue-shirt.jpg" not in search(modified_after="2024-01-01")
    assert search(bucket="nope") == []
    assert len(search(prefix="")) == RECORDS  # an empty field is no filter
    close = search(max_distance=0.5)
    assert 0 < len(close) < RECORDS


@pytest.mark.parametrize("params, message", [
    ({"q": "red", "min_width": 0}, "min_width"),
    ({"q": "red", "modified_after": "last tuesday"}, "invalid date"),
    ({"q": "red", "k": 1000}, "k"),
    ({"q": "red", "max_distance": -1}, "max_distance"),
    ({}, "give a query text"),
    ({"q": "   "}, "give a query text"),
])
def test_a_bad_search_is_a_400_with_a_message(client, params, message):
    response = client.get("/api/search", params=params)

    assert response.status_code == 400
    assert message in response.json()["error"]
    assert response.json()["status"] == 400


def test_similar_searches_by_the_stored_vector_without_a_bedrock_call(client, catalog):
    catalog.bedrock.reset_stats()
    record_id = catalog.uri("catalog/red-shirt.jpg")

    response = client.get(f"/api/similar/{enc(record_id)}", params={"k": 2})

    assert response.status_code == 200
    body = response.json()
    assert record_id not in [h["id"] for h in body["hits"]]
    assert len(body["hits"]) == 2 and all("red" in k for k in keys(body))
    assert catalog.bedrock.stats.requests == 0
    missing = client.get(f"/api/similar/{enc(catalog.uri('catalog/nope.jpg'))}")
    assert missing.status_code == 404 and "no record" in missing.json()["error"]


def test_upload_search_is_normalized_embedded_once_and_kept_for_its_url(client, catalog):
    data = image_bytes(COLOURS["red"], size=(120, 90), fmt="PNG", seed=7)
    catalog.bedrock.reset_stats()

    first = client.post("/api/search/image", params={"k": 3}, files={"file": ("x.png", data)})
    repeat = client.post("/api/search/image", params={"k": 3}, files={"file": ("x.png", data)})
    by_id = client.get("/api/search", params={"upload": first.json()["upload_id"], "k": 3})

    assert first.status_code == repeat.status_code == by_id.status_code == 200
    assert all("red" in k for k in keys(first.json()))
    assert (first.json()["embedding_cached"], repeat.json()["embedding_cached"]) == (False, True)
    assert by_id.json()["hits"] == first.json()["hits"]
    assert catalog.bedrock.stats.image_calls == 1
    gone = client.get("/api/search", params={"upload": "0" * 24})
    assert gone.status_code == 404 and "upload it again" in gone.json()["error"]


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", size).save(buffer, "PNG")
    return buffer.getvalue()


def test_uploads_are_bounded_in_bytes_and_pixels(client):
    too_big = client.post("/api/search/image", files={"file": ("a.jpg", b"\xff" * 150_000)})
    too_many_pixels = client.post("/api/search/image", files={"file": ("a.png", png((2000, 1000)))})
    not_an_image = client.post("/api/search/image", files={"file": ("a.txt", b"hello")})

    assert too_big.status_code == 413 and "larger than" in too_big.json()["error"]
    assert too_many_pixels.status_code == 413 and "pixels" in too_many_pixels.json()["error"]
    assert not_an_image.status_code == 400
    assert "not usable" in not_an_image.json()["error"]


def test_thumbnails_only_for_records_of_the_collection(client, catalog):
    record_id = catalog.uri("catalog/red-shirt.jpg")

    thumb = client.get(f"/api/thumbnail/{enc(record_id)}", params={"size": 128})
    outside = catalog.root.parent / "store" / "chroma.sqlite3"
    for probe in (catalog.uri("catalog/nope.jpg"), outside.as_uri(), "../../etc/passwd",
                  "/etc/passwd"):
        assert client.get(f"/api/thumbnail/{enc(probe)}").status_code == 404, probe
    bad_size = client.get(f"/api/thumbnail/{enc(record_id)}", params={"size": 300})

    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as image:
        assert max(image.size) == 128
    assert bad_size.status_code == 400


def test_a_hostile_key_round_trips_as_data(client, catalog):
    record_id = catalog.uri(HOSTILE_KEY)  # file:///…/%3Cimg%20src… (the id holds "%")

    # Starlette's TestClient unquotes a path twice (httpx's URL.path is unquoted already;
    # uvicorn unquotes once): quote the "%" once more to send what a browser sends.
    record = client.get(f"/api/record/{enc(record_id)}".replace("%", "%25"))
    thumb = client.get(record.json()["thumbnail_url"].replace("%", "%25"))

    assert record.status_code == 200, record.text
    assert record.json()["id"] == record_id
    assert record.json()["metadata"]["key"] == HOSTILE_KEY
    assert thumb.status_code == 200


def test_stats_and_health(client, catalog):
    stats = client.get("/api/stats").json()
    health = client.get("/healthz")

    assert (stats["records"], stats["collection"], stats["dim"]) == (RECORDS, "catalog", 1024)
    assert stats["model_id"] == "amazon.titan-embed-image-v1"
    assert stats["last_ingest"]["run_id"] == "run-1"
    assert stats["last_ingest"]["embedded"] == RECORDS
    assert health.status_code == 200 and health.json()["records"] == RECORDS


def test_bedrock_failure_is_a_502(client, catalog):
    catalog.bedrock.fail_next(1, "AccessDeniedException")
    try:
        response = client.get("/api/search", params={"q": "never asked before"})
    finally:
        catalog.bedrock.clear_faults()

    assert response.status_code == 502
    assert "access denied to Bedrock" in response.json()["error"]


def test_locked_or_unreachable_store_is_a_503(client, catalog, tmp_path):
    with WriterLock(catalog.settings.chroma_path):
        locked = client.get("/api/search", params={"q": "red"})
        health = client.get("/healthz")
    after = client.get("/api/search", params={"q": "red"})
    server = catalog.settings.model_copy(update={"chroma_url": "http://127.0.0.1:9"})
    with TestClient(create_app(SearchService(server, LIMITS))) as down:
        unreachable = down.get("/api/stats")

    assert locked.status_code == health.status_code == 503
    assert "being written" in locked.json()["error"]
    assert after.status_code == 200
    assert unreachable.status_code == 503


def test_an_embedded_store_is_read_again_after_another_process_wrote_it(client, catalog):
    script = (
        "import sys\nfrom imgrag.lock import WriterLock\nfrom imgrag.settings import Settings\n"
        "from imgrag.store import ImageStore\n"
        "s = Settings(chroma_path=sys.argv[1], collection='catalog')\n"
        "with WriterLock(s.chroma_path):\n"
        "    ImageStore.open(s).upsert(['file:///added.jpg'], [[1.0] + [0.0] * 1023],"
        " [{'key': 'added.jpg', 'etag': 'e'}])\n"
    )
    before = client.get("/api/stats").json()["records"]
    subprocess.run([sys.executable, "-c", script, str(catalog.settings.chroma_path)],
                   check=True, timeout=120)
    try:
        similar = client.get(f"/api/similar/{enc(catalog.uri('catalog/red-shirt.jpg'))}",
                             params={"k": 20}).json()
        assert client.get("/api/stats").json()["records"] == before + 1
        assert "file:///added.jpg" in [h["id"] for h in similar["hits"]]
    finally:
        from imgrag.store import ImageStore

        ImageStore.open(catalog.settings, create=False).delete(["file:///added.jpg"])


def test_summary_with_the_fake_openai(client, fake_openai, monkeypatch):
    config = client.get("/api/config").json()
    response = client.post("/api/summary", params={"q": "red", "n": 2})

    assert config == {"token": False, "summaries": True}
    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["label"] for s in body["sources"]] == ["S1", "S2"]
    assert body["cited"] and body["text"]
    monkeypatch.delenv("OPENAI_API_KEY")
    off = client.post("/api/summary", params={"q": "red"})
    assert off.status_code == 400 and "OPENAI_API_KEY" in off.json()["error"]


def test_page_docs_and_headers(client):
    page = client.get("/")
    script = client.get("/static/app.js")
    spec = client.get("/openapi.json").json()
    docs = client.get("/docs")

    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.headers["content-security-policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP
    assert "<script>" not in page.text and "style=" not in page.text
    assert script.status_code == 200 and "innerHTML" not in script.text
    assert {"/api/search", "/api/search/image", "/api/similar/{record_id}",
            "/api/thumbnail/{record_id}", "/api/stats"} <= set(spec["paths"])
    assert docs.status_code == 200 and "/static/docs.js" in docs.text
    assert client.get("/api/nothing").status_code == 404
    assert client.get("/", headers={"host": "evil.example"}).status_code == 400


def test_a_token_guards_the_api_and_the_page_can_trade_it_for_a_cookie(catalog):
    service = SearchService(catalog.settings, AppSettings(token="s3cret"))
    with TestClient(create_app(service)) as guarded:
        bare = guarded.get("/api/stats")
        wrong = guarded.get("/api/stats", headers={"authorization": "Bearer nope"})
        bearer = guarded.get("/api/stats", headers={"authorization": "Bearer s3cret"})
        page = guarded.get("/")
        refused = guarded.post("/api/session", headers={"authorization": "Bearer nope"})
        session = guarded.post("/api/session", headers={"authorization": "Bearer s3cret"})
        with_cookie = guarded.get("/api/stats")
    service.close()

    assert bare.status_code == wrong.status_code == refused.status_code == 401
    assert bare.headers["www-authenticate"] == "Bearer"
    assert bearer.status_code == 200 and page.status_code == 200
    assert session.status_code == 204 and "s3cret" not in session.headers["set-cookie"]
    assert "HttpOnly" in session.headers["set-cookie"]
    assert with_cookie.status_code == 200


def test_no_public_address_without_a_token_unless_allowed(monkeypatch, capsys):
    assert app_main(["--host", "0.0.0.0"]) == 2
    assert "refusing to listen on 0.0.0.0 without a token" in capsys.readouterr().err
    check_bind("0.0.0.0", has_token=False, allow_public=True)
    check_bind("192.168.1.5", has_token=True, allow_public=False)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, has_token=False, allow_public=False)
    with pytest.raises(ConfigError):
        check_bind("example.com", has_token=False, allow_public=False)


def test_ocr_text_matches_negative_terms_and_the_gap_cutoff(client, catalog):
    store = ImageStore.open(catalog.settings)
    mug = catalog.uri("catalog/red-mug.png")
    store.set_texts([mug], ["CLEARANCE 4711"], [{"ocr_version": 1, "ocr_confidence": 0.9}])
    body = client.get("/api/search", params={"q": "receipt 4711", "k": 2}).json()
    assert body["hits"][0]["id"] == mug
    assert (body["hits"][0]["matched"], body["hits"][0]["snippet"]) == (
        ["text"], "CLEARANCE [4711]")
    assert body["hits"][1]["matched"] == ["vector"]
    off = client.get("/api/search", params={"q": "receipt 4711", "k": 2, "text_match": "off"})
    assert [h["matched"] for h in off.json()["hits"]] == [None, None]

    assert keys(client.get("/api/search", params={"q": "red blue -red", "k": 1}).json()) == [
        "catalog/blue-shirt.jpg"]
    red = client.get("/api/search", params={"q": "red", "k": 6, "cutoff": "gap"}).json()
    assert {k.split("/")[-1].split("-")[0] for k in keys(red)} == {"red"}
    assert client.get("/api/search", params={"q": "red", "cutoff": "x"}).status_code in (
        400, 422)
