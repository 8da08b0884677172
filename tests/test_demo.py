"""``make demo`` (imgrag.emulators.demo): a failing step ends the demo with one line."""

from __future__ import annotations

import shutil
import sys

import pytest

from imgrag.emulators import demo


def test_a_prefect_server_that_does_not_start_stops_the_demo_with_one_line(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capfd
):
    monkeypatch.chdir(tmp_path)  # the demo writes its state to ./.demo
    monkeypatch.setattr(sys, "executable", shutil.which("false"))  # every child exits 1

    code = demo.main()

    out, err = capfd.readouterr()
    log = tmp_path / ".demo" / "prefect-server.log"
    assert code == 1
    assert err == (f"demo: error: the Prefect server exited with status 1 before it was "
                   f"healthy (see {log})\n")
    assert "waiting for the Prefect server" in out and "=== first ingest" not in out
