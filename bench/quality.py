"""Benchmark of retrieval quality: vector-only vs hybrid (OCR text matches fused by RRF) vs
hybrid + vision re-ranking, on a seeded labelled corpus (``bench.quality_corpus``).

Run: ``python -m bench.quality [--engines] [--ocr-threads 1] [--out file.json]``.

Everything is local: the Titan EMULATOR (colour-histogram "embeddings", so a word in a
query is near chance for the vector side), an embedded Chroma store, the real OCR engine
(rapidocr), and a fake OpenAI endpoint that re-ranks by the corpus's labels (it recognises
each thumbnail by a colour fingerprint): the re-rank column checks the plumbing, not a model.

Queries: colour ("red"), exact word ("bakery"), word + colour ("blue bakery"). Metrics per
group: recall@1 and recall@5 (relevant images in the top k, over min(k, relevant)) and MRR.
Ingest is timed with and without ``--ocr`` (same images, same emulator), and OCR CPU seconds
per image are reported. ``--engines`` also compares rapidocr with Tesseract (the ``tesseract``
command, when installed) on the same images: words read, text "read" on photos without
text, seconds per image.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.quality_corpus import COLOURS, Item, write_corpus
from imgrag.emulators.bedrock import FakeBedrock
from imgrag.ocr import OcrEngine
from imgrag.pipeline import Runtime, process_batch
from imgrag.query import SearchRequest, run_search
from imgrag.settings import Settings

K = 10
MODES = ("vector", "hybrid", "hybrid+rerank")


def _hermetic_env() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["ANONYMIZED_TELEMETRY"] = "False"


def queries(labels: dict[str, Item]) -> dict[str, list[tuple[str, set[str]]]]:
    """Query groups: (text, relevant file names)."""
    items = labels.items()
    words = [(name, item) for name, item in items if item.word]
    return {
        "colour": [(c, {n for n, i in items if i.colour == c}) for c in COLOURS],
        "exact word": [(i.word if k % 2 else i.word.lower(), {n}) for k, (n, i) in
                       enumerate(words)],
        "word+colour": [(f"{i.colour} {i.word.lower()}", {n}) for n, i in words],
    }


def scores(ranking: Sequence[str], relevant: set[str]) -> tuple[float, float, float]:
    """recall@1, recall@5, reciprocal rank of the first relevant hit."""
    def recall(k: int) -> float:
        return len(relevant & set(ranking[:k])) / min(k, len(relevant))
    first = next((i for i, name in enumerate(ranking, 1) if name in relevant), None)
    return recall(1), recall(5), 1 / first if first else 0.0


def fingerprint(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((16, 12)), dtype=np.float32).ravel()


def label_ranker(folder: Path, labels: dict[str, Item]):
    """A fake-OpenAI ranker that knows the corpus: each thumbnail is recognised by its colour
    fingerprint; a hit scores 2 for the query's word, 1 for the query's colour."""
    names = list(labels)
    prints = np.stack([fingerprint(Image.open(folder / n)) for n in names])

    def rank(query: str, shown: list[str], images: list[bytes]) -> list[tuple[str, str]]:
        words = set(query.lower().removeprefix("search query:").split())
        scored = []
        for index, (label, data) in enumerate(zip(shown, images, strict=True)):
            item = labels[names[int(np.argmin(
                ((prints - fingerprint(Image.open(io.BytesIO(data)))) ** 2).sum(axis=1)))]]
            score = 2 * (item.word.lower() in words) + (item.colour in words)
            scored.append((-score, index, label, f"{item.colour} {item.kind} {item.word}"))
        return [(label, reason.strip()) for *_, label, reason in sorted(scored)]

    return rank


def ingest(settings: Settings, folder: Path) -> dict[str, float]:
    rt = Runtime.open(settings, str(folder))
    try:
        objects = list(rt.source.list_objects())
        started = time.perf_counter()
        result = process_batch(rt, objects, "bench")
        seconds = time.perf_counter() - started
    finally:
        rt.close()
    assert result.upserted == len(objects), result.failures
    return {"images": len(objects), "seconds": round(seconds, 2),
            "images_per_s": round(len(objects) / seconds, 2),
            "ocr_cpu_s_per_image": round(result.ocr_cpu_s / max(result.ocr_read, 1), 3)}


def evaluate(settings: Settings, labels: dict[str, Item]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for group, items in queries(labels).items():
        for mode in MODES:
            rows = []
            for text, relevant in items:
                request = SearchRequest(text=text, k=K, text_match="off" if mode == "vector"
                                        else "on", rerank=mode.endswith("rerank"))
                ranking = [h.id.rsplit("/", 1)[1] for h in run_search(settings, request)]
                rows.append(scores(ranking, relevant))
            r1, r5, mrr = (round(statistics.fmean(col), 3) for col in zip(*rows, strict=True))
            table.setdefault(group, {"queries": len(items)})[mode] = {
                "recall@1": r1, "recall@5": r5, "MRR": mrr}
    return table


def compare_engines(folder: Path, labels: dict[str, Item]) -> dict[str, Any]:
    """rapidocr vs the tesseract command on the same files, one core each."""
    engine = OcrEngine(threads=1)
    engine.read((folder / next(iter(labels))).read_bytes())  # load the models first
    readers = {"rapidocr": lambda path: engine.read(path.read_bytes()).text}
    if shutil.which("tesseract"):
        env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        readers["tesseract"] = lambda path: subprocess.run(
            ["tesseract", str(path), "stdout"], capture_output=True, text=True, env=env,
            check=True).stdout
    results = {}
    for name, read in readers.items():
        found = noise = 0
        started = time.perf_counter()
        for file, item in labels.items():
            text = " ".join(read(folder / file).split())
            found += bool(item.word) and item.word.lower() in text.lower()
            noise += item.kind == "photo" and bool(text)
        results[name] = {
            "words_found": f"{found}/{sum(bool(i.word) for i in labels.values())}",
            "photos_with_false_text": f"{noise}/{sum(i.kind == 'photo' for i in labels.values())}",
            "s_per_image": round((time.perf_counter() - started) / len(labels), 3)}
    return results


def print_table(results: dict[str, Any]) -> None:
    print(f"{'queries':<22}" + "".join(f"{m:>24}" for m in MODES))
    print(f"{'':<22}" + "".join(f"{'R@1   R@5   MRR':>24}" for _ in MODES))
    for group, row in results["quality"].items():
        cells = "".join(f"{row[m]['recall@1']:>10.2f}{row[m]['recall@5']:>6.2f}"
                        f"{row[m]['MRR']:>8.2f}" for m in MODES)
        print(f"{group + ' (' + str(row['queries']) + ')':<22}{cells}")
    plain, ocr = results["ingest"]["plain"], results["ingest"]["ocr"]
    print(f"ingest: {plain['images_per_s']} images/s without OCR, {ocr['images_per_s']} with"
          f" (OCR {ocr['ocr_cpu_s_per_image']} CPU s per image, {ocr['ocr_threads']} thread)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    parser.add_argument("--ocr-threads", type=int, default=1)
    parser.add_argument("--engines", action="store_true",
                        help="also compare rapidocr with tesseract (when installed)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    _hermetic_env()
    from tests.fake_openai import API_KEY, FakeOpenAI

    results: dict[str, Any] = {"corpus": {}, "ingest": {}}
    with (tempfile.TemporaryDirectory() as tmp, FakeBedrock() as bedrock,
          FakeOpenAI() as openai):
        os.environ.update({"AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock.url,
                           "OPENAI_BASE_URL": openai.url, "OPENAI_API_KEY": API_KEY})
        work = Path(tmp)
        labels = write_corpus(work / "images")
        kinds = [i.kind for i in labels.values()]
        results["corpus"] = {k: kinds.count(k) for k in sorted(set(kinds))}
        openai.ranker = label_ranker(work / "images", labels)
        plain = Settings(chroma_path=work / "plain", collection="quality", state_dir=work / "s1")
        ocr = Settings(chroma_path=work / "ocr", collection="quality", state_dir=work / "s2",
                       ocr=True, ocr_threads=args.ocr_threads)
        results["ingest"]["plain"] = ingest(plain, work / "images")
        results["ingest"]["ocr"] = {**ingest(ocr, work / "images"),
                                    "ocr_threads": args.ocr_threads}
        results["quality"] = evaluate(ocr, labels)
        results["rerank_requests"] = len(openai.requests)
        if args.engines:
            results["engines"] = compare_engines(work / "images", labels)
    print(json.dumps(results, indent=2))
    print_table(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
