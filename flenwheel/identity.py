"""Face identity: backends, reference sets, calibration and verdicts.

Two backends share one interface:

* ``insightface`` — SCRFD detection + ArcFace (buffalo_l by default). Similarity is cosine similarity of
  L2-normalised 512-d embeddings. The buffalo_l/antelopev2 weights are licensed for **non-commercial
  research only**; they are never downloaded by flenwheel (see :class:`IdentityModelMissing`).
* ``dlib`` — HOG detection, 68-point landmarks and the ResNet descriptor shipped in the
  ``face_recognition_models`` package (installs offline). dlib compares descriptors by Euclidean distance
  (same person below 0.6); flenwheel reports ``similarity = 1 - distance`` so that, for both backends,
  higher means more alike and a threshold is a lower bound.

Faces are detected on a downscaled copy (``identity.detect_max_side``) and embedded from the aligned crop of
the full-resolution image. A candidate is compared with every embedding of the character's reference set;
the maximum and the mean are both recorded and the character's ``identity.decide_by`` says which decides.

Verdicts, in order of precedence: ``no_face`` (nothing detected), ``low_confidence`` (only weak detections),
``small_face`` (confident faces, all below ``identity.min_face_px``), ``multi_face`` (more than one confident
face above the size limit: the largest is scored, ``matched`` says whether it matched), else ``pass`` /
``fail`` by the threshold. With ``identity.pose_relief`` the threshold is lowered for turned heads, by up to
the backend's ``pose_relief`` at 45 degrees of estimated yaw, because profiles score lower on both backends.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import itertools
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from flenwheel.catalog import Catalog
from flenwheel.config import Character, IdentityBackendSettings, StoreSettings, Workspace
from flenwheel.errors import FlenwheelError


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

BACKENDS = tuple(FACTS)
VERDICTS = ("pass", "fail", "no_face", "multi_face", "small_face", "low_confidence")


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


def _face_recognition_models_dir() -> Path:
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

        models = _face_recognition_models_dir()
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
        norms = np.linalg.norm(references, axis=1) * max(float(np.linalg.norm(embedding)), 1e-12)
        return (references @ embedding) / np.maximum(norms, 1e-12)


@lru_cache(maxsize=4)
def _cached_backend(name: str, settings_json: str) -> FaceBackend:
    settings = IdentityBackendSettings.model_validate_json(settings_json)
    if name == "dlib":
        return DlibBackend(settings)
    if name == "insightface":
        return InsightFaceBackend(settings)
    raise IdentityError(f"unknown identity backend {name!r}: use {' or '.join(BACKENDS)}")


def load_backend(name: str, settings: IdentityBackendSettings) -> FaceBackend:
    """The backend ``name``, loaded once per process."""
    return _cached_backend(name, settings.model_dump_json())


# --------------------------------------------------------------------------- reference sets


@dataclass
class Calibration:
    threshold: float
    method: str  # 'pairs', 'default (reason)'
    n_references: int
    genuine: list[float] = field(default_factory=list)  # real-vs-real pair similarities
    impostor_max: float | None = None  # highest similarity to other characters' references
    impostor_q99: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(backend: FaceBackend, embeddings: np.ndarray, impostors: np.ndarray | None = None) -> Calibration:
    """Propose a threshold from real-vs-real pairs of the reference photos.

    The threshold sits ``calibration_margin`` below the low end of the genuine pairs (the minimum for fewer
    than ten pairs, else the 5th percentile), is raised above the other characters' references when there
    are any, and is clamped to the backend's accepted range.
    """
    facts = backend.facts
    n = len(embeddings)
    genuine = [
        float(backend.similarities(embeddings[i], embeddings[j : j + 1])[0])
        for i, j in itertools.combinations(range(n), 2)
    ]
    imp: list[float] = []
    if impostors is not None and len(impostors) and n:
        imp = [float(s) for e in embeddings for s in backend.similarities(e, impostors)]
    imp_max = max(imp) if imp else None
    imp_q99 = float(np.quantile(imp, 0.99)) if imp else None
    if not genuine:
        return Calibration(
            facts.default_threshold, "default (fewer than two reference photos)", n, [], imp_max, imp_q99
        )
    low = min(genuine) if len(genuine) < 10 else float(np.quantile(genuine, 0.05))
    proposal = low - facts.calibration_margin
    if imp_q99 is not None:
        proposal = max(proposal, imp_q99 + facts.calibration_margin / 2)
    lo, hi = facts.threshold_range
    return Calibration(round(min(max(proposal, lo), hi), 4), "pairs", n, sorted(genuine), imp_max, imp_q99)


@dataclass
class ReferenceSet:
    reference_set_id: str
    character: str
    backend: str
    image_ids: list[str]
    embeddings: np.ndarray  # (k, d)
    calibration: Calibration
    skipped: dict[str, str] = field(default_factory=dict)  # image id -> why it is not a reference

    @property
    def calibrated_threshold(self) -> float:
        return self.calibration.threshold


def reference_set_id(backend: FaceBackend, image_ids: Sequence[str]) -> str:
    """Id of the set built from these candidate photos: changes when the photos or the model change."""
    key = "\n".join([backend.name, backend.model_version, *sorted(image_ids)])
    return "ref-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def build_reference_set(
    backend: FaceBackend,
    character: str,
    images: Sequence[tuple[str, np.ndarray]],
    impostors: np.ndarray | None = None,
) -> ReferenceSet:
    """A reference set from ``(image_id, rgb)`` photos; photos without exactly one clear face are skipped."""
    ids, embs, skipped = [], [], {}
    min_px = backend.settings.min_face_px
    for image_id, rgb in images:
        faces = [f for f in backend.detect(rgb) if f.score >= backend.facts.confident_score]
        big = [f for f in faces if f.short_side >= min_px]
        if not big:
            skipped[image_id] = "no clear face" if not faces else f"face smaller than {min_px} px"
            continue
        if len(big) > 1:
            skipped[image_id] = f"{len(big)} faces: a reference photo must show only the character"
            continue
        ids.append(image_id)
        embs.append(backend.embed(rgb, big[0]))
    if not ids:
        raise IdentityError(
            f"no usable reference photo for {character!r}: every source photo was skipped "
            f"({'; '.join(f'{k[:12]}: {v}' for k, v in skipped.items()) or 'no source photos'})"
        )
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    ids = [ids[i] for i in order]
    matrix = np.stack([embs[i] for i in order]).astype(np.float32)
    return ReferenceSet(
        reference_set_id(backend, [image_id for image_id, _ in images]),
        character,
        backend.name,
        ids,
        matrix,
        calibrate(backend, matrix, impostors),
        skipped,
    )


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Score:
    """The identity outcome for one image; field names follow the ``identity_scores`` table."""

    verdict: str
    matched: bool | None = None
    similarity: float | None = None
    similarity_max: float | None = None
    similarity_mean: float | None = None
    threshold: float | None = None
    n_faces: int = 0
    face_box: list[int] | None = None
    det_score: float | None = None
    yaw: float | None = None
    embedding: list[float] | None = None

    def to_json(self, with_embedding: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_embedding:
            d.pop("embedding")
        return d


@dataclass(frozen=True)
class Judge:
    """Everything needed to score images against one reference set (picklable for worker processes)."""

    backend: str
    settings: IdentityBackendSettings
    references: np.ndarray
    threshold: float
    decide_by: str = "max"
    reference_ids: tuple[str, ...] = ()  # a reference image is compared with the others only

    def effective_threshold(self, facts: BackendFacts, yaw: float | None) -> float:
        if not self.settings.pose_relief or yaw is None:
            return self.threshold
        return self.threshold - facts.pose_relief * min(abs(yaw) / 45.0, 1.0)


def judge_image(backend: FaceBackend, judge: Judge, rgb: np.ndarray, image_id: str | None = None) -> Score:
    facts = backend.facts
    faces = backend.detect(rgb)
    if not faces:
        return Score("no_face")
    confident = [f for f in faces if f.score >= facts.confident_score]
    big = [f for f in confident if f.short_side >= backend.settings.min_face_px]
    if big:
        chosen = max(big, key=lambda f: f.area)
        special = "multi_face" if len(big) > 1 else None
    elif confident:
        chosen, special = max(confident, key=lambda f: f.area), "small_face"
    else:
        chosen, special = max(faces, key=lambda f: f.area), "low_confidence"
    embedding = backend.embed(rgb, chosen)
    refs = judge.references
    if image_id is not None and image_id in judge.reference_ids and len(refs) > 1:
        refs = np.delete(refs, judge.reference_ids.index(image_id), axis=0)
    sims = backend.similarities(embedding, refs)
    s_max, s_mean = float(sims.max()), float(sims.mean())
    decisive = s_max if judge.decide_by == "max" else s_mean
    yaw = estimate_yaw(chosen.kps)
    threshold = judge.effective_threshold(facts, yaw)
    matched = decisive >= threshold
    return Score(
        verdict=special or ("pass" if matched else "fail"),
        matched=matched,
        similarity=round(decisive, 6),
        similarity_max=round(s_max, 6),
        similarity_mean=round(s_mean, 6),
        threshold=round(threshold, 6),
        n_faces=len(confident),
        face_box=[round(v) for v in chosen.box],
        det_score=round(chosen.score, 4),
        yaw=None if yaw is None else round(yaw, 2),
        embedding=[float(x) for x in embedding],
    )


# --------------------------------------------------------------------------- batches

ImageSource = tuple[str, str]  # (key, path of an image file)


def load_rgb(path: str | Path, store_settings: StoreSettings | None = None) -> np.ndarray:
    """Decode a file as the store would (EXIF orientation, 8-bit RGB, alpha flattened)."""
    from flenwheel.store import normalise, read_file

    settings = store_settings or StoreSettings(max_side=16384, min_side=16)
    return np.asarray(normalise(read_file(Path(path)), settings, name=str(path)))


_WORKER: tuple[FaceBackend, Judge] | None = None


def _init_worker(judge: Judge) -> None:
    global _WORKER
    _WORKER = (load_backend(judge.backend, judge.settings), judge)


def _score_one(item: ImageSource) -> tuple[str, Score | str]:
    assert _WORKER is not None
    backend, judge = _WORKER
    key, path = item
    try:
        rgb = load_rgb(path)
    except Exception as e:
        return key, f"unreadable: {e}"
    return key, judge_image(backend, judge, rgb, image_id=key)


_POOL: tuple[str, ProcessPoolExecutor] | None = None


def _judge_key(judge: Judge, workers: int) -> str:
    h = hashlib.sha256(judge.references.tobytes())
    h.update(
        repr(
            (
                judge.backend,
                judge.settings.model_dump_json(),
                judge.threshold,
                judge.decide_by,
                judge.reference_ids,
                workers,
            )
        ).encode()
    )
    return h.hexdigest()


def _pool(judge: Judge, workers: int) -> ProcessPoolExecutor:
    """One pool of scoring processes per judge, kept for later batches (model loading costs seconds)."""
    global _POOL
    key = _judge_key(judge, workers)
    if _POOL is None or _POOL[0] != key:
        shutdown_workers()
        import multiprocessing as mp

        # spawn: DuckDB and model handles of this process must not leak into the workers.
        executor = ProcessPoolExecutor(
            workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(judge,)
        )
        _POOL = (key, executor)
    return _POOL[1]


def shutdown_workers() -> None:
    global _POOL
    if _POOL is not None:
        _POOL[1].shutdown(cancel_futures=True)
        _POOL = None


atexit.register(shutdown_workers)


def score_files(
    judge: Judge, items: Sequence[ImageSource], workers: int | None = None
) -> Iterator[tuple[str, Score | str]]:
    """Score image files, in worker processes when ``workers > 1``; yields ``(key, Score or error)`` in order."""
    workers = min(workers or judge.settings.workers, os.cpu_count() or 1)
    if workers <= 1 or len(items) <= 1:
        _init_worker(judge)
        for item in items:
            yield _score_one(item)
        return
    yield from _pool(judge, workers).map(_score_one, items, chunksize=1)


# --------------------------------------------------------------------------- catalog


def reference_set_for(
    ws: Workspace, catalog: Catalog, character: Character, backend_name: str | None = None
) -> ReferenceSet:
    """The character's current reference set: loaded when these photos already made one, else built and stored."""
    backend = load_backend(backend_name or character.identity.backend, ws.settings.identity)
    sources = catalog.source_images(character.name)
    if not sources:
        raise IdentityError(
            f"{character.name!r} has no source photos in the catalog: run `flenwheel ingest {character.name} PATH...`"
        )
    ref_id = reference_set_id(backend, [s["image_id"] for s in sources])
    row = catalog.reference_set_row(ref_id)
    if row is not None:
        cal = row["calibration"]
        return ReferenceSet(
            ref_id,
            character.name,
            backend.name,
            list(row["image_ids"]),
            np.asarray(row["embeddings"], dtype=np.float32),
            Calibration(**{k: v for k, v in cal.items() if k != "skipped"}),
            cal.get("skipped", {}),
        )
    impostors = catalog.other_reference_embeddings(character.name, backend.name)
    images = [(s["image_id"], load_rgb(ws.root / s["path"])) for s in sources]
    refset = build_reference_set(
        backend, character.name, images, np.asarray(impostors, dtype=np.float32) if impostors else None
    )
    catalog.save_reference_set(
        {
            "reference_set_id": refset.reference_set_id,
            "character": character.name,
            "backend": backend.name,
            "image_ids": refset.image_ids,
            "embeddings": refset.embeddings.tolist(),
            "threshold": refset.calibrated_threshold,
            "calibration": {**refset.calibration.to_json(), "skipped": refset.skipped},
        }
    )
    return refset


def judge_for(ws: Workspace, character: Character, refset: ReferenceSet) -> Judge:
    """A configured threshold wins over the calibrated one."""
    threshold = character.identity.threshold
    return Judge(
        backend=refset.backend,
        settings=ws.settings.identity,
        references=refset.embeddings,
        threshold=refset.calibrated_threshold if threshold is None else threshold,
        decide_by=character.identity.decide_by,
        reference_ids=tuple(refset.image_ids),
    )


def score_row(image_id: str, refset: ReferenceSet, result: Score | str) -> dict[str, Any]:
    """An ``identity_scores`` row; an unreadable stored file counts as ``no_face`` with the reason dropped."""
    score = result if isinstance(result, Score) else Score("no_face")
    return {
        "image_id": image_id,
        "backend": refset.backend,
        "reference_set_id": refset.reference_set_id,
        **asdict(score),
    }


def filter_images(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    image_ids: Sequence[str] | None = None,
    backend_name: str | None = None,
    rescore: bool = False,
    run_id: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Score the character's unscored catalog images (or just ``image_ids``); returns counts by verdict.

    Scores are written every ``identity.batch_size`` images, so an interrupted filter keeps its work.
    """
    refset = reference_set_for(ws, catalog, character, backend_name)
    judge = judge_for(ws, character, refset)
    todo = catalog.images_to_score(character.name, refset.backend, refset.reference_set_id, rescore)
    if image_ids is not None:
        wanted = set(image_ids)
        todo = [t for t in todo if t["image_id"] in wanted]
    counts: dict[str, int] = {}
    pending: list[dict[str, Any]] = []
    items = [(t["image_id"], str(ws.root / t["path"])) for t in todo]
    for done, (image_id, result) in enumerate(score_files(judge, items), start=1):
        row = score_row(image_id, refset, result)
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
        pending.append(row)
        if len(pending) >= ws.settings.identity.batch_size or done == len(items):
            catalog.add_identity_scores(pending, run_id)
            pending = []
        if on_progress:
            on_progress(done, len(items))
    return counts


def recalibrate(ws: Workspace, catalog: Catalog, character: Character, backend_name: str | None = None) -> ReferenceSet:
    """Calibrate the current reference set again (other characters may have added impostors) and store it."""
    refset = reference_set_for(ws, catalog, character, backend_name)
    backend = load_backend(refset.backend, ws.settings.identity)
    impostors = catalog.other_reference_embeddings(character.name, refset.backend)
    refset.calibration = calibrate(
        backend, refset.embeddings, np.asarray(impostors, dtype=np.float32) if impostors else None
    )
    catalog.update_calibration(
        refset.reference_set_id,
        refset.calibrated_threshold,
        {**refset.calibration.to_json(), "skipped": refset.skipped},
    )
    return refset
