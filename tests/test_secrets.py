"""No credential or API key reaches CLI output, logs, Prefect records, reports or files —
on successful runs, per-item failures and run-level errors alike."""

from __future__ import annotations

import json
import logging

import pytest
from prefect.client.orchestration import get_client
from prefect.logging.handlers import APILogHandler

from flows.ingest import main
from imgrag.settings import Settings
from tests import corpus
from tests.processes import closed_port

pytestmark = pytest.mark.usefixtures("prefect_harness")

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-imgrag-aws-secret-7f3c9e2b",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdz-imgrag-session-token-51d0a8",
    "IMGRAG_CHROMA_AUTH_TOKEN": "ck-imgrag-chroma-token-c0ffee77",
}


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


def prefect_records() -> str:
    """Every log, artifact and flow run (with parameters) the session's Prefect API holds."""
    APILogHandler().flush()
    chunks: list[str] = []
    with get_client(sync_client=True) as client:
        for read in (client.read_logs, client.read_artifacts, client.read_flow_runs):
            offset = 0
            while page := read(limit=200, offset=offset):
                chunks += [item.model_dump_json() for item in page]
                offset += len(page)
    return "\n".join(chunks)


def test_secrets_never_appear_in_output_logs_prefect_records_or_files(
    s3, bucket, bedrock, store_env, secret_env, tmp_path, monkeypatch, capfd, caplog
):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    s3.put_object(Bucket=bucket, Key="ok.jpg", Body=corpus.small_jpeg())
    for key, (make, _) in corpus.INVALID.items():
        s3.put_object(Bucket=bucket, Key=key, Body=make())
    source = f"s3://{bucket}/"

    codes = [main(["--source", source, "--json"])]  # per-item failures, exit 0
    codes.append(main(["--source", "s3://no-such-bucket-imgrag/"]))
    codes.append(main(["--source", source, "--chroma-url", f"http://127.0.0.1:{closed_port()}"]))
    s3.put_object(Bucket=bucket, Key="new.jpg", Body=corpus.small_jpeg(seed=5))
    bedrock.fail_next(5, "UnrecognizedClientException", status=403)
    codes.append(main(["--source", source]))  # credentials rejected by Bedrock mid-run
    assert codes == [0, 2, 2, 2]

    out, err = capfd.readouterr()
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    records = prefect_records()
    files = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert "credentials rejected by Bedrock" in err  # the failures were really exercised
    assert "invalid/bomb.png" in out and "invalid/bomb.png" in records
    for name, secret in SECRETS.items():
        for where, text in (("stdout", out), ("stderr", err), ("logs", logged),
                            ("Prefect API", records)):
            assert secret not in text, f"{name} leaked into {where}"
        assert secret.encode() not in files, f"{name} leaked into a file"


def test_settings_repr_and_task_parameters_hide_the_chroma_token(secret_env):
    settings = Settings()
    token = SECRETS["IMGRAG_CHROMA_AUTH_TOKEN"]
    assert settings.chroma_auth_token.get_secret_value() == token
    assert token not in repr(settings) and token not in str(settings)
    assert token not in json.dumps(settings.public_dict())
