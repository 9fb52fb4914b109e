"""What a photo shows of its subject, binned for coverage (docs/coverage.md): head yaw and pitch, framing and
expression from dlib's 68 landmarks, and the light from the frame's tones.

Here, below both :mod:`flenwheel.dataset` (coverage of a set) and :mod:`flenwheel.editing` (the landed check of an
edit that aims at a bin), so the two measure alike. The 68-point predictor ships in ``face_recognition_models``
(offline) and runs on the face box of either identity backend.

* **yaw** from the subject's point of view, in degrees: the nose's offset from the eye midpoint
  (:func:`~flenwheel.identity.backends.estimate_yaw`, the estimate identity scoring stores), positive when the head
  turns to the subject's own left (nose toward the image's right). A mirror flips its sign, so a photo and its
  mirror land in mirrored bins. frontal below 20 degrees, three-quarter below 55, profile beyond.
* **pitch**: where the nose tip sits between the eye line and the top of the upper lip (a ratio that smiles and an
  open mouth barely move), turned into degrees with the generic head's nose depth: ``atan((R0 - r) / K)``,
  positive when the chin is up (or the camera below). Level within 15 degrees.
* **framing**: the landmark face's height (brow to chin) as a share of the image height: close-up from 0.40,
  head and shoulders from 0.25, half body from 0.14, full body below (knees or feet in the frame).
* **expression**: mouth open when the inner lips part by 0.28 of the mouth's width; smiling when the mouth is wide
  (1.05 eye distances) and its corners rise above the lips' centre (0.07 of its width); else neutral.
* **light**: the key of the frame from the median CIE L* (low below 25, high above 65) and its **warmth** from the
  mean b* (yellow-blue axis; warm from 5, cool from -3: skin alone pushes a frame 2-4 towards yellow).

``bench/calibrate_quality.py`` prints these measures for every shared face and its mirror; the boundaries sit in
the gaps between the photos' own values (docs/coverage.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from flenwheel.core.errors import FlenwheelError
from flenwheel.core.types import COVERAGE_AXES
from flenwheel.identity.backends import Face, FaceBackend, estimate_yaw, face_recognition_models_dir

BoxLike = Sequence[float]

YAW_FRONTAL = 20.0  # |yaw| below: frontal
YAW_PROFILE = 55.0  # |yaw| from: profile; between: three-quarter
PITCH_R0 = 0.57  # nose tip between eye line and upper lip of a level head (median of the shared faces)
PITCH_K = 0.5  # nose depth over eye-to-lip height of the generic head: d(ratio) = K * tan(pitch)
PITCH_LEVEL = 15.0  # |pitch| below: level
FRAMING = ((0.40, "close_up"), (0.25, "head_and_shoulders"), (0.14, "half_body"))  # else full_body
MOUTH_OPEN = 0.28  # inner-lip gap / mouth width
SMILE_WIDTH = 1.05  # mouth width / eye distance
SMILE_LIFT = 0.07  # corners above the lips' centre / mouth width
LOW_KEY = 25.0  # median L* below
HIGH_KEY = 65.0  # median L* above
WARM = 5.0  # mean b* from
COOL = -3.0  # mean b* at most
LIGHT_SIDE = 256  # the frame's tones are read at this width


# --------------------------------------------------------------------------- landmarks


@lru_cache(maxsize=1)
def _landmark_predictor() -> Any | None:
    """dlib's 68-point shape predictor from face_recognition_models, or None when it is not installed."""
    try:
        import dlib

        path = face_recognition_models_dir() / "shape_predictor_68_face_landmarks.dat"
    except (ImportError, FlenwheelError):
        return None
    return dlib.shape_predictor(str(path)) if path.is_file() else None


def face_landmarks(rgb: np.ndarray, face_box: BoxLike) -> np.ndarray | None:
    """The 68 dlib landmarks (68, 2) of the face in ``face_box``, or None without the landmark model."""
    predictor = _landmark_predictor()
    if predictor is None:
        return None
    import dlib

    x0, y0, x1, y1 = (round(v) for v in face_box)
    shape = predictor(np.ascontiguousarray(rgb), dlib.rectangle(x0, y0, x1, y1))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def main_face(faces: Sequence[Face], confident_score: float, min_face_px: float) -> tuple[Face | None, str | None]:
    """The face an image is judged by, as identity scoring picks it: the largest confident face of at least
    ``min_face_px`` (``multi_face`` when there are several), else the largest confident one (``small_face``), else
    the largest detection (``low_confidence``); ``(None, "no_face")`` when nothing was detected."""
    if not faces:
        return None, "no_face"
    confident = [f for f in faces if f.score >= confident_score]
    big = [f for f in confident if f.short_side >= min_face_px]
    if big:
        return max(big, key=lambda f: f.area), "multi_face" if len(big) > 1 else None
    if confident:
        return max(confident, key=lambda f: f.area), "small_face"
    return max(faces, key=lambda f: f.area), "low_confidence"


# --------------------------------------------------------------------------- measures


def yaw_bin(yaw: float | None) -> str | None:
    if yaw is None:
        return None
    side = "left" if yaw > 0 else "right"
    if abs(yaw) < YAW_FRONTAL:
        return "frontal"
    return f"{side}_three_quarter" if abs(yaw) < YAW_PROFILE else f"{side}_profile"


def pitch_bin(pitch: float | None) -> str | None:
    if pitch is None:
        return None
    return "level" if abs(pitch) < PITCH_LEVEL else ("up" if pitch > 0 else "down")


def framing_bin(face_share: float | None) -> str | None:
    if face_share is None:
        return None
    return next((name for floor, name in FRAMING if face_share >= floor), "full_body")


def five_points(points: np.ndarray) -> np.ndarray:
    """Eye centres (image left, image right), nose tip and mouth corners from the 68 landmarks."""
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])


def pitch_degrees(points: np.ndarray) -> float | None:
    """Head pitch from the 68 landmarks (positive: chin up), see the module docstring."""
    eyes = (points[36:42].mean(0) + points[42:48].mean(0)) / 2
    axis = points[51] - eyes
    length2 = float(np.dot(axis, axis))
    if length2 < 1e-6:
        return None
    ratio = float(np.dot(points[30] - eyes, axis)) / length2
    return math.degrees(math.atan((PITCH_R0 - ratio) / PITCH_K))


def mouth_measures(points: np.ndarray) -> dict[str, float]:
    """Inner-lip gap and corner lift over the mouth width, mouth width over the eye distance."""
    left_eye, right_eye = points[36:42].mean(0), points[42:48].mean(0)
    eye_axis = right_eye - left_eye
    eye_dist = max(float(np.hypot(*eye_axis)), 1e-6)
    ux, uy = eye_axis / eye_dist
    up = np.array([uy, -ux])  # the face's up direction (image y grows downward), roll removed
    width = max(float(np.hypot(*(points[54] - points[48]))), 1e-6)
    centre = (points[62] + points[66]) / 2
    return {
        "mouth_gap": float(np.hypot(*(points[66] - points[62]))) / width,
        "mouth_width": width / eye_dist,
        "smile_lift": float(np.dot((points[48] + points[54]) / 2 - centre, up)) / width,
    }


def expression_bin(mouth: dict[str, float]) -> str:
    if mouth["mouth_gap"] >= MOUTH_OPEN:
        return "mouth_open"
    if mouth["mouth_width"] >= SMILE_WIDTH and mouth["smile_lift"] >= SMILE_LIFT:
        return "smiling"
    return "neutral"


def light_measures(rgb: np.ndarray) -> dict[str, float]:
    """Median and 10th/90th percentile L* (0..100) and mean a*, b* of the frame (at :data:`LIGHT_SIDE` wide)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, LIGHT_SIDE / max(1, w))
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2LAB).astype(np.float64)
    lightness = lab[..., 0] * 100.0 / 255.0
    return {
        "l_median": float(np.median(lightness)),
        "l_p10": float(np.percentile(lightness, 10)),
        "l_p90": float(np.percentile(lightness, 90)),
        "a_mean": float((lab[..., 1] - 128).mean()),
        "b_mean": float((lab[..., 2] - 128).mean()),
    }


def light_bin(median_l: float) -> str:
    return "low_key" if median_l < LOW_KEY else ("high_key" if median_l > HIGH_KEY else "mid_key")


def warmth_bin(mean_b: float) -> str:
    return "warm" if mean_b >= WARM else ("cool" if mean_b <= COOL else "neutral")


@dataclass
class Attributes:
    """One image's measures and bins (None: not measurable, e.g. no face for yaw); field names follow the
    ``image_attributes`` table."""

    yaw: float | None = None
    pitch: float | None = None
    face_share: float | None = None
    yaw_bin: str | None = None
    pitch_bin: str | None = None
    framing: str | None = None
    expression: str | None = None
    light: str | None = None
    warmth_bin: str | None = None
    measures: dict[str, float] = field(default_factory=dict)

    def bin(self, axis: str) -> str | None:
        """The measured bin on ``axis`` (an axis of :data:`~flenwheel.core.types.COVERAGE_AXES`)."""
        if axis not in COVERAGE_AXES:
            raise KeyError(axis)
        return getattr(self, {"yaw": "yaw_bin", "pitch": "pitch_bin", "warmth": "warmth_bin"}.get(axis, axis))

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["measures"] = {k: round(v, 4) for k, v in self.measures.items()}
        for key in ("yaw", "pitch", "face_share"):
            d[key] = None if d[key] is None else round(d[key], 4)
        return d


def measure(rgb: np.ndarray, face_box: BoxLike | None) -> Attributes:
    """The attributes of ``rgb`` (HxWx3 uint8) whose subject's face is ``face_box`` (None: no face; only the light
    is measured)."""
    light = light_measures(rgb)
    out = Attributes(light=light_bin(light["l_median"]), warmth_bin=warmth_bin(light["b_mean"]), measures=light)
    points = face_landmarks(rgb, face_box) if face_box is not None else None
    if points is None or face_box is None:
        return out
    # The same face mirrored, with the box mirrored: averaging both readings (the yaw with its sign turned) makes
    # the measures exactly mirror-symmetric for a given box, so a photo and its mirror differ only as far as the
    # detector's boxes for them do.
    x0, y0, x1, y1 = face_box
    width = rgb.shape[1]
    mirrored = face_landmarks(np.ascontiguousarray(rgb[:, ::-1]), (width - x1, y0, width - x0, y1))
    readings = [_face_measures(points, rgb.shape[0])]
    if mirrored is not None:
        readings.append(_face_measures(mirrored, rgb.shape[0]))
        readings[1]["yaw"] = -readings[1]["yaw"]
    mean = {k: float(np.mean([r[k] for r in readings])) for k in readings[0]}
    out.yaw, out.pitch, out.face_share = mean.pop("yaw"), mean.pop("pitch"), mean.pop("face_share")
    mouth = mean
    out.measures |= mouth
    out.yaw_bin, out.pitch_bin = yaw_bin(out.yaw), pitch_bin(out.pitch)
    out.framing, out.expression = framing_bin(out.face_share), expression_bin(mouth)
    return out


def _face_measures(points: np.ndarray, height: int) -> dict[str, float]:
    yaw = estimate_yaw(five_points(points))
    pitch = pitch_degrees(points)
    face_height = float(points[8][1] - points[17:27, 1].min())
    return {
        "yaw": 0.0 if yaw is None else yaw,
        "pitch": 0.0 if pitch is None else pitch,
        "face_share": max(0.0, face_height) / height,
        **mouth_measures(points),
    }


def _iou(a: BoxLike, b: BoxLike) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def symmetric_box(backend: FaceBackend, rgb: np.ndarray, face: Face) -> tuple[float, float, float, float]:
    """``face``'s box averaged with the box the detector finds for the same face in the mirrored image (mirrored
    back): detectors are not mirror-symmetric, and this box is, so a photo and its mirror are measured on mirrored
    boxes. The box as detected when the mirror shows no face that overlaps it by half."""
    width = rgb.shape[1]
    flipped = [(width - f.box[2], f.box[1], width - f.box[0], f.box[3]) for f in backend.detect(rgb[:, ::-1])]
    match = max(flipped, key=lambda b: _iou(b, face.box), default=None)
    if match is None or _iou(match, face.box) < 0.5:
        return face.box
    return tuple((p + q) / 2 for p, q in zip(face.box, match, strict=True))  # type: ignore[return-value]


def measure_image(backend: FaceBackend, rgb: np.ndarray) -> tuple[Attributes, Face | None, list[Face]]:
    """Detect faces with ``backend`` and measure ``rgb`` by its main face (:func:`main_face`) on its
    :func:`symmetric_box`; returns the attributes, that face (its box made symmetric) and every detection (an
    edit's checks count them)."""
    faces = backend.detect(rgb)
    face, _ = main_face(faces, backend.facts.confident_score, backend.settings.min_face_px)
    if face is None:
        return measure(rgb, None), None, faces
    face = Face(symmetric_box(backend, rgb, face), face.score, face.kps)
    return measure(rgb, face.box), face, faces
