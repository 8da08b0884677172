"""S3 Inventory as an S3 source's listing: the bucket's daily (or weekly) report read
instead of ~1,000 ListObjectsV2 calls per million objects.

A report is a ``manifest.json`` naming its data files in the destination bucket and their
columns (``fileSchema``). CSV reports are read: gzip-compressed, no header, keys
URL-encoded; they must include the Size and ETag fields (Last modified date is used when
present). Parquet and ORC reports are refused (reading them needs pyarrow, which imgrag
does not install). Rows stream file by file: memory stays flat in the report's size.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, Field, ValidationError

from imgrag.errors import ConfigError, SourceError
from imgrag.records import SourceObject
from imgrag.sources.base import Listing, is_indexed_key
from imgrag.sources.s3_uri import parse_s3_uri

REQUIRED_FIELDS = ("Bucket", "Key", "Size", "ETag")


class InventoryFile(BaseModel):
    key: str


class InventoryManifest(BaseModel):
    """The parts of an S3 Inventory ``manifest.json`` a listing needs."""

    source_bucket: str = Field(alias="sourceBucket")
    destination_bucket: str = Field(alias="destinationBucket")  # an ARN: arn:aws:s3:::NAME
    file_format: str = Field(alias="fileFormat")
    file_schema: str = Field(alias="fileSchema")
    files: list[InventoryFile]

    @property
    def columns(self) -> list[str]:
        return [name.strip() for name in self.file_schema.split(",")]


def read_manifest(client: Any, uri: str, bucket: str) -> InventoryManifest:
    """The manifest at ``s3://…/manifest.json``, checked to be a CSV report of ``bucket``
    with the fields a listing needs; ConfigError or SourceError (one line) otherwise."""
    if not uri.startswith("s3://"):
        raise ConfigError(f"--inventory takes the s3:// URI of a manifest.json, not {uri!r}")
    where, key = parse_s3_uri(uri)
    try:
        with closing(client.get_object(Bucket=where, Key=key)["Body"]) as body:
            manifest = InventoryManifest.model_validate(json.loads(body.read()))
    except (ClientError, BotoCoreError) as exc:
        raise SourceError(f"cannot read the inventory manifest {uri}: {_reason(exc)}") from None
    except (ValueError, ValidationError):
        raise ConfigError(f"{uri} is not an S3 Inventory manifest.json") from None
    if manifest.source_bucket != bucket:
        raise ConfigError(f"the inventory {uri} lists bucket {manifest.source_bucket!r},"
                          f" not {bucket!r}")
    if manifest.file_format.upper() != "CSV":
        raise ConfigError(f"the inventory {uri} is {manifest.file_format}; imgrag reads CSV"
                          " inventories (configure the report's format as CSV)")
    missing = [f for f in REQUIRED_FIELDS if f not in manifest.columns]
    if missing:
        raise ConfigError(f"the inventory {uri} lacks the field(s) {', '.join(missing)}"
                          " (add them to the inventory configuration)")
    return manifest


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code", "error")
    return type(exc).__name__


def inventory_listing(client: Any, manifest: InventoryManifest, prefix: str,
                      video: bool = True) -> Listing:
    """The image (and video, when ``video``) objects of the report under ``prefix``, as a
    listing (current versions only; delete markers skipped)."""
    return Listing(lambda listing: _rows(client, manifest, prefix, video, listing))


def _rows(client: Any, manifest: InventoryManifest, prefix: str, video: bool,
          listing: Listing) -> Iterator[SourceObject]:
    columns = manifest.columns
    at = {name: columns.index(name) for name in columns}
    destination = manifest.destination_bucket.rsplit(":", 1)[-1]
    for data in manifest.files:
        try:
            response = client.get_object(Bucket=destination, Key=data.key)
        except (ClientError, BotoCoreError) as exc:
            raise SourceError(f"cannot read inventory file s3://{destination}/{data.key}:"
                              f" {_reason(exc)}") from None
        with closing(response["Body"]) as body, gzip.open(body, "rt", newline="") as text:
            for row in csv.reader(text):
                obj = _object(row, at, manifest.source_bucket, prefix, video, listing)
                if obj is not None:
                    yield obj


def _object(row: list[str], at: dict[str, int], bucket: str, prefix: str, video: bool,
            listing: Listing) -> SourceObject | None:
    if row[at["Bucket"]] != bucket:
        return None
    if "IsLatest" in at and row[at["IsLatest"]].lower() == "false":
        return None
    if "IsDeleteMarker" in at and row[at["IsDeleteMarker"]].lower() == "true":
        return None
    key = unquote_plus(row[at["Key"]])
    if not key.startswith(prefix):
        return None
    if not is_indexed_key(key, video):
        listing.ignored += 1
        return None
    etag = row[at["ETag"]]
    modified = row[at["LastModifiedDate"]] if "LastModifiedDate" in at else ""
    return SourceObject(
        uri=f"s3://{bucket}/{key}", bucket=bucket, key=key,
        etag=etag if etag.startswith('"') else f'"{etag}"',  # as ListObjectsV2 gives it
        size=int(row[at["Size"]] or 0),
        last_modified=datetime.fromisoformat(modified) if modified else None,
    )
