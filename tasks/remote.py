"""The GPU-bound work of a flow in cluster mode: a *compute* task that runs on a Dask worker with everything it needs
travelling with it, and a *record* step in the flow's process that writes the store and the catalog exactly as the
local tasks do (:mod:`flenwheel.tasks.cluster` runs the batches; docs/scale.md).

* edit batch + checks: sends configs, character, jobs (prompt entries), source bytes + face boxes, the judge, LoRA
  files; gets back encoded images, derivations, attempts, checks, masks, identity scores; records with
  ``record_edit_batch`` (one transaction) and ``record_scores``;
* identity: sends the judge and image bytes; gets back scores; ``record_scores``;
* captions: sends configs, character, members' bytes + template captions; gets back caption rows; ``add_captions``
  (one write per batch);
* generation: sends configs, character, jobs, the character LoRA's file, the judge; gets back encoded images,
  derivations, identity scores; ``store_outputs`` (one transaction) and ``record_scores``.

A worker loads its models through the process's model manager (:mod:`flenwheel.models.runtime`), so it keeps the
last one across tasks under the same one-resident rule as a local run; it reads nothing from the data root.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NONE

from flenwheel.core.config import Character
from flenwheel.dataset.captions import caption_row, uncaptioned
from flenwheel.dataset.generation import GenerationJob, SyntheticGenerator, generate_outputs
from flenwheel.editing import MODEL_EDITORS, EditJob, make_editor
from flenwheel.editing.checks import checker_for
from flenwheel.editing.jobs import EditBatch, ParentImage, compute_edit_batch, parent_images, record_edit_batch
from flenwheel.identity import IdentityError, Judge, Score, ScoringPlan, plan_scoring, record_scores, score_encoded
from flenwheel.models import runtime
from flenwheel.models.critic import CriticError
from flenwheel.models.refs import ModelError
from flenwheel.store.objects import EncodedImage
from flenwheel.store.outputs import store_outputs
from flenwheel.store.remote import ConfigBundle, ShippedLoras, worker_workspace
from flenwheel.store.workspace import RunContext
from flenwheel.tasks import batches
from flenwheel.tasks.cluster import Batch, Cluster, WorkerFailed, WorkerReport

log = logging.getLogger(__name__)

T = TypeVar("T")
# What a worker cannot do that another may: load a model (no GPU, weights missing or broken, a VLM that will not load).
WORKER_FAULTS = (ModelError, IdentityError, CriticError)
Scores = list[tuple[str, Score | str]]


@dataclass(frozen=True)
class Remote:
    """What every compute task carries: the configs, the character (its editor LoRA resolved), the profile and the
    catalog LoRAs it applies."""

    bundle: ConfigBundle
    character: Character
    profile: str | None
    loras: ShippedLoras

    @classmethod
    def of(cls, ctx: RunContext, lora_ids: list[str] | None = None) -> Remote:
        ws, catalog, character = ctx.ws, ctx.catalog(), ctx.character_config()
        latest: dict[tuple[str, str], str] = {}
        wanted = list(lora_ids or [])
        if character.editor_lora:  # the qwen editor's own LoRA (flywheel 2), resolved here where the catalog is
            lora_id = character.editor_lora
            if lora_id == "latest":
                lora_id = catalog.latest_lora(character.name, "qwen_edit") or ""
                if lora_id:
                    latest[(character.name, "qwen_edit")] = lora_id
            wanted.append(lora_id)
        loras = ShippedLoras.collect(catalog, ws.root, [i for i in wanted if i], latest)
        return cls(ConfigBundle.of(ws), character, ctx.profile, loras)


def _on_worker(work: Callable[[], T], judge: Judge | None = None, images: list[EncodedImage] | None = None) -> Any:
    """Run ``work`` on this worker and report who did it; a model that will not load is a :class:`WorkerFailed`."""
    from distributed import get_worker

    worker = get_worker()
    started = time.perf_counter()
    try:
        value = work()
    except WORKER_FAULTS as e:
        raise WorkerFailed(worker.address, str(e), str(worker.name)) from None
    size = len(pickle.dumps(value, protocol=5))
    return WorkerReport(worker.address, str(worker.name), value, time.perf_counter() - started, bytes_out=size)


def _score_outputs(judge: Judge, outputs: list[tuple[EncodedImage, Any]]) -> Scores:
    """Identity of what a batch made, while its bytes are on the worker (keyed by the image id the store will use)."""
    return score_encoded(judge, [(hashlib.sha256(im.data).hexdigest(), im.data) for im, _ in outputs])


# --------------------------------------------------------------------------- compute tasks (on a worker)


@task(name="edit-compute", cache_policy=NONE)
def edit_compute(
    remote: Remote, editor: str, jobs: list[EditJob], parents: dict[str, ParentImage], judge: Judge
) -> WorkerReport[tuple[EditBatch, Scores]]:
    """Edit and check a batch on this worker; the identity of every output is scored here too."""

    def work() -> tuple[EditBatch, Scores]:
        ws = worker_workspace(remote.bundle)
        manager = runtime.model_manager(ws, remote.profile) if editor in MODEL_EDITORS else None
        ed = make_editor(editor, ws, manager, remote.loras, remote.character)
        checker = checker_for(ws, remote.profile, remote.character.identity.backend)
        batch = compute_edit_batch(ed, jobs, parents, checker)
        return batch, _score_outputs(judge, batch.outputs)

    return _on_worker(work)


@task(name="identity-compute", cache_policy=NONE)
def identity_compute(judge: Judge, items: list[tuple[str, bytes]]) -> WorkerReport[Scores]:
    """Identity scores of images sent as bytes."""
    return _on_worker(lambda: score_encoded(judge, items))


@task(name="caption-compute", cache_policy=NONE)
def caption_compute(remote: Remote, members: list[tuple[dict[str, Any], EncodedImage]]) -> WorkerReport[list[dict]]:
    """Caption rows of dataset members sent as bytes, by the process's VLM (loaded once, kept)."""

    def work() -> list[dict]:
        ws = worker_workspace(remote.bundle)
        model = runtime.vlm(ws, remote.profile, ws.settings.captions.model or "")
        settings = ws.settings.captions
        return [caption_row(model, image.decode(), m, remote.character, settings) for m, image in members]

    return _on_worker(work)


@task(name="generate-compute", cache_policy=NONE)
def generate_compute(
    remote: Remote, lora_id: str, jobs: list[GenerationJob], judge: Judge
) -> WorkerReport[tuple[list, Scores]]:
    """Generate a batch with the character LoRA (its file travels with the task) and score the outputs."""

    def work() -> tuple[list, Scores]:
        ws = worker_workspace(remote.bundle)
        manager = runtime.model_manager(ws, remote.profile)
        outputs = generate_outputs(SyntheticGenerator(ws, manager, remote.loras, remote.character, lora_id), jobs)  # type: ignore[arg-type]
        return outputs, _score_outputs(judge, outputs)

    return _on_worker(work)


# --------------------------------------------------------------------------- in the flow: ship, then record


def _record_new_scores(ctx: RunContext, plan: ScoringPlan, scores: Scores) -> None:
    """Record the scores of images that have none yet (as the local identity task scores only unscored images)."""
    catalog = ctx.catalog()
    todo = {
        t["image_id"]
        for t in catalog.images_to_score(ctx.character, plan.refset.backend, plan.refset.reference_set_id, False)
    }
    fresh = [(k, s) for k, s in scores if k in todo]
    if fresh:
        record_scores(catalog, plan, fresh, ctx.run_id)


def edit_on_cluster(cluster: Cluster, ctx: RunContext, editor: str, jobs: list[EditJob], size: int) -> list[str]:
    """The edit jobs of one editor in batches on the cluster; returns the image ids recorded (as ``edit_batch``)."""
    ws, catalog = ctx.ws, ctx.catalog()
    plan = plan_scoring(ws, catalog, ctx.character_config(), image_ids=[])
    remote = Remote.of(ctx)
    parts = batches(jobs, size)
    work = []
    for i, part in enumerate(parts, start=1):
        parents = parent_images(ws, catalog, part)
        params = {"remote": remote, "editor": editor, "jobs": part, "parents": parents, "judge": plan.judge}
        sent = sum(len(p.image.data) for p in parents.values())
        work.append(Batch(params, f"{editor} edit batch {i}/{len(parts)} ({len(part)} jobs)", f"{editor}", sent))
    made: list[str] = []

    def record(batch: Batch, value: tuple[EditBatch, Scores]) -> None:
        edits, scores = value
        made.extend(record_edit_batch(ws, catalog, ctx.character, edits, ctx.run_id))
        _record_new_scores(ctx, plan, scores)

    cluster.run(edit_compute, work, record)
    log.info(f"{editor} editor made {len(made)} image(s) of {ctx.character} on the cluster")
    return made


def score_on_cluster(cluster: Cluster, ctx: RunContext, image_ids: list[str] | None) -> dict[str, int]:
    """Identity-score the character's unscored images (only ``image_ids`` when given) on the cluster."""
    ws, catalog = ctx.ws, ctx.catalog()
    plan = plan_scoring(ws, catalog, ctx.character_config(), image_ids)
    counts: dict[str, int] = {}
    parts = batches(plan.todo, ws.settings.identity.batch_size)
    work = []
    for i, part in enumerate(parts, start=1):
        items = [(t["image_id"], (ws.root / t["path"]).read_bytes()) for t in part]
        label = f"identity batch {i}/{len(parts)} ({len(part)} images)"
        work.append(Batch({"judge": plan.judge, "items": items}, label, "identity", sum(len(b) for _, b in items)))

    def record(batch: Batch, scores: Scores) -> None:
        for verdict, n in record_scores(catalog, plan, scores, ctx.run_id).items():
            counts[verdict] = counts.get(verdict, 0) + n

    cluster.run(identity_compute, work, record)
    return counts


def caption_on_cluster(cluster: Cluster, ctx: RunContext, redo: bool = False, size: int = 16) -> int:
    """Captions of the members without one, written by the workers' VLM; one catalog write per batch."""
    ws, catalog, character = ctx.ws, ctx.catalog(), ctx.character_config()
    todo = uncaptioned(catalog, character, ws, redo)
    if not todo or ws.settings.captions.model is None:
        return 0
    remote = Remote.of(ctx)
    parts = batches(todo, size)
    work = []
    for i, part in enumerate(parts, start=1):
        members = [({"image_id": m["image_id"], "template": m["template"]}, EncodedImage.read(ws.root / m["path"]))
                   for m in part]  # fmt: skip
        sent = sum(len(im.data) for _, im in members)
        work.append(Batch({"remote": remote, "members": members}, f"caption batch {i}/{len(parts)}", "vlm", sent))
    written = 0

    def record(batch: Batch, rows: list[dict]) -> None:
        nonlocal written
        written += catalog.add_captions(rows, ctx.run_id)

    cluster.run(caption_compute, work, record)
    log.info(f"captions of {character.name}: {written} written for {len(todo)} member(s) on the cluster")
    return written


def generate_on_cluster(
    cluster: Cluster, ctx: RunContext, lora_id: str, jobs: list[GenerationJob], size: int
) -> list[str]:
    """Synthetic generation with ``lora_id`` in batches on the cluster; returns the image ids recorded."""
    ws, catalog = ctx.ws, ctx.catalog()
    plan = plan_scoring(ws, catalog, ctx.character_config(), image_ids=[])
    remote = Remote.of(ctx, [lora_id])
    parts = batches(jobs, size)
    sent = sum(len(b) for b in remote.loras.files.values())
    work = [
        Batch({"remote": remote, "lora_id": lora_id, "jobs": part, "judge": plan.judge},
              f"generation batch {i}/{len(parts)} ({len(part)} jobs)", f"flux:{lora_id}", sent)
        for i, part in enumerate(parts, start=1)
    ]  # fmt: skip
    made: list[str] = []

    def record(batch: Batch, value: tuple[list, Scores]) -> None:
        outputs, scores = value
        made.extend(store_outputs(ws, catalog, ctx.character, "generate", outputs, ctx.run_id))
        _record_new_scores(ctx, plan, scores)

    cluster.run(generate_compute, work, record)
    log.info(f"generated {len(made)} synthetic image(s) of {ctx.character} with LoRA {lora_id} on the cluster")
    return made
