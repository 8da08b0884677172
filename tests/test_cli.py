"""The CLIs as a user runs them: subprocesses configured only through environment variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import get_current_settings

from flows import ingest as ingest_cli
from flows import query as query_cli
from imgrag.records import Failure, IngestReport
from tests.conftest import COLOURS, image_bytes


def run_cli(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
        timeout=180, cwd=Path(__file__).parent,
    )


@pytest.mark.usefixtures("prefect_harness")
def test_end_to_end_with_standard_aws_env_vars(s3, bucket, s3_server, bedrock, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGRAG_")}
    env.update({
        # a running Prefect API, as a team's CLI runs would use (no temporary server each)
        "PREFECT_API_URL": str(get_current_settings().api.url),
        "AWS_ENDPOINT_URL_S3": s3_server,
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock.url,
        "IMGRAG_CHROMA_PATH": str(tmp_path / "store"),
    })
    keys = [f"shop/{name}-{i}.jpg" for name in COLOURS for i in range(3)]
    for n, key in enumerate(keys):
        rgb = COLOURS[key.split("/")[1].split("-")[0]]
        s3.put_object(Bucket=bucket, Key=key, Body=image_bytes(rgb, seed=n))
    source = f"s3://{bucket}/shop/"

    first = run_cli("flows.ingest", "--source", source, "--json", env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    counts = (report["listed"], report["new"], report["embedded"], report["failed"])
    assert counts == (12, 12, 12, 0)
    assert bedrock.stats.image_calls == 12

    bedrock.reset_stats()
    again = json.loads(run_cli("flows.ingest", "--source", source, "--json", env=env).stdout)
    assert (again["unchanged"], again["embedded"]) == (12, 0)
    assert bedrock.stats.requests == 0

    for key in keys[:2]:
        s3.put_object(Bucket=bucket, Key=key, Body=image_bytes(COLOURS["yellow"], seed=500))
    s3.put_object(Bucket=bucket, Key="shop/new-red.jpg", Body=image_bytes(COLOURS["red"], seed=9))
    for key in keys[-3:]:
        s3.delete_object(Bucket=bucket, Key=key)
    bedrock.reset_stats()
    third = run_cli("flows.ingest", "--source", source, "--json", env=env)
    delta = json.loads(third.stdout)
    assert (delta["changed"], delta["new"], delta["deleted"], delta["unchanged"]) == (2, 1, 3, 7)
    assert bedrock.stats.image_calls == 3

    query = run_cli("flows.query", "red", "-k", "3", "--json", env=env)
    assert query.returncode == 0, query.stderr
    hits = json.loads(query.stdout)
    assert [set(h) for h in hits] == [{"id", "distance", "metadata"}] * 3
    red_now = {f"s3://{bucket}/shop/red-2.jpg", f"s3://{bucket}/shop/new-red.jpg"}
    assert {h["id"] for h in hits[:2]} == red_now  # red-0/red-1 were repainted yellow
    assert hits[0]["distance"] <= hits[1]["distance"] <= hits[2]["distance"]

    text = run_cli("flows.query", "red", "-k", "2", env=env).stdout.splitlines()
    assert len(text) == 2 and text[0].split()[0] == "1" and "s3://" in text[0]


def test_ingest_of_a_missing_bucket_exits_2_with_one_line(s3_server, store_env, capsys):
    code = ingest_cli.main(["--source", "s3://no-such-bucket-here/"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "imgrag: error: bucket 'no-such-bucket-here' does not exist"
    assert not store_env.exists()


def test_query_of_a_store_that_was_never_ingested_exits_2_and_creates_nothing(
    store_env, capsys
):
    assert query_cli.main(["red"]) == 2
    err = capsys.readouterr().err
    assert err == f"imgrag: error: no store at {store_env} (run an ingest first)\n"
    assert not store_env.exists()  # a mistyped --chroma-path leaves no empty store behind


@pytest.mark.parametrize("cli", [ingest_cli, query_cli])
def test_help_explains_flags_and_exits_0(cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--json", "--chroma-path", "--chroma-url", "--collection", "--dim", "--region"):
        assert flag in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--source", "s3://Bad_Bucket/"], "invalid S3 bucket name"),
        (["--source", "s3://ok-bucket/", "--shard", "3/2"], "--shard"),
        (["--source", "s3://ok-bucket/", "--batch-size", "0"], "invalid batch_size"),
    ],
)
def test_bad_input_is_a_one_line_error(argv, message, capsys):
    assert ingest_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_query_rejects_a_where_that_is_not_json(capsys):
    assert query_cli.main(["red", "--where", "{bucket: x}"]) == 2
    assert "--where is not valid JSON" in capsys.readouterr().err


def test_text_report_lists_the_first_20_failures_then_points_to_json(capsys):
    failures = [Failure(id=f"s3://b/bad-{i}.jpg", stage="normalize", reason="not an image",
                        permanent=True) for i in range(23)]
    report = IngestReport(run_id="r", source="s3://b/", collection="images",
                          model_id="m", dim=1024, failed=23, failures=failures)

    ingest_cli.print_report(report, as_json=False)

    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("FAILED ")] == [
        f"FAILED s3://b/bad-{i}.jpg [normalize] not an image" for i in range(20)]
    assert lines[-1] == "... and 3 more (see --json)"


@pytest.mark.usefixtures("prefect_harness")
def test_ingest_whose_report_artifacts_cannot_be_published_still_reports_and_exits_0(
    tmp_path, bedrock, store_env, monkeypatch, console_capfd
):
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Prefect API answered 503\nService Unavailable")

    monkeypatch.setattr("tasks.report.create_table_artifact", refuse)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "red.jpg").write_bytes(image_bytes(COLOURS["red"]))

    code = ingest_cli.main(["--source", str(folder), "--json"])

    out, err = console_capfd.readouterr()
    assert code == 0
    assert json.loads(out)["embedded"] == 1
    assert "Traceback" not in err
    [warning] = err.splitlines()
    assert warning.endswith("ingest report artifacts not published: RuntimeError: Prefect API"
                            " answered 503 Service Unavailable")
