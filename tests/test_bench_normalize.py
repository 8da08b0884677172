"""Smoke test of bench.normalize: it runs on small inputs and reports every figure (not speed)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.normalize import main

CASE_KEYS = {
    "case", "format", "images", "input_size", "input_mb", "output_size", "normalize_ms",
    "plain_ms", "speedup", "mean_abs_diff", "same_size",
}


def test_small_run_reports_all_figures(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    figures = main(["--small", "--repeat", "1", "--out", str(out)])

    assert figures["small"] is True and figures["repeat"] == 1
    assert {"pillow", "python", "max_side", "jpeg_quality", "normalize_version", "target_met",
            "target_speedup_12mp_jpeg"} <= figures.keys()
    assert [c["format"] for c in figures["cases"]] == ["JPEG", "PNG"]
    for case in figures["cases"]:
        assert case.keys() >= CASE_KEYS
        assert case["same_size"] is True
        assert case["normalize_ms"] > 0 and case["plain_ms"] > 0 and case["speedup"] > 0
        assert 0 <= case["mean_abs_diff"] < 3
        assert max(case["output_size"]) <= figures["max_side"]
    assert json.loads(out.read_text()) == figures
    assert "speedup" in capsys.readouterr().out
