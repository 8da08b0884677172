"""The labelled corpus of ``bench.quality``: seeded photo-like images, some carrying words.

Every image has a dominant colour (the Titan emulator's embeddings are colour histograms);
a share carry one rendered word on a sign, a label or a receipt (mixed sizes, rotated a
little, some in low contrast); distractors carry other words or none. The same seed gives
the same bytes on every run.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.normalize import synthetic_photo

SIZE = (640, 480)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 35), "orange": (235, 130, 20), "yellow": (230, 205, 40),
    "green": (40, 160, 60), "blue": (30, 70, 200), "purple": (120, 50, 160),
}  # fmt: skip
WORDS = ("BAKERY", "EXIT", "PHARMACY", "TAXI", "HOTEL", "4711", "GARAGE", "LIBRARY", "MUSEUM",
         "STATION", "CINEMA", "HARBOUR", "PIZZA", "TICKETS", "FLORIST", "DENTIST", "BOOKSHOP",
         "PARKING", "MARKET", "ZEBRA")
DISTRACTOR_WORDS = ("SALE", "OPEN", "WELCOME", "CLOSED", "PUSH", "PULL")
KINDS = ("sign", "label", "receipt")


@dataclass(frozen=True)
class Item:
    """One corpus image and its labels."""

    name: str
    colour: str
    word: str = ""  # the queried word it carries, if any
    kind: str = "photo"
    low_contrast: bool = False
    angle: float = 0.0


def photo(colour: str, seed: int) -> Image.Image:
    """A photo-like image whose dominant colour is ``colour``."""
    base = np.asarray(synthetic_photo(SIZE, seed), dtype=np.float32)
    tint = np.array(COLOURS[colour], dtype=np.float32)
    return Image.fromarray(np.clip(0.7 * tint + 0.3 * base, 0, 255).astype(np.uint8))


def with_text(image: Image.Image, lines: list[str], *, size: int, angle: float,
              low_contrast: bool, rng: random.Random) -> Image.Image:
    """``image`` with a light panel carrying ``lines``, rotated by ``angle`` degrees."""
    font = ImageFont.load_default(size=size)
    widths = [font.getbbox(line)[2] for line in lines]
    pad = size // 2
    panel = Image.new("RGBA", (max(widths) + 2 * pad, len(lines) * int(size * 1.3) + 2 * pad))
    paper, ink = ((205, 205, 200), (150, 150, 145)) if low_contrast else (
        (245, 245, 240), (25, 25, 30))
    draw = ImageDraw.Draw(panel)
    draw.rectangle((0, 0, panel.width - 1, panel.height - 1), fill=(*paper, 255))
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * int(size * 1.3)), line, font=font, fill=(*ink, 255))
    panel = panel.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
    panel.thumbnail((int(SIZE[0] * 0.8), int(SIZE[1] * 0.8)))
    x = rng.randint(0, SIZE[0] - panel.width)
    y = rng.randint(0, SIZE[1] - panel.height)
    out = image.copy()
    out.paste(panel, (x, y), panel)
    return out


def corpus(seed: int = 7) -> list[tuple[Item, bytes]]:
    """The labelled images (JPEG bytes), in a seeded order."""
    rng = random.Random(seed)
    colours = list(COLOURS)
    out: list[tuple[Item, bytes]] = []

    def add(item: Item, image: Image.Image) -> None:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=88)
        out.append((item, buffer.getvalue()))

    for i, word in enumerate(WORDS):
        colour, kind = colours[i % len(colours)], KINDS[i % len(KINDS)]
        angle, low = rng.uniform(-8, 8), i % 4 == 3
        lines = [word] if kind != "receipt" else ["ITEM 2.50", word, "TOTAL 9.90"]
        image = with_text(photo(colour, 100 + i), lines, size=rng.choice((28, 40, 56, 72)),
                          angle=angle, low_contrast=low, rng=rng)
        add(Item(f"word-{i:02d}", colour, word, kind, low, round(angle, 1)), image)
    for i in range(24):
        colour = colours[i % len(colours)]
        add(Item(f"photo-{i:02d}", colour), photo(colour, 200 + i))
    for i, word in enumerate(DISTRACTOR_WORDS * 2):
        colour = colours[rng.randrange(len(colours))]
        image = with_text(photo(colour, 300 + i), [word], size=rng.choice((32, 48, 64)),
                          angle=rng.uniform(-6, 6), low_contrast=False, rng=rng)
        add(Item(f"distractor-{i:02d}", colour, kind="distractor"), image)
    return out


def write_corpus(folder: Path, seed: int = 7) -> dict[str, Item]:
    """Write the corpus as ``<name>.jpg`` files; file name → labels."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for item, data in corpus(seed):
        (folder / f"{item.name}.jpg").write_bytes(data)
        labels[f"{item.name}.jpg"] = item
    return labels
