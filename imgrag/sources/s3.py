"""Amazon S3 source: ListObjectsV2 pages streamed, GetObject pinned to the listed ETag."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from imgrag.aws import new_session
from imgrag.errors import SourceError
from imgrag.records import SourceObject
from imgrag.sources.base import COPY_CHUNK, FetchError, Listing, is_indexed_key
from imgrag.sources.inventory import inventory_listing, read_manifest


def make_s3_client(region: str | None = None, max_pool: int = 10) -> Any:
    """An S3 client from boto3's standard configuration (env, profiles, AWS_ENDPOINT_URL_S3)."""
    config = Config(
        retries={"total_max_attempts": 5, "mode": "standard"},
        max_pool_connections=max(10, max_pool),
    )
    return new_session().client("s3", region_name=region, config=config)


def _s3_error(exc: Exception, bucket: str) -> SourceError:
    if isinstance(exc, NoCredentialsError):
        return SourceError("no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID)")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "404"):
            return SourceError(f"bucket {bucket!r} does not exist")
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            return SourceError(f"access denied to bucket {bucket!r}")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
            return SourceError(f"AWS credentials rejected by S3 ({code})")
        return SourceError(f"S3 error on bucket {bucket!r}: {code}")
    return SourceError(f"cannot reach S3: {type(exc).__name__}: {exc}")


class S3Source:
    """Images (and videos, when ``video``) under ``s3://bucket/prefix``."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None,
                 video: bool = True, inventory: str | None = None) -> None:
        self.bucket = bucket
        self.video = video
        self.prefix = prefix
        self.inventory = inventory  # s3://…/manifest.json of an S3 Inventory report
        self.scope = f"s3://{bucket}/{prefix}"
        self.client = client if client is not None else make_s3_client()

    def check(self) -> None:
        """One cheap ListObjectsV2 call: the bucket exists and we may list it (and the
        inventory manifest, when one is given, is a usable report of this bucket)."""
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, self.bucket) from None
        if self.inventory:
            read_manifest(self.client, self.inventory, self.bucket)

    def list_objects(self) -> Listing:
        """Stream image (and video) objects page by page (S3 returns keys in UTF-8 binary
        order), or the rows of the inventory report."""
        if self.inventory:
            manifest = read_manifest(self.client, self.inventory, self.bucket)
            return inventory_listing(self.client, manifest, self.prefix, self.video)
        return Listing(self._pages)

    def _pages(self, listing: Listing) -> Iterator[SourceObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    if not is_indexed_key(key, self.video):
                        listing.ignored += 1
                        continue
                    yield SourceObject(
                        uri=f"s3://{self.bucket}/{key}",
                        bucket=self.bucket,
                        key=key,
                        etag=item["ETag"],
                        size=item["Size"],
                        last_modified=item.get("LastModified"),
                    )
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, self.bucket) from None

    def fetch(self, obj: SourceObject) -> bytes:
        """GetObject pinned to the listed ETag (see ``read_object``)."""
        return read_object(self.client, obj.bucket, obj.key, if_match=obj.etag)

    def fetch_to(self, obj: SourceObject, out: BinaryIO, limit: int) -> int:
        """GetObject pinned to the listed ETag, streamed into ``out`` in chunks."""
        return stream_object(self.client, obj.bucket, obj.key, out, if_match=obj.etag,
                             limit=limit)

    def close(self) -> None:
        """Close the S3 client's connections (a source opened for a run owns its client)."""
        self.client.close()


@dataclass(frozen=True)
class FetchedObject:
    """An object's bytes with the ETag and modification time S3 sent them with."""

    data: bytes
    etag: str
    last_modified: datetime | None


def fetch_object(
    client: Any, bucket: str, key: str, *, if_match: str | None = None, limit: int | None = None
) -> FetchedObject:
    """GetObject: the one place S3 object bytes are read; FetchError (one-line reason,
    permanent or not) for every failure, the response body closed on every path.

    With ``if_match`` the bytes belong to that ETag: ``IfMatch`` is sent and the response's
    ETag checked too (a server or proxy ignoring ``If-Match`` cannot pair one version's
    bytes with another's ETag). An object over ``limit`` bytes is refused unread.
    """
    try:
        extra = {"IfMatch": if_match} if if_match else {}
        response = client.get_object(Bucket=bucket, Key=key, **extra)
        with closing(response["Body"]) as body:
            if if_match and response.get("ETag") != if_match:
                raise FetchError("object changed since listing", permanent=False)
            if limit is not None and response.get("ContentLength", 0) > limit:
                raise FetchError(f"larger than {limit} bytes", permanent=True)
            data = body.read() if limit is None else body.read(limit + 1)
        if limit is not None and len(data) > limit:
            raise FetchError(f"larger than {limit} bytes", permanent=True)
        return FetchedObject(data, response.get("ETag", ""), response.get("LastModified"))
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        reason = _get_error(code, listed=if_match is not None)
        raise FetchError(reason, permanent=code == "InvalidObjectState") from None
    except BotoCoreError as exc:
        raise FetchError(f"S3 GetObject failed: {exc}", permanent=False) from None


def stream_object(
    client: Any, bucket: str, key: str, out: BinaryIO, *, if_match: str, limit: int
) -> int:
    """GetObject of ``s3://bucket/key`` at ETag ``if_match`` written to ``out`` chunk by
    chunk; the bytes written. FetchError as in ``fetch_object``."""
    written = 0
    try:
        response = client.get_object(Bucket=bucket, Key=key, IfMatch=if_match)
        with closing(response["Body"]) as body:
            if response.get("ETag") != if_match:
                raise FetchError("object changed since listing", permanent=False)
            if response.get("ContentLength", 0) > limit:
                raise FetchError(f"larger than {limit} bytes", permanent=True)
            for chunk in body.iter_chunks(COPY_CHUNK):
                written += len(chunk)
                if written > limit:
                    raise FetchError(f"larger than {limit} bytes", permanent=True)
                out.write(chunk)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise FetchError(_get_error(code, listed=True),
                         permanent=code == "InvalidObjectState") from None
    except BotoCoreError as exc:
        raise FetchError(f"S3 GetObject failed: {exc}", permanent=False) from None
    return written


def read_object(
    client: Any, bucket: str, key: str, *, if_match: str | None = None, limit: int | None = None
) -> bytes:
    """The bytes of ``s3://bucket/key`` (see ``fetch_object``); FetchError on failure."""
    return fetch_object(client, bucket, key, if_match=if_match, limit=limit).data


def _get_error(code: str, listed: bool) -> str:
    if code in ("PreconditionFailed", "412"):
        return "object changed since listing"
    if code in ("NoSuchKey", "404"):
        return "object deleted since listing" if listed else "no such object"
    if code in ("AccessDenied", "403"):
        return "access denied"
    if code == "InvalidObjectState":
        return "object is archived (restore it first)"
    return f"S3 GetObject failed: {code or 'error'}"
