"""Reference sets: the character's photos that define the identity, and the threshold calibrated from them."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character
from flenwheel.identity.backends import FaceBackend, IdentityError, load_backend
from flenwheel.store.objects import load_rgb
from flenwheel.store.workspace import Workspace


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
