"""Edit jobs and the editor interface: what makes each variant reproducible, and how a batch is carried out.

An :class:`EditJob` is (source image, prompt entry, seed). Its ``job_key`` hashes everything that determines
the output (editor, model ref, prompt, seed, steps, guidance, LoRAs, sizes), so a job is done exactly when a
derivation with that key exists: re-running an enrichment does nothing new, and changing a setting makes new
jobs instead of silently reusing old images.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from flenwheel.catalog import Catalog, DerivationRecord
from flenwheel.config import PromptEntry
from flenwheel.errors import FlenwheelError
from flenwheel.outputs import store_outputs
from flenwheel.store import open_rgb
from flenwheel.workspace import Workspace

Box = tuple[int, int, int, int]


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
        "prompt": job.prompt.model_dump(mode="json"),
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


def run_edit_batch(
    ws: Workspace, catalog: Catalog, character: str, editor: Editor, jobs: Sequence[EditJob], run_id: str | None
) -> list[str]:
    """Carry out ``jobs``, store the images and record images + derivations in one transaction.

    Returns the image ids made (in job order). Files of a batch whose catalog write fails are removed again.
    """
    if not jobs:
        return []
    parents = catalog.images_with_face_box([j.parent_id for j in jobs])
    decoded: dict[str, Image.Image] = {}  # a batch usually holds several jobs per source: decode each once

    def outputs() -> Iterator[tuple[Image.Image, DerivationRecord]]:
        for job in jobs:
            parent = parents.get(job.parent_id)
            if parent is None:
                raise EditError(f"source image {job.parent_id[:12]} is not in the catalog")
            if job.parent_id not in decoded:
                decoded[job.parent_id] = open_rgb(ws.root / parent["path"])
            box = tuple(parent["face_box"]) if parent["face_box"] else None
            result = editor.edit(decoded[job.parent_id], job, box)  # type: ignore[arg-type]
            yield (
                result.image,
                DerivationRecord(
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
                    params={**result.params, "category": job.prompt.category, "editor": editor.name},
                    job_key=editor.key(job),
                ),
            )

    return store_outputs(ws, catalog, character, "edit" if editor.op == "edit" else "augment", outputs(), run_id)
