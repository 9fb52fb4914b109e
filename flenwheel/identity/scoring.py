"""Verdicts: score images against a reference set, in worker processes, and record the scores.

A candidate is compared with every embedding of the character's reference set; the maximum and the mean are
both recorded and the character's ``identity.decide_by`` says which decides.

Verdicts, in order of precedence: ``no_face`` (nothing detected), ``low_confidence`` (only weak detections),
``small_face`` (confident faces, all below ``identity.min_face_px``), ``multi_face`` (more than one confident
face above the size limit: the largest is scored, ``matched`` says whether it matched), else ``pass`` /
``fail`` by the threshold. With ``identity.pose_relief`` the threshold is lowered for turned heads, by up to
the backend's ``pose_relief`` at 45 degrees of estimated yaw, because profiles score lower on both backends.
"""

from __future__ import annotations

import atexit
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character, IdentityBackendSettings
from flenwheel.core.processes import exit_when_orphaned
from flenwheel.identity.attributes import main_face
from flenwheel.identity.backends import BackendFacts, FaceBackend, estimate_yaw, load_backend
from flenwheel.identity.reference import ReferenceSet, reference_set_for
from flenwheel.store.objects import decode_rgb, load_rgb
from flenwheel.store.workspace import Workspace


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
    chosen, special = main_face(faces, facts.confident_score, backend.settings.min_face_px)
    if chosen is None:
        return Score("no_face")
    confident = [f for f in faces if f.score >= facts.confident_score]
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


ImageSource = tuple[str, str]  # (key, path of an image file)


_WORKER: tuple[FaceBackend, Judge] | None = None


def _init_worker(judge: Judge, parent: int | None = None) -> None:
    global _WORKER
    if parent is not None:
        # A killed command must not leave its scoring processes behind. The parent's pid comes from the parent:
        # one killed while this worker was still starting has already handed it over to another process.
        exit_when_orphaned(parent)
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
            workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(judge, os.getpid())
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


@dataclass
class ScoringPlan:
    """What a scoring run needs: the reference set, its judge (picklable: it travels to a cluster worker) and the
    images still to score (``image_id``, ``path``)."""

    refset: ReferenceSet
    judge: Judge
    todo: list[dict[str, Any]]


def plan_scoring(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    image_ids: Sequence[str] | None = None,
    backend_name: str | None = None,
    rescore: bool = False,
) -> ScoringPlan:
    """The character's reference set (built on first use) and its unscored catalog images (or just ``image_ids``)."""
    refset = reference_set_for(ws, catalog, character, backend_name)
    todo = catalog.images_to_score(character.name, refset.backend, refset.reference_set_id, rescore)
    if image_ids is not None:
        wanted = set(image_ids)
        todo = [t for t in todo if t["image_id"] in wanted]
    return ScoringPlan(refset, judge_for(ws, character, refset), todo)


def score_encoded(judge: Judge, items: Sequence[tuple[str, bytes]]) -> list[tuple[str, Score | str]]:
    """Score images sent as their file bytes, in this process (a cluster worker; the backend is loaded once per
    process), decoded exactly as :func:`score_files` decodes a stored file."""
    backend = load_backend(judge.backend, judge.settings)
    out: list[tuple[str, Score | str]] = []
    for key, data in items:
        try:
            rgb = decode_rgb(data, name=key)
        except Exception as e:
            out.append((key, f"unreadable: {e}"))
            continue
        out.append((key, judge_image(backend, judge, rgb, image_id=key)))
    return out


def record_scores(
    catalog: Catalog, plan: ScoringPlan, results: Sequence[tuple[str, Score | str]], run_id: str | None
) -> dict[str, int]:
    """Write the ``identity_scores`` rows of ``results`` (one write); returns counts by verdict."""
    rows = [score_row(image_id, plan.refset, result) for image_id, result in results]
    catalog.add_identity_scores(rows, run_id)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    return counts


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
    plan = plan_scoring(ws, catalog, character, image_ids, backend_name, rescore)
    counts: dict[str, int] = {}
    pending: list[tuple[str, Score | str]] = []
    items = [(t["image_id"], str(ws.root / t["path"])) for t in plan.todo]
    for done, result in enumerate(score_files(plan.judge, items), start=1):
        pending.append(result)
        if len(pending) >= ws.settings.identity.batch_size or done == len(items):
            for verdict, n in record_scores(catalog, plan, pending, run_id).items():
                counts[verdict] = counts.get(verdict, 0) + n
            pending = []
        if on_progress:
            on_progress(done, len(items))
    return counts
