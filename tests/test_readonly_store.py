"""A query host may mount the store read-only: searching it writes nothing and still works.

Tests run as root here, where permission bits do not bind; the query then runs in a child
process without CAP_DAC_OVERRIDE (``setpriv``), which makes them bind again. The child
first checks that it really cannot write the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imgrag.embedders import make_embedder
from imgrag.normalize import normalize_image
from imgrag.query import open_text_cache
from imgrag.settings import Settings
from imgrag.sources import open_source
from imgrag.store import ImageStore
from tests.conftest import COLOURS, image_bytes

CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    store = Path(sys.argv[1])
    try:
        (store / "probe").write_bytes(b"")
    except PermissionError:
        pass
    else:
        sys.exit("the store is writable: the test would prove nothing")
    from imgrag.errors import StoreError
    from imgrag.query import SearchRequest, run_search
    from imgrag.settings import Settings
    from imgrag.store import ImageStore
    from imgrag.thumbnails import ThumbnailLoader
    settings = Settings(chroma_path=store)
    hits = run_search(settings, SearchRequest(text="red", k=2))
    thumbs = [t.data is not None for t in ThumbnailLoader(settings).load(hits)]
    try:
        ImageStore.open(settings, create=False).delete([hits[0].id])
    except StoreError as exc:
        refused = str(exc)
    print(json.dumps({"hits": [h.id for h in hits], "thumbs": thumbs, "refused": refused}))
""")


def unprivileged() -> list[str]:
    """The command prefix that makes file permissions bind for this test's child."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permission bits cannot be made to bind")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def fingerprint(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)


@pytest.fixture
def read_only_store(tmp_path, bedrock) -> Path:
    """A store of four local images, with the query "red" in its text cache, made read-only."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, rgb in COLOURS.items():
        (folder / f"{name}.png").write_bytes(image_bytes(rgb, fmt="PNG"))
    settings = Settings(chroma_path=tmp_path / "store")
    source = open_source(str(folder), settings)
    objects = list(source.list_objects())
    source.close()
    embedder = make_embedder(settings)
    vectors = embedder.embed_images(
        [normalize_image((folder / o.key).read_bytes()).data for o in objects])
    store = ImageStore.open(settings)
    store.upsert([o.uri for o in objects], vectors, [
        {"bucket": "", "key": o.key, "etag": o.etag, "size": o.size, "source_uri": o.uri}
        for o in objects])
    cache = open_text_cache(settings)
    cache.put(embedder.model_id, embedder.dim, "red", embedder.embed_text("red"))
    cache.close()
    embedder.close()
    make_read_only(settings.chroma_path)
    bedrock.reset_stats()
    return settings.chroma_path


def test_query_of_a_read_only_store_writes_nothing_and_answers(read_only_store, bedrock):
    before = fingerprint(read_only_store)

    child = subprocess.run([*unprivileged(), sys.executable, "-c", CHILD, str(read_only_store)],
                           capture_output=True, text=True, timeout=120,
                           cwd=Path(__file__).parents[1])

    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout.splitlines()[-1])
    assert Path(out["hits"][0]).name == "red.png"
    assert out["thumbs"] == [True, True]  # made from the source, not cached
    assert bedrock.stats.requests == 0  # the text vector came from the read-only cache
    assert out["refused"].endswith("cannot write (opened read-only); nothing was written")
    assert fingerprint(read_only_store) == before
