"""Edit jobs and the editor interface: what makes each variant reproducible, and how a batch is carried out.

An :class:`EditJob` is (source image, prompt entry, seed). Its ``job_key`` hashes everything that determines
the output (editor, model ref, prompt, seed, steps, guidance, LoRAs, sizes), so a job is done exactly when a
derivation with that key exists: re-running an enrichment does nothing new, and changing a setting makes new
jobs instead of silently reusing old images.

With an :class:`~flenwheel.editing.checks.EditChecker`, every output is verified and a failed edit is retried
(:func:`retry_jobs`); all attempts are images with lineage, and only the chosen one is a review candidate.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from flenwheel.catalog import Catalog, DerivationRecord
from flenwheel.core.config import PromptEntry, VerifySettings
from flenwheel.core.errors import FlenwheelError
from flenwheel.editing.checks import AttemptCheck, EditChecker, StoredMask, store_mask, verification_rows
from flenwheel.store.objects import EncodedImage
from flenwheel.store.outputs import store_outputs
from flenwheel.store.workspace import Workspace

Box = tuple[int, int, int, int]
RETRY_SEED_STRIDE = 1000  # attempt k uses seed + k * stride: clear of the seeds 0..N-1 other jobs use


class EditError(FlenwheelError):
    """An edit cannot run as asked."""


@dataclass(frozen=True)
class EditJob:
    parent_id: str
    prompt: PromptEntry
    seed: int


@dataclass
class EditResult:
    """An edited image and the derivation fields that reproduce it."""

    image: Image.Image
    op: str
    model_ref: str
    prompt: str
    prompt_id: str
    seed: int
    loras: list[dict[str, Any]] = field(default_factory=list)
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None
    params: dict[str, Any] = field(default_factory=dict)


def job_key(editor_fingerprint: dict[str, Any], job: EditJob) -> str:
    payload = {
        "editor": editor_fingerprint,
        "parent": job.parent_id,
        # what an edit is aimed at is checked, never sent: it leaves the job (and the keys of earlier jobs) as it was
        "prompt": job.prompt.model_dump(mode="json", exclude={"adds"}),
        "seed": job.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class Editor(ABC):
    name: str
    op: str

    @abstractmethod
    def fingerprint(self, prompt: PromptEntry) -> dict[str, Any]:
        """Everything about this editor's settings that changes its output for ``prompt``."""

    @abstractmethod
    def supports(self, prompt: PromptEntry) -> bool:
        """Whether this editor can carry out ``prompt``."""

    @abstractmethod
    def edit(self, image: Image.Image, job: EditJob, face_box: Box | None) -> EditResult:
        """Edit ``image`` (RGB) as ``job`` says; ``face_box`` is the parent's face when known."""

    def key(self, job: EditJob) -> str:
        return job_key(self.fingerprint(job.prompt), job)

    def close(self) -> None:  # noqa: B027 - editors without resources need nothing
        """Free models (the Qwen editor releases its pipeline)."""


def pending_jobs(
    catalog: Catalog,
    character: str,
    editor: Editor,
    prompts: Sequence[PromptEntry],
    seeds: Sequence[int],
    sources: Sequence[str] | None = None,
) -> list[EditJob]:
    """Jobs (source x prompt x seed) that have no derivation yet, in a stable order."""
    parents = sources if sources is not None else [r["image_id"] for r in catalog.source_images(character)]
    usable = [p for p in prompts if editor.supports(p)]
    jobs = [EditJob(parent, prompt, seed) for parent in sorted(parents) for prompt in usable for seed in seeds]
    if not jobs:
        return []
    done = catalog.done_job_keys(character, editor.op)
    return [j for j in jobs if editor.key(j) not in done]


def retry_jobs(job: EditJob, settings: VerifySettings) -> list[EditJob]:
    """The attempts after ``job``: ``seed_retries`` next seeds, then the rest at a lower strength as well (where
    the prompt has a strength; without one the remaining attempts change only the seed)."""
    out = []
    for k in range(1, settings.retries + 1):
        prompt = job.prompt
        weaker = k - settings.seed_retries
        if weaker > 0 and prompt.strength is not None:
            prompt = prompt.model_copy(
                update={"strength": round(prompt.strength * settings.strength_factor**weaker, 4)}
            )
        out.append(EditJob(job.parent_id, prompt, job.seed + k * RETRY_SEED_STRIDE))
    return out


@dataclass
class Attempt:
    """One output of a batch, in the order the outputs are stored."""

    job: EditJob  # the job as asked (attempt 0)
    key: str  # its job key
    attempt: int
    run: EditJob  # what this attempt ran
    check: AttemptCheck | None
    chosen: bool = False


@dataclass(frozen=True)
class ParentImage:
    """A source image as an edit needs it: its stored bytes and its face box (travels to a cluster worker)."""

    image: EncodedImage
    face_box: Box | None


@dataclass
class EditBatch:
    """What a batch of edit jobs made, before anything is stored: each attempt's encoded image and derivation, how it
    was checked, and the masks it was checked against. Plain data, so a cluster worker computes it
    (:func:`compute_edit_batch`) and the flow records it (:func:`record_edit_batch`)."""

    origin: str  # images.origin: edit | augment
    outputs: list[tuple[EncodedImage, DerivationRecord]]
    attempts: list[Attempt]
    masks: list[StoredMask]
    checked: bool  # every attempt went through a checker


def parent_images(ws: Workspace, catalog: Catalog, jobs: Sequence[EditJob]) -> dict[str, ParentImage]:
    """The stored bytes and face box of each source the jobs edit; an unknown source is an :class:`EditError`."""
    parents = catalog.images_with_face_box([j.parent_id for j in jobs])
    missing = sorted({j.parent_id for j in jobs} - set(parents))
    if missing:
        raise EditError(f"source image {missing[0][:12]} is not in the catalog")
    return {
        pid: ParentImage(EncodedImage.read(ws.root / p["path"]), tuple(p["face_box"]) if p["face_box"] else None)
        for pid, p in parents.items()
    }


def run_edit_batch(
    ws: Workspace,
    catalog: Catalog,
    character: str,
    editor: Editor,
    jobs: Sequence[EditJob],
    run_id: str | None,
    checker: EditChecker | None = None,
) -> list[str]:
    """Carry out ``jobs``, store the images and record images + derivations in one transaction.

    With ``checker`` each output is verified; a failed one is retried (:func:`retry_jobs`) until an attempt
    passes or the budget is spent. Every attempt is stored with its derivation (attempt ``k > 0`` under the key
    ``<job key>:retry<k>``), its checks, its mask and an ``edit_attempts`` row; the first passing attempt, or
    the least bad one when none passes, is the job's review candidate. All of it is one transaction.
    Returns the image ids made (in order, attempts included). Files of a batch whose catalog write fails are
    removed again. In cluster mode a worker runs :func:`compute_edit_batch` and the flow :func:`record_edit_batch`:
    the same two halves.
    """
    if not jobs:
        return []
    try:
        batch = compute_edit_batch(editor, jobs, parent_images(ws, catalog, jobs), checker)
        return record_edit_batch(ws, catalog, character, batch, run_id)
    except BaseException:
        for path in checker.new_files() if checker else []:
            path.unlink(missing_ok=True)
        raise


def compute_edit_batch(
    editor: Editor, jobs: Sequence[EditJob], parents: Mapping[str, ParentImage], checker: EditChecker | None = None
) -> EditBatch:
    """Edit and check ``jobs`` (retries included) without touching the store or the catalog."""
    decoded: dict[str, Image.Image] = {}  # a batch usually holds several jobs per source: decode each once
    batch = EditBatch("edit" if editor.op == "edit" else "augment", [], [], [], checker is not None)
    for job in jobs:
        parent = parents.get(job.parent_id)
        if parent is None:
            raise EditError(f"source image {job.parent_id[:12]} is not in the catalog")
        if job.parent_id not in decoded:
            decoded[job.parent_id] = parent.image.decode()
        original, box = decoded[job.parent_id], parent.face_box
        key = editor.key(job)
        tries = [job, *retry_jobs(job, checker.settings)] if checker else [job]
        mine: list[Attempt] = []
        seen: set[bytes] = set()
        for k, run in enumerate(tries):
            result = editor.edit(original, run, box)
            pixels = result.image.tobytes()
            if pixels in seen:  # the editor ignored what this retry changed: nothing new to store or check
                continue
            seen.add(pixels)
            check = checker.check(job.parent_id, original, result.image, job.prompt, box) if checker else None
            mine.append(Attempt(job, key, k, run, check))
            params = {**result.params, "category": job.prompt.category, "editor": editor.name}
            if checker:
                params |= {"attempt": k, "verified": check.passed if check else None}
            batch.outputs.append((EncodedImage.of(result.image), _derivation(result, job, key, k, params)))
            if check is None or check.passed:
                break
        best = next((a for a in mine if a.check is None or a.check.passed), None)
        (best or min(mine, key=lambda a: a.check.badness if a.check else (0, 0.0))).chosen = True
        batch.attempts.extend(mine)
    batch.masks = list(checker.masks.values()) if checker else []
    return batch


def _derivation(result: EditResult, job: EditJob, key: str, attempt: int, params: dict[str, Any]) -> DerivationRecord:
    return DerivationRecord(
        child_id="",
        parent_id=job.parent_id,
        op=result.op,
        model_ref=result.model_ref,
        loras=result.loras,
        prompt=result.prompt,
        prompt_id=result.prompt_id,
        negative_prompt=result.negative_prompt,
        seed=result.seed,
        steps=result.steps,
        guidance=result.guidance,
        strength=result.strength,
        params=params,
        job_key=key if attempt == 0 else f"{key}:retry{attempt}",
    )


def record_edit_batch(
    ws: Workspace, catalog: Catalog, character: str, batch: EditBatch, run_id: str | None
) -> list[str]:
    """Store a computed batch's images and masks and record images, derivations and checks in one transaction;
    returns the image ids in output order. Files this call stored are removed again if the write fails."""
    if not batch.outputs:
        return []
    masks = [store_mask(ws.root, m.image_id, m.category, m.mask) for m in batch.masks]  # a worker's are new here

    def record(con: Any, image_ids: Sequence[str]) -> None:
        if batch.checked:
            catalog.record_checks(con, _check_rows(batch, image_ids, character, run_id))

    try:
        return store_outputs(ws, catalog, character, batch.origin, batch.outputs, run_id, record)
    except BaseException:
        for m in masks:
            if m.created:
                (ws.root / m.path).unlink(missing_ok=True)
        raise


def _check_rows(
    batch: EditBatch, image_ids: Sequence[str], character: str, run_id: str | None
) -> dict[str, list[dict[str, Any]]]:
    """Rows of ``masks``, ``verifications`` and ``edit_attempts`` for a batch's attempts and stored ids."""
    rows: dict[str, list[dict[str, Any]]] = {
        "masks": [m.row(run_id) for m in batch.masks],
        "verifications": [],
        "edit_attempts": [],
    }
    for a, image_id in zip(batch.attempts, image_ids, strict=True):
        assert a.check is not None
        rows["verifications"] += verification_rows(a.check, image_id, a.job.prompt, run_id)
        rows["edit_attempts"].append(
            {
                "job_key": a.key,
                "attempt": a.attempt,
                "image_id": image_id,
                "character": character,
                "prompt_id": a.job.prompt.id,
                "category": a.job.prompt.category,
                "seed": a.run.seed,
                "strength": a.run.prompt.strength,
                "passed": a.check.passed,
                "chosen": a.chosen,
                "failures": a.check.failures,
                "run_id": run_id,
            }
        )
    return rows
