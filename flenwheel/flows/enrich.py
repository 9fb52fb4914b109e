"""Enrichment: every source photo x prompt x seed not yet done -> edit -> store -> identity -> review gate.

Work is planned from the catalog (an edit job is done when a derivation with its ``job_key`` exists), run
in batches of ``batch_size`` jobs per task, and recorded batch by batch; a run that is killed and started
again ends with the same rows as one that was never interrupted.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from prefect.context import get_run_context
from pydantic import BaseModel, ConfigDict, Field

from flenwheel.catalog import AwaitingReview
from flenwheel.config import Workspace
from flenwheel.editing import make_editor, pending_jobs
from flenwheel.flows.review_gate import ReviewMode, run_gate
from flenwheel.tasks.runtime import catalog as open_catalog
from flenwheel.tasks.runtime import release_models
from flenwheel.tasks.work import edit_batch, score_images


class EnrichParams(BaseModel):
    """Parameters of an enrichment run (a validated form in the Prefect UI)."""

    model_config = ConfigDict(extra="forbid")

    character: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    editor: Literal["augment", "qwen"] = "augment"
    profile: Literal["cpu-tiny", "gpu-24gb", "gpu-80gb"] | None = None
    prompts: list[str] | None = Field(None, description="prompt ids; default: the whole library")
    seeds: int = Field(2, ge=1, le=64, description="seeds 0..N-1 per source and prompt")
    review: ReviewMode = "fiftyone"
    wait: bool = Field(False, description="a local run pauses at the gate instead of exiting")
    batch_size: int = Field(16, ge=1, le=1024, description="edit jobs per task run")
    sources: list[str] | None = Field(None, description="only these source image ids (nightly: the new ones)")


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def enrich_work(ws: Workspace, params: EnrichParams, run_id: str) -> dict[str, Any]:
    """Edit, store and identity-score every pending job (no review): shared by the enrich, flywheel and
    nightly flows."""
    catalog = open_catalog(ws)
    root, configs = str(ws.root), str(ws.configs_dir)
    character = ws.character(params.character)
    score_images(root, configs, character.name, None, run_id)  # sources: reference set and face boxes
    library = ws.prompt_library(character)
    unknown = sorted(set(params.prompts or []) - set(library))
    if unknown:
        raise ValueError(f"unknown prompt id(s) {', '.join(unknown)}; known: {', '.join(sorted(library))}")
    prompts = [library[p] for p in params.prompts] if params.prompts else list(library.values())
    editor = make_editor(params.editor, ws, _fingerprint_manager(ws, params), catalog, character)
    jobs = pending_jobs(catalog, character.name, editor, prompts, list(range(params.seeds)), params.sources)
    made: list[str] = []
    try:
        for batch in chunks(jobs, params.batch_size):
            ids = edit_batch(
                root, configs, character.name, params.editor, params.profile,
                [(j.parent_id, j.prompt.id, j.seed) for j in batch], run_id,
            )  # fmt: skip
            score_images(root, configs, character.name, ids, run_id)
            made.extend(ids)
    finally:
        release_models()
    return {"character": character.name, "jobs": len(jobs), "images": len(made)}


def enrich_stage(ws: Workspace, params: EnrichParams, run_id: str) -> dict[str, Any]:
    """The enrichment work, then the review gate."""
    summary = enrich_work(ws, params, run_id)
    try:
        status = run_gate(ws, open_catalog(ws), params.character, "enrich", params.review, run_id, params.wait)
    except AwaitingReview as e:
        return {**summary, "status": "awaiting_review", "message": str(e)}
    return {**summary, "status": "completed", "gate": status.__dict__}


def _fingerprint_manager(ws: Workspace, params: EnrichParams) -> Any:
    """The qwen editor's job keys depend on the profile's settings, not on a loaded model."""
    if params.editor != "qwen":
        return None
    from flenwheel.models import ModelManager

    return ModelManager(ws, ws.profile(params.profile))


@flow(name="enrich", log_prints=True)
def enrich(params: EnrichParams, root: str | None = None, configs: str | None = None) -> dict[str, Any]:
    """Enrich a character's source photos and stop at the review gate."""
    ws = Workspace(root=root, configs=configs)
    catalog = open_catalog(ws)
    flow_run_id = str(get_run_context().flow_run.id)
    config = {"params": params.model_dump(), "root": str(ws.root)}
    with catalog.run("flow:enrich", config, prefect_flow_run_id=flow_run_id) as run_id:
        result = enrich_stage(ws, params, run_id)
        if result["status"] == "awaiting_review":
            catalog.mark_awaiting_review(run_id)
    return {**result, "run_id": run_id}


class NightlyParams(BaseModel):
    """The nightly run: new photos in each character's source folder (default ``<root>/inbox/<character>/``)."""

    model_config = ConfigDict(extra="forbid")

    characters: list[str] | None = Field(None, description="default: every character in configs/characters")
    editor: Literal["augment", "qwen"] = "qwen"
    profile: Literal["cpu-tiny", "gpu-24gb", "gpu-80gb"] | None = None
    prompts: list[str] | None = None
    seeds: int = Field(2, ge=1, le=64)
    review: ReviewMode = Field("fiftyone", description="auto decides now; fiftyone/cli leave candidates for people")
    batch_size: int = Field(16, ge=1, le=1024)


def nightly_work(ws: Workspace, params: NightlyParams, run_id: str, holder: str) -> list[dict[str, Any]]:
    """Ingest what is new in each source folder, enrich what is pending, and queue it for review.

    Never waits at a gate: the candidates wait in FiftyOne (or the CLI) for the next flywheel run's gate. A
    character whose lock is held by a running iteration is skipped with a note (the next night catches up).
    """
    from flenwheel import decisions
    from flenwheel.flows.lock import CharacterBusy, character_lock
    from flenwheel.ingest import ingest_paths
    from flenwheel.store import expand_paths
    from flenwheel.tasks.work import sync_review

    catalog = open_catalog(ws)
    results = []
    for name in params.characters or ws.character_names():
        character = ws.character(name)
        folder = ws.source_dir(character)
        files = expand_paths([folder]) if folder.is_dir() else []
        try:
            with character_lock(ws, name, holder):
                outcomes = ingest_paths(ws, catalog, name, files, run_id)
                if not catalog.path.exists() or not catalog.source_images(name):
                    results.append({"character": name, "skipped": f"no source photos (folder {folder})"})
                    continue
                enrich = EnrichParams(character=name, editor=params.editor, profile=params.profile,
                                      prompts=params.prompts, seeds=params.seeds, review=params.review,
                                      batch_size=params.batch_size)  # fmt: skip
                summary = enrich_work(ws, enrich, run_id)
                if params.review == "auto":
                    decisions.auto_review(catalog, name, "enrich", ws.settings.review.auto_margin, run_id)
                elif params.review == "fiftyone":
                    sync_review(str(ws.root), str(ws.configs_dir), name, run_id)
        except CharacterBusy as e:
            results.append({"character": name, "skipped": str(e)})
            continue
        results.append({
            **summary, "folder": str(folder), "new_photos": sum(o.status == "ingested" for o in outcomes),
            "rejected": [f"{o.path.name}: {o.reason}" for o in outcomes if o.status == "rejected"],
            "pending_review": decisions.status(catalog, name, "enrich").pending,
        })  # fmt: skip
    return results


@flow(name="nightly-enrich", log_prints=True)
def nightly_enrich(
    params: NightlyParams | None = None, root: str | None = None, configs: str | None = None
) -> list[dict[str, Any]]:
    """Enrich new source photos of every character (scheduled at 03:00 by ``flenwheel serve``)."""
    ws = Workspace(root=root, configs=configs)
    params = params or NightlyParams()
    flow_run_id = str(get_run_context().flow_run.id)
    with open_catalog(ws).run("flow:nightly-enrich", {"params": params.model_dump()}, flow_run_id) as run_id:
        results = nightly_work(ws, params, run_id, holder=f"nightly flow run {flow_run_id}")
    for r in results:
        print(r)
    return results
