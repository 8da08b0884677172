"""A Chroma server URL is scheme://host[:port] only: credentials go in
IMGRAG_CHROMA_AUTH_TOKEN, never in the URL (nor in flow parameters or messages), and a
server URL together with --chroma-path is refused instead of ignoring the path."""

from __future__ import annotations

import pytest

from flows.cli import settings_from_cli
from flows.ingest import main as ingest_main
from flows.query import main as query_main
from imgrag.errors import ConfigError, StoreError
from imgrag.settings import Settings
from imgrag.store import make_chroma_client
from tests.processes import closed_port


def error_lines(capfd) -> list[str]:
    return capfd.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("url", ["http://admin:s3cret@chroma.test:8000",
                                 "https://s3cret@chroma.test"])
def test_a_url_with_credentials_is_refused_without_echoing_them(url, tmp_path, capfd):
    with pytest.raises(ConfigError, match="IMGRAG_CHROMA_AUTH_TOKEN") as caught:
        settings_from_cli(chroma_url=url)
    assert "s3cret" not in str(caught.value)
    assert ingest_main(["--source", str(tmp_path), "--chroma-url", url]) == 2
    [line] = error_lines(capfd)
    assert "must not carry credentials" in line and "s3cret" not in line


@pytest.mark.parametrize("url", ["http://chroma.test:8000/chroma", "http://chroma.test?x=1",
                                 "http://chroma.test:80a"])
def test_a_url_with_a_path_query_or_bad_port_is_refused(url):
    with pytest.raises(ConfigError, match=r"^invalid chroma_url: "):
        settings_from_cli(chroma_url=url)


def test_scheme_host_and_port_are_accepted_with_or_without_a_slash():
    for url in ("http://chroma.test", "https://chroma.test:8443/", "http://10.0.0.5:8000"):
        assert Settings(chroma_url=url).chroma_url == url


def test_chroma_path_with_a_server_url_is_refused_by_both_clis(tmp_path, monkeypatch, capfd):
    store = str(tmp_path / "store")
    args = ["--chroma-path", store, "--chroma-url", "http://chroma.test:8000"]
    assert ingest_main(["--source", str(tmp_path), *args]) == 2
    [line] = error_lines(capfd)
    assert "--chroma-path" in line and "exclude each other" in line

    monkeypatch.setenv("IMGRAG_CHROMA_URL", "http://chroma.test:8000")  # the URL from env
    assert query_main(["red shirt", "--chroma-path", store]) == 2
    [line] = error_lines(capfd)
    assert "exclude each other" in line and "IMGRAG_CHROMA_URL" in line
    assert not (tmp_path / "store").exists()


def test_store_errors_show_only_scheme_host_and_port():
    port = closed_port()
    with pytest.raises(StoreError) as caught:
        make_chroma_client(Settings(chroma_url=f"http://127.0.0.1:{port}/"))
    assert f"cannot open Chroma store at http://127.0.0.1:{port}:" in str(caught.value)
