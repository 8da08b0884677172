"""S3 Inventory as a listing: a CSV report written to moto, read instead of ListObjectsV2."""

from __future__ import annotations

import csv
import gzip
import io
import json
from urllib.parse import quote_plus

import pytest

from imgrag.errors import ConfigError
from imgrag.records import Indexed
from imgrag.settings import Settings
from imgrag.sources import S3Source, check_source
from imgrag.sync import ScopePlanner

SCHEMA = ("Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag,"
          " StorageClass")
KEYS = ["cat/a b.jpg", "cat/plus+sign.png", "cat/é/ü.jpg", "cat/notes.txt", "dog/1.jpg"]


def write_report(s3, source: str, destination: str, rows: list[list[str]],
                 schema: str = SCHEMA, file_format: str = "CSV") -> str:
    """A report as S3 writes it: gzip CSV data files and a manifest.json naming them."""
    half = len(rows) // 2
    files = []
    for n, part in enumerate((rows[:half], rows[half:])):
        text = io.StringIO()
        csv.writer(text, quoting=csv.QUOTE_ALL).writerows(part)
        key = f"inv/{source}/cfg/data/{n}.csv.gz"
        s3.put_object(Bucket=destination, Key=key, Body=gzip.compress(text.getvalue().encode()))
        files.append({"key": key, "size": 1, "MD5checksum": "x"})
    manifest = {"sourceBucket": source, "destinationBucket": f"arn:aws:s3:::{destination}",
                "version": "2016-11-30", "creationTimestamp": "1514944800000",
                "fileFormat": file_format, "fileSchema": schema, "files": files}
    key = f"inv/{source}/cfg/2026-12-01T01-00Z/manifest.json"
    s3.put_object(Bucket=destination, Key=key, Body=json.dumps(manifest).encode())
    return f"s3://{destination}/{key}"


@pytest.fixture
def inventoried(s3, bucket):
    """A bucket of objects and a CSV inventory of it (one old version, one delete marker)."""
    destination = f"{bucket}-inv"
    s3.create_bucket(Bucket=destination)
    for n, key in enumerate(KEYS):
        s3.put_object(Bucket=bucket, Key=key, Body=f"bytes {n}".encode())
    rows = []
    for item in s3.list_objects_v2(Bucket=bucket)["Contents"]:
        modified = item["LastModified"].strftime("%Y-%m-%dT%H:%M:%S.000Z")
        rows.append([bucket, quote_plus(item["Key"]), "v2", "true", "false",
                     str(item["Size"]), modified, item["ETag"].strip('"'), "STANDARD"])
    rows.append([bucket, "cat/old.jpg", "v1", "false", "false", "5", modified, "e", "STANDARD"])
    rows.append([bucket, "cat/gone.jpg", "v3", "true", "true", "", modified, "", "STANDARD"])
    return bucket, write_report(s3, bucket, destination, rows)


def test_inventory_lists_what_list_objects_lists(s3, inventoried):
    bucket, manifest = inventoried
    listed = S3Source(bucket, "cat/", s3).list_objects()
    reported = S3Source(bucket, "cat/", s3, inventory=manifest).list_objects()

    expected = list(listed)
    assert list(reported) == expected
    assert [o.key for o in expected] == ["cat/a b.jpg", "cat/plus+sign.png", "cat/é/ü.jpg"]
    assert reported.ignored == listed.ignored == 1  # notes.txt


def test_records_listed_by_the_bucket_are_unchanged_when_read_from_the_inventory(
        s3, inventoried):
    bucket, manifest = inventoried
    stored = {o.uri: Indexed(o.etag, 9) for o in S3Source(bucket, "", s3).list_objects()}
    planner = ScopePlanner(f"s3://{bucket}/", stored, normalize_version=9)

    todo = list(planner.todo(S3Source(bucket, "", s3, inventory=manifest).list_objects()))

    assert todo == [] and planner.plan.unchanged == 4 and planner.deleted() == []


@pytest.mark.parametrize(("change", "error"), [
    ({"source": "other-bucket"}, "lists bucket 'other-bucket'"),
    ({"file_format": "Parquet"}, "is Parquet; imgrag reads CSV"),
    ({"schema": "Bucket, Key, Size"}, "lacks the field"),
])
def test_unusable_reports_are_refused_before_the_run(s3, bucket, change, error):
    destination = f"{bucket}-inv"
    s3.create_bucket(Bucket=destination)
    manifest = write_report(s3, change.get("source", bucket), destination, [],
                            schema=change.get("schema", SCHEMA),
                            file_format=change.get("file_format", "CSV"))
    settings = Settings(inventory=manifest)

    with pytest.raises(ConfigError, match=error):
        check_source(f"s3://{bucket}/", settings)


def test_an_inventory_needs_an_s3_source(tmp_path):
    with pytest.raises(ConfigError, match="source must be s3://"):
        check_source(str(tmp_path), Settings(inventory="s3://b/manifest.json"))
