"""Edit regions as masks: where an edit of each prompt category may change the image.

A mask is a ``uint8`` array of the image's height and width holding 0 or 255; **255 marks the edit region**
(pixels the edit may change), 0 the pixels it must keep. :func:`propose` turns (image, instruction, face box)
into a :class:`Mask` with a confidence in [0, 1] that says how far the region can be trusted:

* whole image (lighting, camera angles, unknown categories): 1.0 - nothing is estimated.
* face (expression): the convex hull of dlib's 68 landmarks, raised to the hairline (the 68 points stop at the
  eyebrows). Confidence is the share of the landmarks inside the slightly enlarged face box times 0.95: a
  predictor that lost the face scatters points outside the box. Without the landmark model, an ellipse from the
  box at a fixed 0.5.
* person / background: GrabCut seeded by the face box (:func:`person_matte`, which the augment editor also
  uses, thresholded at 0.5). Confidence is the colour separation of the two sides - the Bhattacharyya
  distance of their HSV histograms (0 same colours, 1 disjoint): GrabCut models both sides as colour mixtures
  and is unreliable exactly when they overlap - times ``0.5 + 0.5 * body_coverage`` (the share of the band
  under the chin that the mask covers: a lost torso leaves holes there), and a quarter of that when the person
  covers an implausible share of the frame (under 3 % or over 95 %).
* person minus face (outfit): the lower of the two confidences.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from flenwheel.core.errors import FlenwheelError
from flenwheel.identity.attributes import face_landmarks

BoxLike = Sequence[float]

# Region kind per prompt category (configs/prompts/enrich.yaml names the categories; "clothing" is an alias of
# "outfit"). Anything else may change the whole image.
REGION_OF_CATEGORY: dict[str, str] = {
    "background": "background",
    "lighting": "whole",
    "angles": "whole",
    "expression": "face",
    "outfit": "person_minus_face",
    "clothing": "person_minus_face",
}

# Words that place a free-text instruction in a category, tried in this order (the first match wins):
# background first, as "place the person in a park" also names the person.
_CATEGORY_WORDS: tuple[tuple[str, str], ...] = (
    ("background", r"background|backdrop|behind (?:him|her|them)|place the person|wall\b|scene"),
    ("lighting", r"relight|lighting|\blight\b|sunlight|shadow|low-key|golden.hour"),
    ("outfit", r"cloth|wear|sweater|suit\b|shirt|dress|jacket|outfit|coat"),
    ("expression", r"smile|expression|frown|laugh|grin|neutral face|eyes closed"),
    ("angles", r"camera|angle|rotate|view|close-up|wide|镜头"),
)

LANDMARK_CONFIDENCE = 0.95
ELLIPSE_CONFIDENCE = 0.5


class MaskError(FlenwheelError, ValueError):
    """A mask file cannot be read or does not fit its image."""


@dataclass(frozen=True)
class Mask:
    """An edit region (255 = may change) with how far it can be trusted and how it was made."""

    array: np.ndarray
    confidence: float
    kind: str  # whole | face | person | background | person_minus_face
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Share of the image inside the edit region."""
        return float((self.array > 0).mean())


# --------------------------------------------------------------------------- helpers


def as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 RGB array from a PIL image or an array (grey and RGBA are converted)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3]).astype(np.uint8)


def _binary(mask: np.ndarray) -> np.ndarray:
    return np.where(mask > 0, 255, 0).astype(np.uint8)


def whole_mask(shape: tuple[int, ...]) -> np.ndarray:
    return np.full(shape[:2], 255, np.uint8)


def face_or_centre(box: BoxLike | None, w: int, h: int) -> tuple[float, float, float]:
    """Centre and size of the face, or a plausible head region when no face is known."""
    if box is None:
        side = min(w, h) * 0.35
        return w / 2, h * 0.4, side
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)


def person_matte(rgb: np.ndarray, box: BoxLike | None, iterations: int = 4, work_side: int = 384) -> np.ndarray:
    """Foreground (person) mask in [0, 1] by GrabCut seeded with a body rectangle around the face."""
    h, w = rgb.shape[:2]
    scale = min(1.0, work_side / max(h, w))
    small = cv2.resize(rgb, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    cx, cy, side = face_or_centre(box, w, h)
    cx, cy, side = cx * scale, cy * scale, side * scale
    x0, x1 = max(1, int(cx - 1.6 * side)), min(sw - 2, int(cx + 1.6 * side))
    y0, y1 = max(1, int(cy - 0.9 * side)), sh - 2
    mask = np.zeros((sh, sw), np.uint8)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return np.ones((h, w), np.float32)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models with k-means: fix it, or the same job gives new pixels
    cv2.grabCut(
        cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
        mask,
        (x0, y0, x1 - x0, y1 - y0),
        bgd,
        fgd,
        iterations,
        cv2.GC_INIT_WITH_RECT,
    )
    # The face itself is always foreground.
    fx0, fy0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
    mask[fy0 : int(cy + side / 2), fx0 : int(cx + side / 2)] = cv2.GC_FGD
    fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
    fg = cv2.GaussianBlur(fg, (0, 0), sigmaX=max(1.0, 0.01 * max(sh, sw)))  # feathered edge
    return cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------- face


def _with_forehead(points: np.ndarray) -> np.ndarray:
    """The 68 points plus the eyebrows raised to the hairline, along the face's own up direction (head roll)."""
    brows, chin = points[17:27], points[8]
    up = brows.mean(0) - chin
    length = float(np.hypot(*up))
    if length < 1e-6:
        return points
    # The forehead is about half the brow-to-chin height in adult faces.
    return np.vstack([points, brows + up / length * 0.5 * length])


def face_mask(
    rgb: np.ndarray, face_box: BoxLike, landmarks: np.ndarray | None = None, use_landmarks: bool = True
) -> np.ndarray:
    """The face region (255) of ``rgb``: the landmark hull up to the hairline, else an ellipse from the box."""
    return _face_region(rgb, face_box, landmarks, use_landmarks)[0]


def _face_region(
    rgb: np.ndarray, face_box: BoxLike, landmarks: np.ndarray | None, use_landmarks: bool
) -> tuple[np.ndarray, float, str]:
    h, w = rgb.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    if landmarks is None and use_landmarks:
        landmarks = face_landmarks(rgb, face_box)
    x0, y0, x1, y1 = (float(v) for v in face_box)
    if landmarks is not None and len(landmarks) >= 27:
        hull = cv2.convexHull(np.round(_with_forehead(landmarks)).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 255)
        # Landmarks of a face the predictor lost scatter outside the box (dlib boxes are tight: allow 25 %).
        mx, my = 0.25 * (x1 - x0), 0.25 * (y1 - y0)
        inside = (
            (landmarks[:, 0] >= x0 - mx)
            & (landmarks[:, 0] <= x1 + mx)
            & (landmarks[:, 1] >= y0 - my)
            & (landmarks[:, 1] <= y1 + my)
        )
        return mask, LANDMARK_CONFIDENCE * float(inside.mean()), "landmarks"
    # dlib's box runs from the brows to the chin: the ellipse reaches higher to take in the forehead.
    centre = (round((x0 + x1) / 2), round(y0 + (y1 - y0) * 0.4))
    axes = (max(1, round((x1 - x0) * 0.55)), max(1, round((y1 - y0) * 0.75)))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, thickness=-1)
    return mask, ELLIPSE_CONFIDENCE, "ellipse"


# --------------------------------------------------------------------------- person


def person_mask(rgb: np.ndarray, face_box: BoxLike | None, threshold: float = 0.5) -> np.ndarray:
    """The person (255) by the augment editor's GrabCut, thresholded: the same pixels that editor keeps."""
    box = None if face_box is None else tuple(round(v) for v in face_box)
    return _binary(person_matte(rgb, box) >= threshold)  # type: ignore[arg-type]


def separation_confidence(rgb: np.ndarray, fg: np.ndarray) -> float:
    """How well colour separates ``fg`` (255) from the rest: Bhattacharyya distance of HSV histograms, in [0, 1]."""
    share = float((fg > 0).mean())
    if share <= 0.0 or share >= 1.0:
        return 0.0
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    bins, ranges = [12, 8, 8], [0, 180, 0, 256, 0, 256]
    h_fg = cv2.calcHist([hsv], [0, 1, 2], np.where(fg > 0, 255, 0).astype(np.uint8), bins, ranges)
    h_bg = cv2.calcHist([hsv], [0, 1, 2], np.where(fg > 0, 0, 255).astype(np.uint8), bins, ranges)
    cv2.normalize(h_fg, h_fg, 1.0, 0.0, cv2.NORM_L1)
    cv2.normalize(h_bg, h_bg, 1.0, 0.0, cv2.NORM_L1)
    # OpenCV's Bhattacharyya distance, sqrt(1 - BC): 0 for identical colour distributions, 1 for disjoint ones.
    return float(cv2.compareHist(h_fg, h_bg, cv2.HISTCMP_BHATTACHARYYA))


def body_coverage(person: np.ndarray, face_box: BoxLike) -> float:
    """Share of the band below the chin (the face's width on each side added) that the person mask covers.

    A person seen from the chest up fills that band; a GrabCut that lost the body (hair or clothes the colour of
    the background) leaves holes in it. 1.0 when the face sits at the bottom of the frame (no band to judge).
    """
    h, w = person.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in face_box)
    fw = x1 - x0
    band = person[min(h, round(y1 + 0.25 * (y1 - y0))) :, max(0, round(x0 - 0.5 * fw)) : min(w, round(x1 + 0.5 * fw))]
    if band.size < 0.01 * h * w:
        return 1.0
    return float((band > 0).mean())


def person_confidence(rgb: np.ndarray, person: np.ndarray, face_box: BoxLike) -> float:
    """Confidence in a GrabCut person mask: colour separation, lowered for holes under the chin or an odd size."""
    share = float((person > 0).mean())
    conf = separation_confidence(rgb, person) * (0.5 + 0.5 * body_coverage(person, face_box))
    if not 0.03 <= share <= 0.95:
        conf *= 0.25  # a "person" of a sliver or of the whole frame is GrabCut giving up
    return float(np.clip(conf, 0.0, 1.0))


# --------------------------------------------------------------------------- regions


def category_of(instruction: str) -> str:
    """The prompt category of a category name or a free-text instruction ("unknown" when nothing matches)."""
    text = instruction.strip().lower()
    if text in REGION_OF_CATEGORY:
        return text
    for category, words in _CATEGORY_WORDS:
        if re.search(words, text):
            return category
    return "unknown"


def edit_region(category: str, rgb: np.ndarray, face_box: BoxLike | None) -> tuple[np.ndarray, float]:
    """The region an edit of ``category`` may change (255) and the confidence in it (see the module docstring)."""
    mask = _region(category, as_rgb(rgb), face_box)
    return mask.array, mask.confidence


def _region(category: str, rgb: np.ndarray, face_box: BoxLike | None, use_landmarks: bool = True) -> Mask:
    kind = REGION_OF_CATEGORY.get(category, "whole")
    params: dict[str, Any] = {"category": category}
    if kind == "whole":
        return Mask(whole_mask(rgb.shape), 1.0, "whole", params)
    if face_box is None:
        # Without a face nothing can be placed reliably: allow everything, and say the region is a guess.
        return Mask(whole_mask(rgb.shape), 0.0, "whole", {**params, "fallback": "no face box"})
    params["face_box"] = [round(float(v), 1) for v in face_box]
    if kind == "face":
        face, conf, method = _face_region(rgb, face_box, None, use_landmarks)
        return Mask(face, conf, "face", {**params, "face_method": method})
    person = person_mask(rgb, face_box)
    person_conf = person_confidence(rgb, person, face_box)
    if kind == "background":
        return Mask(_binary(255 - person), person_conf, "background", {**params, "person_method": "grabcut"})
    face, face_conf, method = _face_region(rgb, face_box, None, use_landmarks)
    body = np.where(face > 0, 0, person).astype(np.uint8)
    params.update(person_method="grabcut", face_method=method)
    return Mask(body, min(person_conf, face_conf), "person_minus_face", params)


def propose(
    image: Image.Image | np.ndarray, instruction: str, face_box: BoxLike | None, use_landmarks: bool = True
) -> Mask:
    """The edit region for ``instruction`` (a prompt category, or the prompt text itself) on ``image``.

    ``mask.propose(image, instruction) -> mask, confidence``: the returned :class:`Mask` carries both, plus the
    region kind and how it was made (``params``: category, face box, landmark or ellipse, GrabCut).
    """
    category = category_of(instruction)
    return _region(category, as_rgb(image), face_box, use_landmarks)


# --------------------------------------------------------------------------- files


def mask_png(mask: Mask | np.ndarray) -> bytes:
    """A mask as 8-bit greyscale PNG bytes (0 keep, 255 edit region)."""
    arr = mask.array if isinstance(mask, Mask) else mask
    buf = io.BytesIO()
    Image.fromarray(_binary(np.asarray(arr))).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def decode_mask(data: bytes, what: str = "mask") -> np.ndarray:
    """A mask from PNG (or any greyscale image) bytes; :class:`MaskError` on anything unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MaskError(f"{what} is not a readable mask image ({reason}): write it again with flenwheel") from None
    return _binary(arr)


def read_mask(path: Path | str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a mask file; with ``shape``, also check it matches the image. Errors are one line (:class:`MaskError`)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise MaskError(f"cannot read mask file {p}: {e.strerror or type(e).__name__}") from None
    if not data:
        raise MaskError(f"mask file {p} is empty: write it again with flenwheel")
    arr = decode_mask(data, f"mask file {p}")
    if shape is not None and arr.shape != tuple(shape[:2]):
        raise MaskError(f"mask file {p} is {arr.shape[1]}x{arr.shape[0]}, its image {shape[1]}x{shape[0]}")
    return arr
