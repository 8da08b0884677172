"""One S3 GetObject for the source, query-by-image and the notebook: the same reasons and
limits everywhere, and the response body closed on every path."""

from __future__ import annotations

import pytest

from imgrag import download_s3_objects
from imgrag.errors import ConfigError
from imgrag.query import read_image_ref
from imgrag.settings import Settings
from imgrag.sources import FetchError
from imgrag.sources.s3 import read_object


@pytest.fixture
def bodies(s3):
    """Every GetObject response body the client receives, to check they were closed."""
    seen = []
    def keep(parsed, **_):
        if "Body" in parsed:  # an error response has none
            seen.append(parsed["Body"])

    s3.meta.events.register("after-call.s3.GetObject", keep)
    return seen


def test_an_object_over_the_limit_is_refused_permanently_and_its_body_closed(s3, bucket, bodies):
    s3.put_object(Bucket=bucket, Key="big.jpg", Body=b"x" * 2000)
    with pytest.raises(FetchError) as info:
        read_object(s3, bucket, "big.jpg", limit=1000)
    assert (info.value.reason, info.value.permanent) == ("larger than 1000 bytes", True)
    assert read_object(s3, bucket, "big.jpg", limit=2000) == b"x" * 2000
    assert len(bodies) == 2 and all(body._raw_stream.closed for body in bodies)


def test_query_and_notebook_read_with_the_same_limit_and_reasons(
    s3, bucket, bodies, tmp_path, monkeypatch
):
    s3.put_object(Bucket=bucket, Key="big.jpg", Body=b"x" * 2000)
    monkeypatch.setenv("IMGRAG_MAX_OBJECT_BYTES", "1000")
    with pytest.raises(ConfigError, match=r"^cannot read s3://.*/big.jpg: larger than 1000"):
        read_image_ref(f"s3://{bucket}/big.jpg", Settings(), s3)
    with pytest.raises(ConfigError, match=r"^cannot read s3://.*/gone.jpg: no such object$"):
        read_image_ref(f"s3://{bucket}/gone.jpg", Settings(), s3)
    assert download_s3_objects(bucket, ["big.jpg"], tmp_path, s3_client=s3) == [None]
    assert len(bodies) == 2 and all(body._raw_stream.closed for body in bodies)
