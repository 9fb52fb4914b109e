"""Near-copies of a photo: what the copy detector must call ``copy`` (docs/evaluation.md).

The issue's list, each at the edge of its range: crops up to 15 % (from a corner or all round), small shifts (5 %,
edges repeated as the augment editor repeats them), colour and brightness jitter, a mirror, JPEG re-encoding and
resizing, and one transform that combines several. :func:`grid` gives the fixed set the calibration measures;
:func:`random_near_copy` draws combinations inside the same ranges (the held-out acceptance check and the tests).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image, ImageEnhance

MAX_CROP = 0.15
MAX_SHIFT = 0.05


def crop(rgb: np.ndarray, left: float, top: float, right: float, bottom: float) -> np.ndarray:
    """Cut the given shares of the width and height off each side."""
    h, w = rgb.shape[:2]
    return np.ascontiguousarray(rgb[round(h * top) : h - round(h * bottom), round(w * left) : w - round(w * right)])


def shift(rgb: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Move the content by shares of the width and height; the uncovered edge repeats the last row or column."""
    h, w = rgb.shape[:2]
    m = np.float32([[1, 0, dx * w], [0, 1, dy * h]])
    return cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def enhance(rgb: np.ndarray, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0) -> np.ndarray:
    img = Image.fromarray(rgb)
    img = ImageEnhance.Brightness(img).enhance(brightness)
    img = ImageEnhance.Contrast(img).enhance(contrast)
    return np.asarray(ImageEnhance.Color(img).enhance(saturation))


def hue(rgb: np.ndarray, degrees: float) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(int) + round(degrees / 2)) % 180).astype(np.uint8)  # OpenCV hue: 0..179
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def mirror(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, ::-1])


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def resize(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    method = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(rgb, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=method)


GRID: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    **{
        f"crop{round(c * 100)}-{where}": (lambda rgb, c=c, sides=sides: crop(rgb, *(c * s for s in sides)))
        for c in (0.05, 0.10, MAX_CROP)
        for where, sides in (("top-left", (1, 1, 0, 0)), ("bottom-right", (0, 0, 1, 1)), ("all-round", (.5,) * 4))
    },
    "shift-right-down": lambda rgb: shift(rgb, MAX_SHIFT, MAX_SHIFT),
    "shift-left-up": lambda rgb: shift(rgb, -MAX_SHIFT, -MAX_SHIFT),
    "brighter": lambda rgb: enhance(rgb, brightness=1.25),
    "darker": lambda rgb: enhance(rgb, brightness=0.75),
    "low-contrast": lambda rgb: enhance(rgb, contrast=0.7),
    "desaturated": lambda rgb: enhance(rgb, saturation=0.3),
    "hue+50": lambda rgb: hue(rgb, 50),
    "mirror": mirror,
    "jpeg40": lambda rgb: jpeg(rgb, 40),
    "jpeg75": lambda rgb: jpeg(rgb, 75),
    "resize0.5": lambda rgb: resize(rgb, 0.5),
    "resize0.75": lambda rgb: resize(rgb, 0.75),
    "resize1.5": lambda rgb: resize(rgb, 1.5),
    "combined": lambda rgb: jpeg(enhance(mirror(crop(rgb, 0.0, 0.08, 0.12, 0.0)), brightness=1.15), 70),
}  # fmt: skip


def grid(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """The calibration's near-copies of ``rgb``, by name."""
    return {name: transform(rgb) for name, transform in GRID.items()}


def random_near_copy(rgb: np.ndarray, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A random near-copy: a crop of up to 15 % in all, a shift, a colour change, maybe a mirror, a resize, JPEG."""
    sides = rng.dirichlet(np.ones(4)) * rng.uniform(0.0, MAX_CROP)
    dx, dy = rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2)
    brightness, contrast, saturation = rng.uniform(0.8, 1.2, size=3)
    degrees, flip = float(rng.uniform(-30, 30)), bool(rng.random() < 0.5)
    factor, quality = float(rng.uniform(0.5, 1.5)), int(rng.integers(40, 95))
    out = shift(crop(rgb, *sides), dx, dy)
    out = hue(enhance(out, brightness, contrast, saturation), degrees)
    out = jpeg(resize(mirror(out) if flip else out, factor), quality)
    name = (
        f"crop{sides.sum():.0%}-shift{dx:+.0%},{dy:+.0%}-b{brightness:.2f}-hue{degrees:+.0f}"
        f"{'-mirror' if flip else ''}-x{factor:.2f}-q{quality}"
    )
    return name, out
