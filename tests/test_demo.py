"""``make demo`` (imgrag.emulators.demo): a failing step ends the demo with one line."""

from __future__ import annotations

import shutil
import sys

import pytest

from imgrag.emulators import demo


def test_a_failed_step_stops_the_demo_with_one_line_and_a_nonzero_exit(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capfd
):
    monkeypatch.chdir(tmp_path)  # the demo writes its state to ./.demo
    monkeypatch.setattr(sys, "executable", shutil.which("false"))  # every step exits 1

    code = demo.main()

    out, err = capfd.readouterr()
    assert code == 1
    assert err == ("demo: error: step 'first ingest' failed (python -m flows.ingest --source "
                   "s3://imgrag-demo/catalog/ exited 1)\n")
    assert "=== first ingest" in out and "=== re-run" not in out
