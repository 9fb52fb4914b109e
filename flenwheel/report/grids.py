"""Labelled image grids (Pillow), for reports and checkpoint samples."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from flenwheel.core.files import atomic_write
from flenwheel.store.objects import open_rgb


def image_grid(tiles: Sequence[tuple[Path | Image.Image, str]], path: Path, tile: int = 192, columns: int = 6) -> Path:
    """A labelled grid of images (label under each tile)."""
    columns = max(1, min(columns, len(tiles) or 1))
    rows = max(1, math.ceil(len(tiles) / columns))
    label_h = 28
    grid = Image.new("RGB", (columns * tile, rows * (tile + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (src, label) in enumerate(tiles):
        img = src.convert("RGB") if isinstance(src, Image.Image) else open_rgb(src)
        img.thumbnail((tile, tile))
        x, y = (i % columns) * tile, (i // columns) * (tile + label_h)
        grid.paste(img, (x + (tile - img.width) // 2, y + (tile - img.height) // 2))
        for n, line in enumerate(_wrap(label, tile // 6)[:2]):
            draw.text((x + 3, y + tile + 2 + 12 * n), line, fill="black")
    if not tiles:
        draw.text((10, 10), "no images", fill="black")
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())
    return path


def _wrap(text: str, width: int) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return [*lines, cur] if cur else lines
