"""Flywheel 1: enrich -> review -> freeze vN -> train LoRA vN -> generate -> review -> freeze vN+1 -> ...

The flow is resumable from the catalog alone. ``iterations`` is the number of iterations the character should
have: the ``iterations`` table says which are complete (they are skipped), and every step inside an iteration
is idempotent (edit and generation jobs keyed by their parameters, versions by manifest hash, LoRAs by their
training fingerprint). Running the flow again therefore adds nothing, and a run that stopped at a review gate
or was killed carries on where it was.

Per iteration N: dataset vN = the previous version + newly approved real and enriched images + the approved
synthetics of LoRA vN-1 (near-duplicates dropped, synthetic share capped) -> LoRA vN -> synthetic images ->
identity -> the synthetic review gate -> the iteration report (HTML, metrics, Prefect artifacts).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context
from pydantic import BaseModel, ConfigDict, Field

from flenwheel import versions
from flenwheel.catalog import AwaitingReview, Catalog, now
from flenwheel.config import Workspace
from flenwheel.flows.enrich import EnrichParams, chunks, enrich_work
from flenwheel.flows.lock import character_lock
from flenwheel.flows.review_gate import ReviewMode, run_gate
from flenwheel.tasks.runtime import catalog as open_catalog
from flenwheel.tasks.runtime import release_models
from flenwheel.tasks.work import generate_batch, make_report, score_images, train_lora


class FlywheelParams(BaseModel):
    """Parameters of a flywheel run: the form the Prefect UI shows and validates."""

    model_config = ConfigDict(extra="forbid")

    character: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", description="configs/characters/<name>")
    iterations: int = Field(2, ge=1, le=20, description="iterations the character should have (done ones are skipped)")
    profile: Literal["cpu-tiny", "gpu-24gb", "gpu-80gb"] | None = Field(None, description="default: configs")
    editor: Literal["augment", "qwen"] = "qwen"
    review: ReviewMode = "fiftyone"
    wait: bool = Field(False, description="a local run pauses at review gates instead of stopping")
    enrich_prompts: list[str] | None = Field(None, description="enrichment prompt ids; default: all")
    enrich_seeds: int = Field(2, ge=1, le=64)
    synthetic_prompts: list[str] | None = Field(None, description="synthetic prompt ids; default: all")
    synthetic_seeds: int = Field(2, ge=1, le=64, description="seeds 0..N-1 per synthetic prompt")
    train_steps: int | None = Field(None, ge=1, description="override the profile's training steps")
    max_synthetic_share: float = Field(0.5, ge=0.0, le=0.9, description="cap on synthetics in a version")
    max_hash_distance: int = Field(6, ge=0, le=32, description="perceptual-hash bits within which images are dupes")
    min_new_synthetics: int = Field(
        1, ge=0, description="stop before retraining when fewer new synthetics were admitted (0: always retrain)"
    )
    batch_size: int = Field(8, ge=1, le=1024, description="edit or generation jobs per task run")


def _artifact_key(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


class _Stopped(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def run_flywheel(ws: Workspace, params: FlywheelParams, run_id: str, holder: str) -> dict[str, Any]:
    """The flywheel's steps; returns a summary with ``status`` completed, awaiting_review or stopped."""
    catalog = open_catalog(ws)
    character = ws.character(params.character)
    summary: dict[str, Any] = {"character": character.name, "iterations": []}
    enrich = EnrichParams(
        character=character.name, editor=params.editor, profile=params.profile, prompts=params.enrich_prompts,
        seeds=params.enrich_seeds, review=params.review, wait=params.wait, batch_size=params.batch_size,
    )  # fmt: skip
    try:
        with character_lock(ws, character.name, holder):
            summary["enrichment"] = enrich_work(ws, enrich, run_id)
        _gate(ws, catalog, character.name, "enrich", params, run_id)
        done = {r["number"]: r for r in catalog.iterations(character.name)}
        for number in range(1, params.iterations + 1):
            if done.get(number, {}).get("status") == "completed":
                summary["iterations"].append({"number": number, "status": "already completed"})
                continue
            summary["iterations"].append(_iteration(ws, catalog, params, number, run_id, holder))
    except _Stopped as stop:
        return {**summary, "status": stop.status, "message": stop.message}
    return {**summary, "status": "completed"}


def _gate(ws: Workspace, catalog: Catalog, character: str, stage: str, params: FlywheelParams, run_id: str) -> None:
    try:
        run_gate(ws, catalog, character, stage, params.review, run_id, params.wait)
    except AwaitingReview as e:
        raise _Stopped("awaiting_review", str(e)) from None


def _iteration(
    ws: Workspace, catalog: Catalog, params: FlywheelParams, number: int, run_id: str, holder: str
) -> dict[str, Any]:
    character = ws.character(params.character)
    root, configs = str(ws.root), str(ws.configs_dir)
    rows = {r["number"]: r for r in catalog.iterations(character.name)}
    row = rows.get(number) or {}
    with character_lock(ws, character.name, holder):
        version = row.get("dataset_version")
        if version is None:
            previous = rows.get(number - 1)
            synthetic_from = previous["lora_id"] if previous else None
            members, selection = versions.next_version_members(
                ws, catalog, character, previous["dataset_version"] if previous else None, synthetic_from,
                params.max_synthetic_share, params.max_hash_distance,
            )  # fmt: skip
            if number > 1 and len(selection.added) < params.min_new_synthetics:
                raise _Stopped(
                    "stopped",
                    f"iteration {number}: only {len(selection.added)} new synthetic image(s) were admitted "
                    f"({selection.candidates} approved, {len(selection.near_duplicates)} near-duplicates, "
                    f"{len(selection.over_cap)} over the cap), fewer than min_new_synthetics="
                    f"{params.min_new_synthetics}; retraining on the same data would change nothing",
                )
            extra = None
            if number > 1:
                extra = {"iteration": number, "parent_version": previous["dataset_version"],
                         "synthetic_from": synthetic_from, "synthetic_admitted": len(selection.added)}  # fmt: skip
            frozen = versions.freeze(ws, catalog, character, run_id, select=lambda _: members, extra=extra)
            version = frozen.version_id
            catalog.update_iteration(character.name, number, run_id, dataset_version=version)
        trained = train_lora(root, configs, character.name, version, params.profile, params.train_steps, run_id)
        lora_id = str(trained["lora_id"])
        catalog.update_iteration(character.name, number, run_id, lora_id=lora_id)
        made = _generate(ws, catalog, params, lora_id, run_id)
    try:
        _gate(ws, catalog, character.name, "synthetic", params, run_id)
    except _Stopped:
        catalog.update_iteration(character.name, number, run_id, status="awaiting_review")
        raise
    with character_lock(ws, character.name, holder):
        report = make_report(root, configs, character.name, number, run_id)
        key = _artifact_key(f"{character.name}-iteration-{number}")
        create_table_artifact(
            report["table"], key=f"{key}-identity", description=f"identity by group, iteration {number}"
        )
        create_markdown_artifact(str(report["markdown"]), key=key, description=f"flywheel iteration {number}")
        catalog.update_iteration(character.name, number, run_id, status="completed", completed_at=now(),
                                 report_path=str(report["path"]))  # fmt: skip
    return {"number": number, "dataset_version": version, "lora_id": lora_id, "generated": made,
            "report": report["path"], "target_met": report["target_met"]}  # fmt: skip


def _generate(ws: Workspace, catalog: Catalog, params: FlywheelParams, lora_id: str, run_id: str) -> int:
    from flenwheel.generation import SyntheticGenerator, pending_generation, synthetic_prompts
    from flenwheel.models import ModelManager

    character = ws.character(params.character)
    prompts = synthetic_prompts(ws, params.synthetic_prompts)
    # job keys depend on the profile's settings and the LoRA, not on a loaded model
    planner = SyntheticGenerator(ws, ModelManager(ws, ws.profile(params.profile)), catalog, character, lora_id)
    jobs = pending_generation(catalog, character.name, planner, prompts, list(range(params.synthetic_seeds)))
    root, configs = str(ws.root), str(ws.configs_dir)
    made = 0
    try:
        for batch in chunks(jobs, params.batch_size):
            ids = generate_batch(root, configs, character.name, lora_id, params.profile,
                                 [(j.prompt.id, j.seed) for j in batch], run_id)  # fmt: skip
            score_images(root, configs, character.name, ids, run_id)
            made += len(ids)
    finally:
        release_models()
    return made


@flow(name="flywheel", log_prints=True)
def flywheel(params: FlywheelParams, root: str | None = None, configs: str | None = None) -> dict[str, Any]:
    """Run flywheel 1 for a character until it has ``iterations`` completed iterations."""
    ws = Workspace(root=root, configs=configs)
    catalog = open_catalog(ws)
    flow_run_id = str(get_run_context().flow_run.id)
    config = {"params": params.model_dump(), "root": str(ws.root)}
    with catalog.run("flow:flywheel", config, prefect_flow_run_id=flow_run_id) as run_id:
        result = run_flywheel(ws, params, run_id, holder=f"flow run {flow_run_id}")
        if result["status"] == "awaiting_review":
            catalog.mark_awaiting_review(run_id)
    for it in result["iterations"]:
        if "report" in it:
            print(f"iteration {it['number']}: {it['dataset_version']}, LoRA {it['lora_id']}, report {it['report']}")
    return {**result, "run_id": run_id}
