"""S3 URIs checked against S3's naming rules before any request, without loading boto3."""

from __future__ import annotations

import re

from imgrag.errors import ConfigError

# S3 bucket naming rules (general purpose buckets), checked before any request is made.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
MAX_KEY_BYTES = 1024


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` → (bucket, prefix); ConfigError when either is invalid."""
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if (
        not _BUCKET_RE.match(bucket)
        or ".." in bucket
        or _IP_RE.match(bucket)
        or bucket.startswith(_RESERVED_PREFIXES)
        or bucket.endswith(_RESERVED_SUFFIXES)
    ):
        raise ConfigError(f"invalid S3 bucket name {bucket!r} in {uri!r}")
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigError(f"S3 prefix {prefix!r} is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise ConfigError(f"S3 prefix is {size} bytes, longer than {MAX_KEY_BYTES}")
    return bucket, prefix
