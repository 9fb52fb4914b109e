"""Composition: how alike two pictures are around the face, once both are aligned on it.

The copy detector's second signal (docs/evaluation.md). Identity similarity says *who* is shown; it is high for a
re-encoded training photo and for a different photo of the same person alike. What tells the two apart is the rest
of the picture: a different photo has another pose, other clothes, another background and light; a copy, however
re-framed, re-coloured, mirrored, re-encoded or resized, has the same ones.

Each picture is reduced to its :class:`Layout`: a small grey window around the detected face, its size and place
fixed by the face box (``CONTEXT`` face sizes on each side, centred ``DROP`` of a face size below the face, so that
hair, shoulders, clothes and the background behind them are in it). Framing (a crop, a shift, a resize) moves and
scales the face box with the picture, so the windows of a copy and its original show the same region. Parts of the
window outside the picture are marked invalid and left out.

Two layouts are compared by the correlation coefficient of their grey values over the pixels valid in both. A face
detector's box is not a precise ruler — dlib's HOG boxes of one face in two framings differ in size by up to about
20 % — so the sample's window is cut at seven box scales (0.8–1.25) and the closest of them, against the member as
it is or mirrored, is refined by OpenCV's ECC alignment (``cv2.findTransformECC``, an affine warp) for the last
pixels of offset and scale. The warp is bounded (scale 0.8–1.25, shift 15 % of the window), so it cannot morph one
picture into another; outside the bounds, or when ECC does not converge, the unrefined correlation counts. Grey
levels correlated after removing their mean and scale ignore brightness and contrast changes; colour shifts change
the grey image little. A value near 1 is the same picture; different photos of one person stay below about 0.65
(bench/calibrate_likeness.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

SIDE = 64  # window side, pixels
CONTEXT = 1.5  # face sizes from the window's centre to its edge
DROP = 0.5  # face sizes the window's centre sits below the face's (shoulders and clothes weigh in)
# Face detectors' boxes of one face in two framings of a picture differ in size by up to ~20 % (dlib's HOG works on
# a scale pyramid): the sample's window is taken at these box scales and the closest one compared.
SCALES = (0.8, 0.87, 0.93, 1.0, 1.07, 1.15, 1.25)
MIN_OVERLAP = 0.15  # share of the window valid in both pictures below which nothing is compared
MAX_SCALE = 1.25  # ECC warps that scale by more (or less than its inverse) are not trusted
MAX_SHIFT = 0.15  # ... or shift by more than this share of the window
ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)


@dataclass(frozen=True)
class Layout:
    """A picture's grey window around its face, and which of its pixels lie inside the picture."""

    grey: np.ndarray  # (SIDE, SIDE) float32
    valid: np.ndarray  # (SIDE, SIDE) bool

    def mirrored(self) -> Layout:
        return Layout(np.ascontiguousarray(self.grey[:, ::-1]), np.ascontiguousarray(self.valid[:, ::-1]))


def _grey(rgb: np.ndarray, size: float) -> tuple[np.ndarray, float]:
    """The picture in grey, downscaled (area averaging, so windows are not aliased) to about twice the resolution
    a window of a face of ``size`` pixels needs; and the factor it was shrunk by."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
    shrink = min(1.0, SIDE / (CONTEXT * size))
    if shrink < 1.0:
        h, w = grey.shape
        grey = cv2.resize(grey, (max(1, round(w * shrink)), max(1, round(h * shrink))), interpolation=cv2.INTER_AREA)
    return grey, shrink


def _window(grey: np.ndarray, shrink: float, box: Any, scale: float) -> Layout:
    x0, y0, x1, y1 = (float(v) for v in box)
    size = max(1.0, ((x1 - x0) * (y1 - y0)) ** 0.5) * scale
    half = CONTEXT * size
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + DROP * size
    step = SIDE / (2 * half)
    warp = np.array([[step / shrink, 0, -(cx - half) * step], [0, step / shrink, -(cy - half) * step]], np.float32)
    window = cv2.warpAffine(grey, warp, (SIDE, SIDE), flags=cv2.INTER_LINEAR, borderValue=0)
    inside = cv2.warpAffine(np.ones_like(grey), warp, (SIDE, SIDE), flags=cv2.INTER_NEAREST, borderValue=0)
    return Layout(window, inside > 0.5)


def layout(rgb: np.ndarray, box: Any) -> Layout:
    """The layout of an RGB picture whose face has the box ``(x0, y0, x1, y1)`` in its pixels."""
    return layouts(rgb, box, (1.0,))[0]


def layouts(rgb: np.ndarray, box: Any, scales: Sequence[float] = SCALES) -> list[Layout]:
    """The picture's layouts with the face box scaled by each of ``scales`` about its centre (one grey copy)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    grey, shrink = _grey(rgb, max(1.0, ((x1 - x0) * (y1 - y0)) ** 0.5))
    return [_window(grey, shrink, box, s) for s in scales]


def correlation(a: Layout, b: Layout) -> float | None:
    """Correlation coefficient of the grey values valid in both (None when they overlap too little)."""
    both = a.valid & b.valid
    if both.mean() < MIN_OVERLAP:
        return None
    x, y = a.grey[both], b.grey[both]
    x, y = x - x.mean(), y - y.mean()
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 1e-6 else None


def _aligned(a: Layout, b: Layout) -> float | None:
    """:func:`correlation` after ECC has warped ``b`` onto ``a`` (None when ECC does not converge or leaves the
    bounds)."""
    warp = np.eye(2, 3, dtype=np.float32)
    try:
        mask = a.valid.astype(np.uint8)
        _, warp = cv2.findTransformECC(a.grey, b.grey, warp, cv2.MOTION_AFFINE, ECC_CRITERIA, mask, 5)
    except cv2.error:  # did not converge: the pictures have too little in common to align
        return None
    singular = np.linalg.svd(warp[:, :2], compute_uv=False)
    if singular.max() > MAX_SCALE or singular.min() < 1 / MAX_SCALE or np.abs(warp[:, 2]).max() > MAX_SHIFT * SIDE:
        return None
    flags = cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP
    grey = cv2.warpAffine(b.grey, warp, (SIDE, SIDE), flags=flags)
    valid = cv2.warpAffine(b.valid.astype(np.uint8), warp, (SIDE, SIDE), flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP)
    return correlation(a, Layout(grey, valid > 0))


def composition_similarity(sample: Layout | Sequence[Layout], member: Layout) -> float | None:
    """How alike the two pictures are around the face (-1..1), the member taken as it is or mirrored, whichever is
    closer; None when their windows overlap too little to say. ``sample`` may be its :func:`layouts` at several box
    scales: the closest is refined by ECC."""
    candidates = [sample] if isinstance(sample, Layout) else list(sample)
    best: tuple[float, Layout, Layout] | None = None
    for target in (member, member.mirrored()):
        for candidate in candidates:
            value = correlation(candidate, target)
            if value is not None and (best is None or value > best[0]):
                best = (value, candidate, target)
    if best is None:
        return None
    refined = _aligned(best[1], best[2])
    return best[0] if refined is None else max(best[0], refined)
