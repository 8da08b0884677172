"""Tests of the fake Bedrock Runtime (Titan Multimodal Embeddings G1) emulator.

Every test drives the emulator through a real boto3 ``bedrock-runtime`` client, so request
signing, retries and error parsing are boto3's own. Nothing contacts AWS.
"""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from PIL import Image

from imgrag.emulators.bedrock import MODEL_ID, THROTTLE_MESSAGE, FakeBedrock

REPO_ROOT = Path(__file__).resolve().parents[1]

ERROR_CASES = [
    ("ThrottlingException", 429),
    ("ValidationException", 400),
    ("ModelTimeoutException", 408),
    ("ServiceUnavailableException", 503),
    ("InternalServerException", 500),
    ("ResourceNotFoundException", 404),
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def boto_session() -> Iterator[boto3.session.Session]:
    """One boto3 session for the module (creating one costs ~50 ms), with fake credentials."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        }.items():
            mp.setenv(key, value)
        for key in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
            "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
            "AWS_MAX_ATTEMPTS",
            "AWS_RETRY_MODE",
        ):
            mp.delenv(key, raising=False)
        yield boto3.session.Session()


@pytest.fixture
def fb() -> Iterator[FakeBedrock]:
    with FakeBedrock() as emulator:
        yield emulator


def make_client(
    session: boto3.session.Session, url: str | None, attempts: int = 1, **config: Any
) -> Any:
    """A bedrock-runtime client; ``attempts`` is the TOTAL number of attempts (1 = no retry)."""
    retries = {"total_max_attempts": attempts, "mode": "standard"}
    return session.client(
        "bedrock-runtime", endpoint_url=url, config=Config(retries=retries, **config)
    )


@pytest.fixture
def client(boto_session: boto3.session.Session, fb: FakeBedrock) -> Any:
    return make_client(boto_session, fb.url)


def invoke(client: Any, body: dict[str, Any] | str, model_id: str = MODEL_ID) -> dict[str, Any]:
    response = client.invoke_model(
        modelId=model_id,
        body=body if isinstance(body, str) else json.dumps(body),
        contentType="application/json",
        accept="application/json",
    )
    return json.loads(response["body"].read())


def error_of(client: Any, body: dict[str, Any] | str, model_id: str = MODEL_ID) -> ClientError:
    with pytest.raises(ClientError) as info:
        invoke(client, body, model_id)
    return info.value


def image_b64(
    color: str | tuple[int, int, int],
    size: tuple[int, int] = (48, 48),
    fmt: str = "PNG",
    noise_seed: int | None = None,
    pad_to: int = 0,
) -> str:
    image = Image.new("RGB", size, color)
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-25, 26, (*size[::-1], 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, fmt)
    data = buf.getvalue()
    data += b"\0" * max(0, pad_to - len(data))  # trailing bytes: still a valid image
    return base64.b64encode(data).decode()


def cos(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a), np.asarray(b)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


# --------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("length", [256, 384, 1024, None])
def test_image_embedding_dims(client: Any, fb: FakeBedrock, length: int | None) -> None:
    body: dict[str, Any] = {"inputImage": image_b64("red")}
    if length is not None:
        body["embeddingConfig"] = {"outputEmbeddingLength": length}
    out = invoke(client, body)
    assert len(out["embedding"]) == (length or 1024)
    assert np.linalg.norm(out["embedding"]) == pytest.approx(1.0)
    assert out["inputTextTokenCount"] == 0
    assert out["message"] is None
    assert (fb.stats.image_calls, fb.stats.text_calls, fb.stats.requests) == (1, 0, 1)


def test_text_embedding(client: Any, fb: FakeBedrock) -> None:
    out = invoke(client, {"inputText": "A red car, parked."})
    assert len(out["embedding"]) == 1024
    assert np.linalg.norm(out["embedding"]) == pytest.approx(1.0)
    assert out["inputTextTokenCount"] == 6  # A red car , parked .
    assert (fb.stats.text_calls, fb.stats.image_calls) == (1, 0)


def test_colour_query_ranks_matching_images_first(client: Any) -> None:
    images = {
        "red": image_b64((220, 30, 30), noise_seed=1),
        "green": image_b64((30, 180, 40), noise_seed=2),
        "blue": image_b64((30, 40, 200), noise_seed=3, fmt="JPEG"),
    }
    vectors = {
        name: invoke(client, {"inputImage": b64})["embedding"] for name, b64 in images.items()
    }
    queries = {"red": "a photo of a RED sports car", "green": "green", "blue": "Blue sky"}
    for colour, query in queries.items():
        q = invoke(client, {"inputText": query})["embedding"]
        scores = {name: cos(q, v) for name, v in vectors.items()}
        assert max(scores, key=scores.__getitem__) == colour, scores
        others = [s for name, s in scores.items() if name != colour]
        assert scores[colour] > 0.8
        assert max(others) < 0.3
    crimson = invoke(client, {"inputText": "crimson"})["embedding"]
    assert cos(crimson, vectors["red"]) > cos(crimson, vectors["blue"]) + 0.5


def test_deterministic_and_distinct(client: Any, boto_session: boto3.session.Session) -> None:
    red_a, red_b = image_b64("red"), image_b64("red", size=(40, 30))
    first = invoke(client, {"inputImage": red_a})["embedding"]
    assert invoke(client, {"inputImage": red_a})["embedding"] == first
    with FakeBedrock() as other:  # a new emulator instance gives the very same vectors
        assert (
            invoke(make_client(boto_session, other.url), {"inputImage": red_a})["embedding"]
            == first
        )
    second = invoke(client, {"inputImage": red_b})["embedding"]
    assert second != first  # distinct images -> distinct vectors ...
    assert cos(first, second) > 0.9  # ... yet alike when they look alike
    text = invoke(client, {"inputText": "hello world"})["embedding"]
    assert invoke(client, {"inputText": "hello world"})["embedding"] == text


def test_image_and_text_are_averaged(client: Any, fb: FakeBedrock) -> None:
    img, txt = image_b64("blue"), "a blue door"
    vi = np.asarray(invoke(client, {"inputImage": img})["embedding"])
    vt = np.asarray(invoke(client, {"inputText": txt})["embedding"])
    out = invoke(client, {"inputImage": img, "inputText": txt})
    expected = (vi + vt) / np.linalg.norm(vi + vt)
    np.testing.assert_allclose(out["embedding"], expected, atol=1e-9)
    assert out["inputTextTokenCount"] == 3
    assert fb.stats.image_calls == 2 and fb.stats.text_calls == 1


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("code", "status"), ERROR_CASES)
def test_error_codes_parsed_by_boto3(client: Any, fb: FakeBedrock, code: str, status: int) -> None:
    fb.fail_next(1, code)
    err = error_of(client, {"inputText": "red"})
    assert err.response["Error"]["Code"] == code
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert err.response["Error"]["Message"]
    stats = fb.stats
    assert stats.requests == 1
    assert (stats.throttled, stats.errors) == ((1, 0) if status == 429 else (0, 1))
    assert invoke(client, {"inputText": "red"})["embedding"]  # only the next 1 failed


def test_unknown_model_is_resource_not_found(client: Any, fb: FakeBedrock) -> None:
    err = error_of(client, {"inputText": "x"}, model_id="amazon.titan-embed-text-v2:0")
    assert err.response["Error"]["Code"] == "ResourceNotFoundException"
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    arn = f"arn:aws:bedrock:us-east-1::foundation-model/{MODEL_ID}"
    assert invoke(client, {"inputText": "x"}, model_id=arn)["embedding"]
    assert (fb.stats.errors, fb.stats.text_calls) == (1, 1)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("{not json", "Malformed input request"),
        ({}, "at least one of inputText or inputImage"),
        ({"inputText": "x", "embeddingConfig": {"outputEmbeddingLength": 512}}, "enum"),
        ({"inputText": "x", "normalize": True}, "extraneous key [normalize]"),
        ({"inputText": 42}, "expected type: String"),
        ({"inputImage": "!!not base64!!"}, "Unable to process provided image"),
        ({"inputImage": base64.b64encode(b"hello").decode()}, "Unable to process provided image"),
        ({"inputImage": image_b64("red", fmt="GIF")}, "Unsupported image format: GIF"),
        ({"inputImage": image_b64("red", fmt="WEBP")}, "Unsupported image format: WEBP"),
    ],
)
def test_validation_errors(client: Any, fb: FakeBedrock, body: Any, fragment: str) -> None:
    err = error_of(client, body)
    assert err.response["Error"]["Code"] == "ValidationException"
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert fragment in err.response["Error"]["Message"]
    assert fb.stats.errors == 1


@pytest.mark.parametrize("size", [(2049, 8), (8, 2049)])
def test_image_exceeds_max_pixels(client: Any, size: tuple[int, int]) -> None:
    err = error_of(client, {"inputImage": image_b64("red", size=size)})
    assert err.response["Error"]["Code"] == "ValidationException"
    assert err.response["Error"]["Message"] == "Image exceeds max pixels allowed"


def test_max_size_image_accepted(client: Any) -> None:
    assert invoke(client, {"inputImage": image_b64("green", size=(2048, 2048))})["embedding"]


def test_image_over_5_mb_rejected(client: Any) -> None:
    limit = 5 * 1024 * 1024
    assert invoke(client, {"inputImage": image_b64("red", pad_to=limit)})["embedding"]
    err = error_of(client, {"inputImage": image_b64("red", pad_to=limit + 1)})
    assert err.response["Error"]["Code"] == "ValidationException"
    assert "max size" in err.response["Error"]["Message"]


def test_text_over_256_tokens_rejected(client: Any) -> None:
    assert invoke(client, {"inputText": " ".join(["red"] * 256)})["inputTextTokenCount"] == 256
    err = error_of(client, {"inputText": " ".join(["red"] * 257)})
    assert err.response["Error"]["Code"] == "ValidationException"
    assert "257 tokens" in err.response["Error"]["Message"]
    assert invoke(client, {"inputText": "红色" * 128})["inputTextTokenCount"] == 256
    assert "257 tokens" in error_of(client, {"inputText": "红色" * 128 + "车"}
                                    ).response["Error"]["Message"]


# --------------------------------------------------------------------------- knobs


def test_quota_throttles(boto_session: boto3.session.Session) -> None:
    with FakeBedrock(quota_rps=5) as fb:
        client = make_client(boto_session, fb.url)
        ok = throttled = 0
        for _ in range(20):
            try:
                invoke(client, {"inputText": "x"})
                ok += 1
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "ThrottlingException"
                assert exc.response["Error"]["Message"] == THROTTLE_MESSAGE
                assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 429
                throttled += 1
        assert 5 <= ok <= 7  # burst of 5 (+ refill during the loop)
        stats = fb.stats
        assert (stats.throttled, stats.text_calls, stats.requests) == (throttled, ok, 20)
        time.sleep(0.25)  # refills >= 1 token at 5/s
        assert invoke(client, {"inputText": "x"})["embedding"]


def test_fail_next_then_recovers(client: Any, fb: FakeBedrock) -> None:
    fb.fail_next(2, "ServiceUnavailableException")
    for _ in range(2):
        assert error_of(client, {"inputText": "x"}).response["Error"]["Code"] == (
            "ServiceUnavailableException"
        )
    assert invoke(client, {"inputText": "x"})["embedding"]
    assert (fb.stats.errors, fb.stats.text_calls, fb.stats.requests) == (2, 1, 3)
    fb.reset_stats()
    assert fb.stats.requests == 0


def test_fail_when(client: Any, fb: FakeBedrock) -> None:
    fb.fail_when(lambda body: "ModelTimeoutException" if body.get("inputText") == "slow" else None)
    assert error_of(client, {"inputText": "slow"}).response["Error"]["Code"] == (
        "ModelTimeoutException"
    )
    assert invoke(client, {"inputText": "fast"})["embedding"]
    fb.clear_faults()
    assert invoke(client, {"inputText": "slow"})["embedding"]


def test_boto3_standard_retries(boto_session: boto3.session.Session, fb: FakeBedrock) -> None:
    client = make_client(boto_session, fb.url, attempts=3)
    fb.fail_next(2, "InternalServerException")  # 500/503 are retried (50 ms base backoff)
    assert invoke(client, {"inputText": "x"})["embedding"]
    assert fb.stats.requests == 3
    fb.reset_stats()
    fb.fail_next(1, "ModelTimeoutException")  # 408: NOT retried by boto3 standard mode
    assert error_of(client, {"inputText": "x"}).response["Error"]["Code"] == (
        "ModelTimeoutException"
    )
    assert fb.stats.requests == 1
    # retries={"max_attempts": N} counts RETRIES: max_attempts=1 means two attempts.
    fb.reset_stats()
    legacy_style = boto_session.client(
        "bedrock-runtime",
        endpoint_url=fb.url,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    fb.fail_next(1, "ServiceUnavailableException")
    assert invoke(legacy_style, {"inputText": "x"})["embedding"]
    assert fb.stats.requests == 2


def test_latency_applies_but_not_to_throttles(boto_session: boto3.session.Session) -> None:
    with FakeBedrock(latency_ms=150, quota_rps=1, burst=1) as fb:
        client = make_client(boto_session, fb.url)
        start = time.perf_counter()
        invoke(client, {"inputText": "x"})
        assert time.perf_counter() - start >= 0.15
        start = time.perf_counter()
        assert error_of(client, {"inputText": "x"}).response["Error"]["Code"] == (
            "ThrottlingException"
        )
        assert time.perf_counter() - start < 0.1


def test_max_inflight(boto_session: boto3.session.Session) -> None:
    with FakeBedrock(latency_ms=150) as fb:
        client = make_client(boto_session, fb.url, max_pool_connections=8)
        threads = [
            threading.Thread(target=invoke, args=(client, {"inputText": f"t{i}"})) for i in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = fb.stats
        assert stats.text_calls == 6
        assert stats.max_inflight >= 4  # 6 expected; leave room for a slow scheduler
        assert fb.inflight == 0


@pytest.mark.usefixtures("boto_session")  # fake credentials/region in the environment
def test_env_var_endpoint(fb: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fb.url)
    client = boto3.session.Session().client(  # fresh session: reads the env var
        "bedrock-runtime", config=Config(retries={"total_max_attempts": 1})
    )
    assert client.meta.endpoint_url == fb.url
    assert invoke(client, {"inputText": "green"})["embedding"]
    assert fb.stats.text_calls == 1


# --------------------------------------------------------------------------- HTTP extras


def _http(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict, Any]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_stats_endpoint_and_unknown_paths(client: Any, fb: FakeBedrock) -> None:
    invoke(client, {"inputImage": image_b64("red")})
    status, _, stats = _http(f"{fb.url}/_emulator/stats")
    assert status == 200
    assert stats["image_calls"] == 1 and stats["requests"] == 1 and stats["inflight"] == 0
    status, _, _ = _http(
        f"{fb.url}/_emulator/fail_next", "POST", b'{"n": 1, "code": "ThrottlingException"}'
    )
    assert status == 200
    assert error_of(client, {"inputText": "x"}).response["Error"]["Code"] == "ThrottlingException"
    status, _, stats = _http(f"{fb.url}/_emulator/reset", "POST", b"")
    assert status == 200 and stats["requests"] == 0 == fb.stats.requests
    status, headers, body = _http(f"{fb.url}/nope")
    assert status == 404 and "message" in body
    assert headers["Content-Type"] == "application/json"
    assert headers["x-amzn-ErrorType"] == "UnknownOperationException"


def test_cli_prints_url_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgrag.emulators.bedrock", "--port", "0", "--latency-ms", "1"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("fake-bedrock listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1]
        status, _, stats = _http(f"{url}/_emulator/stats")
        assert status == 200 and stats["requests"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
