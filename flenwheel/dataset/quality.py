"""Quality flags of an image (docs/coverage.md): blurred, under- or overexposed, noisy or blocky, letterboxed, a face
too small for the training size, or a near-duplicate of another image of the character.

Each flag is measured where it matters for a character LoRA: blur and exposure on the subject's face (the whole
image when there is none), noise and letterbox on the frame, the face's size as the trainer will see it. Thresholds
are data (``quality:`` in configs/flenwheel.yaml), set by ``bench/calibrate_quality.py`` on the shared faces and
degraded copies of them.

* ``blur``: scikit-image's ``blur_effect`` (Crete et al. 2007: how little a re-blur changes the image; 0 sharp,
  1 blurred) of the face crop at no more than 160 px high (never upscaled, so a small face is not called blurred
  for being small); without a face the frame at 512 px, with its own threshold.
* ``underexposed``: median L* of the face below the threshold (no face: the 95th percentile of the frame).
* ``overexposed``: share of the face at L* > 97 (blown highlights) above the threshold (no face: of the frame).
* ``noise``: scikit-image's wavelet noise estimate (sigma, grey levels) or JPEG blockiness (mean gradient across
  8x8 block edges over the gradient inside blocks) over their thresholds; the score is the larger of the two
  ratios to their thresholds, so 1 is the bar.
* ``letterbox``: near-black flat bands (95 % of a line below L* 8, spread under 2) at the edges that end in a step to
  the picture, covering the threshold's share of the height or width.
* ``small_face``: the face's short side in pixels once the image is scaled to ``train_side`` (never up).
* ``near_duplicate``: ORB features matched to an earlier image of the character outside the image's own lineage,
  counted when one similarity transform (RANSAC) explains them: survives re-encoding, resizing and crops, while two
  different photos of the same person share few such matches. An edit is no duplicate of its own source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import imagehash
import numpy as np
from skimage.measure import blur_effect
from skimage.restoration import estimate_sigma

from flenwheel.core.config import QualitySettings
from flenwheel.core.types import FLAG_PREFIX, QUALITY_FLAGS
from flenwheel.store.objects import load_rgb, open_rgb

BoxLike = Sequence[float]
FACE_SIDE = 160  # the face crop is judged at most this high
FRAME_SIDE = 512  # the frame is judged at most this wide or high (blur without a face, letterbox, duplicates)
BAR_LEVEL = 8.0  # L* below which a line's 95th percentile makes it a black bar
BAR_FLAT = 2.0  # ... and whose 5th to 95th percentile spread is below this
BAR_MIN = 0.01  # a band thinner than this share of the side is a border, not a bar
CLIPPED = 97.0  # L* from which a pixel is blown out


def perceptual_hash(path: Path) -> imagehash.ImageHash:
    """The image's perceptual hash (DCT of the grey image): equal-looking images are a few bits apart."""
    return imagehash.phash(open_rgb(path))


def _lightness(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB)[..., 0].astype(np.float64) * 100.0 / 255.0


def _fit(image: np.ndarray, side: int, by_height: bool = False) -> np.ndarray:
    """``image`` shrunk so its height (or longest side) is at most ``side``; never enlarged."""
    h, w = image.shape[:2]
    scale = min(1.0, side / (h if by_height else max(h, w)))
    if scale >= 1.0:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _face_crop(rgb: np.ndarray, box: BoxLike) -> np.ndarray | None:
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = max(0, int(box[0])), max(0, int(box[1])), min(w, int(box[2])), min(h, int(box[3]))
    return _fit(rgb[y0:y1, x0:x1], FACE_SIDE, by_height=True) if x1 - x0 >= 8 and y1 - y0 >= 8 else None


def _bar(lines: np.ndarray) -> int:
    """How many lines from the start of ``lines`` (lines x pixels of L*) form a black bar that ends in a step."""
    # Near black and flat: a bar is one colour, a dark part of the picture still has texture.
    low, high = np.percentile(lines, (5, 95), axis=1)
    dark = (high < BAR_LEVEL) & (high - low < BAR_FLAT)
    n = int(np.argmin(dark)) if not dark.all() else len(dark)
    if n < max(1, round(BAR_MIN * len(lines))) or n >= len(lines):
        return 0
    after = lines[n : n + max(2, round(0.02 * len(lines)))]
    # A bar ends where the picture starts; a dark background just fades out (a darkened photo is no letterbox).
    return n if float(np.percentile(after, 95)) >= BAR_LEVEL + 12.0 else 0


def letterbox_bands(lightness: np.ndarray) -> dict[str, int]:
    """Black bars at each edge, in lines of ``lightness``."""
    return {
        "top": _bar(lightness),
        "bottom": _bar(lightness[::-1]),
        "left": _bar(lightness.T),
        "right": _bar(lightness.T[::-1]),
    }


def blockiness(grey: np.ndarray) -> float:
    """Mean gradient across the 8x8 block edges of JPEG over the mean gradient inside blocks (about 1 without
    blocks; JPEG at quality 10 gives 2.3-4.6 on the shared faces)."""
    g = grey.astype(np.float64)
    dh, dv = np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0))
    if dh.shape[1] < 16 or dv.shape[0] < 16:
        return 1.0
    edges = dh[:, 7::8].mean() + dv[7::8, :].mean()
    inside = np.delete(dh, np.s_[7::8], axis=1).mean() + np.delete(dv, np.s_[7::8], axis=0).mean()
    return float(edges / max(inside, 1e-6))


def measure_quality(rgb: np.ndarray, face_box: BoxLike | None, train_side: int) -> dict[str, Any]:
    """Every value a flag is judged by (see the module docstring); face values are None without a face."""
    h, w = rgb.shape[:2]
    frame = _fit(rgb, FRAME_SIDE)
    frame_l = _lightness(frame)
    bands = letterbox_bands(frame_l)
    fh, fw = frame_l.shape
    # The picture inside the bars: noise and blocks are measured there (a flat bar has neither and dilutes both).
    sy, sx = h / fh, w / fw
    y0, y1 = round(bands["top"] * sy), h - round(bands["bottom"] * sy)
    x0, x1 = round(bands["left"] * sx), w - round(bands["right"] * sx)
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    out: dict[str, Any] = {
        "letterbox": max((bands["top"] + bands["bottom"]) / fh, (bands["left"] + bands["right"]) / fw),
        "bands": bands,
        "noise_sigma": float(estimate_sigma(grey.astype(np.float64))),
        "blockiness": blockiness(grey),
        "image_blur": float(blur_effect(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))),
        "image_l95": float(np.percentile(frame_l, 95)),
        "image_clipped": float((frame_l > CLIPPED).mean()),
        "face_blur": None,
        "face_l": None,
        "face_clipped": None,
        "face_train_px": None,
    }
    crop = _face_crop(rgb, face_box) if face_box is not None else None
    if face_box is not None and crop is not None:
        face_l = _lightness(crop)
        short = min(face_box[2] - face_box[0], face_box[3] - face_box[1])
        out |= {
            "face_blur": float(blur_effect(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY))),
            "face_l": float(np.median(face_l)),
            "face_clipped": float((face_l > CLIPPED).mean()),
            "face_train_px": float(short * min(1.0, train_side / max(h, w))),
        }
    return out


@dataclass(frozen=True)
class Flag:
    """One flag's verdict on an image: its score, the threshold it was held to, whether it is raised."""

    name: str
    score: float | None
    threshold: float | None
    raised: bool
    params: dict[str, Any]


def judge(measures: dict[str, Any], settings: QualitySettings, duplicate: tuple[str, int] | None) -> list[Flag]:
    """Every flag of an image from its measures and its best earlier match (image id, ORB inliers) if any."""
    face = measures["face_blur"] is not None
    on = "face" if face else "image"
    blur, blur_t = (measures["face_blur"], settings.blur) if face else (measures["image_blur"], settings.blur_image)
    under, under_t = (measures["face_l"], settings.underexposed_face) if face else (
        measures["image_l95"], settings.underexposed_image)  # fmt: skip
    clipped = measures["face_clipped"] if face else measures["image_clipped"]
    noise = max(measures["noise_sigma"] / settings.noise, measures["blockiness"] / settings.blockiness)
    small = measures["face_train_px"]
    inliers = duplicate[1] if duplicate else 0
    raw = {"noise_sigma": measures["noise_sigma"], "blockiness": measures["blockiness"]}
    flags = [
        Flag("blur", blur, blur_t, blur > blur_t, {"on": on}),
        Flag("underexposed", under, under_t, under < under_t, {"on": on, "measure": "median L*" if face else "p95 L*"}),
        Flag("overexposed", clipped, settings.overexposed, clipped > settings.overexposed, {"on": on}),
        Flag("noise", noise, 1.0, noise > 1.0, raw),
        Flag("letterbox", measures["letterbox"], settings.letterbox, measures["letterbox"] >= settings.letterbox,
             {"bands": measures["bands"]}),
        Flag("small_face", small, settings.small_face, small is not None and small < settings.small_face,
             {"train_side": settings.train_side}),
        Flag("near_duplicate", float(inliers), settings.near_duplicate, inliers >= settings.near_duplicate,
             {"of": duplicate[0] if duplicate else None}),
    ]  # fmt: skip
    assert [f.name for f in flags] == list(QUALITY_FLAGS)
    return flags


def flag_rows(image_id: str, flags: Sequence[Flag], run_id: str | None) -> list[dict[str, Any]]:
    """``verifications`` rows of an image's flags (``flag:<name>``; passed = not raised)."""
    return [
        {
            "image_id": image_id,
            "name": f"{FLAG_PREFIX}{f.name}",
            "score": None if f.score is None else round(float(f.score), 5),
            "threshold": f.threshold,
            "passed": not f.raised,
            "mask_id": None,
            "params": f.params,
            "run_id": run_id,
        }
        for f in flags
    ]


class DuplicateFinder:
    """ORB features of a character's images, computed once per image, and the best earlier match of a new one."""

    def __init__(self, root: Path, features: int = 1000) -> None:
        self.root = root
        self.orb = cv2.ORB_create(nfeatures=features)
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        self._cache: dict[str, tuple[Any, Any]] = {}

    def features(self, image_id: str, rgb: np.ndarray | None = None, path: str | None = None) -> tuple[Any, Any]:
        if image_id not in self._cache:
            if rgb is None:
                rgb = load_rgb(self.root / str(path))
            grey = cv2.cvtColor(_fit(rgb, FRAME_SIDE), cv2.COLOR_RGB2GRAY)
            self._cache[image_id] = self.orb.detectAndCompute(grey, None)
        return self._cache[image_id]

    def inliers(self, a: tuple[Any, Any], b: tuple[Any, Any]) -> int:
        """Matches (Lowe's ratio test) that one rotation + scale + shift explains (RANSAC, 4 px)."""
        (ka, da), (kb, db) = a, b
        if da is None or db is None or len(ka) < 8 or len(kb) < 8:
            return 0
        pairs = self.matcher.knnMatch(da, db, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance]
        if len(good) < 8:
            return len(good)
        src = np.float32([ka[m.queryIdx].pt for m in good])
        dst = np.float32([kb[m.trainIdx].pt for m in good])
        _, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=4.0)
        return int(mask.sum()) if mask is not None else 0

    def best_match(
        self, image_id: str, rgb: np.ndarray, candidates: Sequence[dict[str, Any]]
    ) -> tuple[str, int] | None:
        """The candidate (rows with ``image_id`` and ``path``) sharing the most consistent matches with the image."""
        mine = self.features(image_id, rgb)
        scored = [(self.inliers(mine, self.features(c["image_id"], path=c["path"])), c["image_id"]) for c in candidates]
        if not scored:
            return None
        inliers, other = max(scored)
        return other, inliers
