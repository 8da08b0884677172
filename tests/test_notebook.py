"""notebooks/image_rag_quickstart.ipynb runs top to bottom (IMGRAG_DEMO=1: moto + the Titan
emulator, started by the notebook itself) in a real Jupyter kernel, so it cannot rot."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "image_rag_quickstart.ipynb"


def outputs(nb, kind: str) -> list[str]:
    """Every text/plain stream or text/html display of the executed notebook, in order."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "stream" and out.output_type == "stream":
                found.append(out.text)
            if kind == "html" and "text/html" in out.get("data", {}):
                found.append(out.data["text/html"])
    return found


@pytest.mark.timeout(240)
def test_quickstart_notebook_runs_in_demo_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGRAG_DEMO", "1")
    # the kernel imports this checkout's code, whatever the environment's install points to
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(REPO), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    printed = "".join(outputs(nb, "stream"))
    assert "19 image keys, 19 downloaded" in printed  # 18 pictures and a broken upload
    assert "failed: s3://imgrag-demo/catalog/broken-upload.jpg [normalize]" in printed
    ranked = re.findall(r"^(\d)  (\d\.\d{4})  (s3://\S+)$", printed, re.M)
    assert [uri.rsplit("/", 1)[1].split("-")[0] for _, _, uri in ranked[:3]] == ["red"] * 3

    galleries = outputs(nb, "html")  # show_hit_images displayed inline, twice
    assert len(galleries) == 2
    assert galleries[0].count('<img src="data:image/jpeg;base64,') == 6
    assert galleries[1].count('<img src="data:image/jpeg;base64,') == 4
    assert "Set OPENAI_API_KEY" in printed
