"""Text in images (OCR) at ingest: RapidOCR's PP-OCRv4 models on ONNX Runtime, on the CPU.

The models ship inside the ``rapidocr-onnxruntime`` wheel (extra ``imgrag[ocr]``), so it works
offline. It runs on the normalized image (orientation already fixed); its angle classifier
turns upside-down lines, and the detector follows slightly rotated text. Each engine runs
ONNX Runtime on one thread and at most ``threads`` images are read at once, so OCR uses at
most that many cores, whatever the batch's pool size; the CPU seconds are counted.

``OCR_VERSION`` is stored with each record's text: records with a lower one are stale and
are read again (like ``normalize_version`` for vectors).
"""

from __future__ import annotations

import io
import queue
import re
import time
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from imgrag.errors import ConfigError

OCR_VERSION = 1
MIN_LINE_SCORE = 0.5  # recognised lines below this confidence are dropped
MIN_LINE_CHARS = 2  # a lone glyph is mostly texture read as a letter: dropped
_HAN = re.compile(r"[\u3400-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]")


class OcrResult(BaseModel):
    """The text read from one image, its script's language and the mean line confidence."""

    text: str = ""
    language: str = ""  # "en" or "zh" (the models read those two), "" without text
    confidence: float = 0.0  # 0..1, weighted by characters
    cpu_seconds: float = 0.0

    def metadata(self) -> dict[str, Any]:
        """The record metadata that says the text is current."""
        return {"ocr_version": OCR_VERSION, "ocr_lang": self.language,
                "ocr_confidence": round(self.confidence, 4)}


def language_of(text: str) -> str:
    """"zh" when Han characters outnumber Latin letters, "en" for Latin text, else ""."""
    han, latin = len(_HAN.findall(text)), len(_LATIN.findall(text))
    if han == latin == 0:
        return ""
    return "zh" if han > latin else "en"


def check_ocr() -> None:
    """ConfigError when the OCR engine is not installed (nothing is loaded)."""
    import importlib.util

    if importlib.util.find_spec("rapidocr_onnxruntime") is None:
        raise ConfigError("--ocr needs the OCR engine: pip install 'imgrag[ocr]'")


def _rapidocr_class() -> Any:
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        raise ConfigError("--ocr needs the OCR engine: pip install 'imgrag[ocr]'") from None
    return RapidOCR


class OcrEngine:
    """Reads text from image bytes; at most ``threads`` images at once (one core each)."""

    def __init__(self, threads: int = 1) -> None:
        if threads < 1:
            raise ConfigError("OCR threads must be at least 1")
        self._idle: queue.Queue[Any] = queue.Queue()
        for _ in range(threads):
            self._idle.put(None)  # an engine slot, loaded on first use
        self._engine_class = _rapidocr_class()  # a missing package fails here, not per image

    def read(self, image: bytes) -> OcrResult:
        """The text of a JPEG/PNG image, lines top to bottom."""
        import numpy as np
        from PIL import Image

        engine = self._idle.get()
        started = time.thread_time()
        try:
            engine = engine or self._engine_class(
                intra_op_num_threads=1, inter_op_num_threads=1, text_score=MIN_LINE_SCORE)
            with Image.open(io.BytesIO(image)) as im:
                pixels = np.asarray(im.convert("RGB"))[:, :, ::-1]  # BGR, as OpenCV reads
            lines, _ = engine(np.ascontiguousarray(pixels))
        finally:
            self._idle.put(engine)
        return _result(lines or [], time.thread_time() - started)


def _result(lines: list[Any], cpu_seconds: float) -> OcrResult:
    texts = [(str(text).strip(), float(score)) for _box, text, score in lines
             if len(str(text).strip()) >= MIN_LINE_CHARS]
    text = "\n".join(t for t, _ in texts)
    chars = sum(len(t) for t, _ in texts)
    confidence = sum(len(t) * s for t, s in texts) / chars if chars else 0.0
    return OcrResult(text=text, language=language_of(text), confidence=confidence,
                     cpu_seconds=cpu_seconds)


@lru_cache(maxsize=4)
def shared_engine(threads: int) -> OcrEngine:
    """One engine per process and thread count: the models load once (about a second)."""
    return OcrEngine(threads)
