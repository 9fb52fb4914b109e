"""Flywheel 1: enrich (aimed at the set's coverage gaps) -> review -> caption + freeze vN -> train LoRA vN -> generate
-> review -> vN+1 -> ...

The flow is resumable from the catalog alone. ``iterations`` is the number of iterations the character should
have: the ``iterations`` table says which are complete (they are skipped), and every step inside an iteration
is idempotent (edit and generation jobs keyed by their parameters, versions by manifest hash, LoRAs by their
training fingerprint). Running the flow again therefore adds nothing, and a run that stopped at a review gate
or was killed carries on where it was. What goes into each version and when to stop is decided by the engine
(:mod:`flenwheel.dataset.iteration`); this module only puts the steps in order.
"""

from __future__ import annotations

import logging
import re

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context
from pydantic import BaseModel, ConfigDict, Field

from flenwheel.catalog import now
from flenwheel.core.errors import AwaitingReview
from flenwheel.core.types import CharacterName, EditorChoice, ProfileName, PromptId, ReviewMode
from flenwheel.dataset.generation import plan_generation
from flenwheel.dataset.iteration import FlywheelResult, FlywheelStopped, IterationOutcome, IterationPolicy
from flenwheel.dataset.iteration import freeze_iteration_version as freeze_version
from flenwheel.flows.enrich import ClusterAddress, EnrichParams, enrich_work, score
from flenwheel.flows.gate import run_gate
from flenwheel.flows.setup import configure
from flenwheel.models import runtime
from flenwheel.report.format import format_rows
from flenwheel.store.locks import CharacterBusy, character_lock
from flenwheel.store.workspace import RunContext, Workspace
from flenwheel.tasks import batches
from flenwheel.tasks.cluster import Cluster, cluster_for
from flenwheel.tasks.enrich import assess
from flenwheel.tasks.generate import check_copies, generate_batch, make_report
from flenwheel.tasks.remote import caption_on_cluster, generate_on_cluster
from flenwheel.tasks.training import caption_dataset, train_lora

log = logging.getLogger("flenwheel.flows.flywheel")


class FlywheelParams(BaseModel):
    """Parameters of a flywheel run: the form the Prefect UI shows and validates."""

    model_config = ConfigDict(extra="forbid")

    character: CharacterName
    iterations: int = Field(2, ge=1, le=20, description="iterations the character should have (done ones are skipped)")
    profile: ProfileName | None = Field(None, description="default: configs/flenwheel.yaml")
    editor: EditorChoice = Field(
        "configured",
        description="configured: each prompt category's editor from the "
        "character's config (qwen unless it says otherwise); else one editor for all",
    )
    review: ReviewMode = "fiftyone"
    wait: bool = Field(False, description="a local run pauses at review gates instead of stopping")
    enrich_prompts: list[PromptId] | None = Field(None, description="enrichment prompt ids; default: all")
    enrich_seeds: int = Field(2, ge=1, le=64)
    fill_gaps: bool = Field(
        True, description="enrich only the sources x prompts that fill the set's thinnest coverage bins"
    )
    fill_budget: int | None = Field(
        None, ge=1, description="edit jobs per enrichment at most (default: coverage.budget)"
    )
    synthetic_prompts: list[PromptId] | None = Field(None, description="synthetic prompt ids; default: all")
    synthetic_seeds: int = Field(2, ge=1, le=64, description="seeds 0..N-1 per synthetic prompt")
    train_steps: int | None = Field(None, ge=1, description="override the profile's training steps")
    max_synthetic_share: float = Field(0.5, ge=0.0, le=0.9, description="cap on synthetics in a version")
    max_hash_distance: int = Field(6, ge=0, le=32, description="perceptual-hash bits within which images are dupes")
    min_new_synthetics: int = Field(
        1, ge=0, description="stop before retraining when fewer new synthetics were admitted (0: always retrain)"
    )
    batch_size: int = Field(8, ge=1, le=1024, description="edit or generation jobs per task run")
    cluster: ClusterAddress = None

    def policy(self) -> IterationPolicy:
        return IterationPolicy(self.max_synthetic_share, self.max_hash_distance, self.min_new_synthetics)


def artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def run_flywheel(ws: Workspace, params: FlywheelParams, run_id: str, holder: str) -> FlywheelResult:
    """The flywheel's steps, in order; the result's status is completed, awaiting_review or stopped."""
    ctx = RunContext.of(ws, params.character, params.profile, run_id)
    catalog = ctx.catalog()
    character = ctx.character_config()
    result = FlywheelResult(character.name)
    enrich = EnrichParams(
        character=character.name,
        editor=params.editor,
        profile=params.profile,
        prompts=params.enrich_prompts,
        seeds=params.enrich_seeds,
        review=params.review,
        wait=params.wait,
        batch_size=params.batch_size,
        fill_gaps=params.fill_gaps,
        budget=params.fill_budget,
    )
    try:
        with cluster_for(ws.settings.cluster, params.cluster) as cluster:
            with character_lock(ws, character.name, holder):
                result.enrichment = enrich_work(ctx, enrich, cluster)
            run_gate(ctx, "enrich", params.review, params.wait)
            done = {r["number"]: r for r in catalog.iterations(character.name)}
            for number in range(1, params.iterations + 1):
                if done.get(number, {}).get("status") == "completed":
                    result.iterations.append(IterationOutcome(number, "already completed"))
                    continue
                result.iterations.append(_iteration(ctx, params, number, holder, cluster))
    except AwaitingReview as e:
        result.status, result.message = "awaiting_review", str(e)
    except FlywheelStopped as e:
        result.status, result.message = "stopped", str(e)
    except CharacterBusy as e:  # not a failure of this run: another one is working on the character
        result.status, result.message = "busy", str(e)
    if result.message:
        log.info(f"{result.status}: {result.message}")
    return result


def _iteration(
    ctx: RunContext, params: FlywheelParams, number: int, holder: str, cluster: Cluster | None
) -> IterationOutcome:
    ws, catalog, run_id = ctx.ws, ctx.catalog(), ctx.run_id
    character, policy = ctx.character_config(), params.policy()
    with character_lock(ws, character.name, holder):
        caption_dataset(ctx) if cluster is None else caption_on_cluster(cluster, ctx)
        version = freeze_version(ws, catalog, character, number, policy, run_id)
        log.info(f"iteration {number} of {character.name}: dataset version {version}")
        lora = train_lora(ctx, version, params.train_steps)
        catalog.update_iteration(character.name, number, run_id, lora_id=lora.lora_id)
        made = _generate(ctx, params, lora.lora_id, cluster)
    try:
        run_gate(ctx, "synthetic", params.review, params.wait)
    except AwaitingReview:
        catalog.update_iteration(character.name, number, run_id, status="awaiting_review")
        raise
    with character_lock(ws, character.name, holder):
        report = make_report(ctx, number)
        key = artifact_key(f"{character.name}-iteration-{number}")
        create_table_artifact(
            format_rows(report.table), key=f"{key}-identity", description=f"identity by group, iteration {number}"
        )
        create_markdown_artifact(report.markdown, key=key, description=f"flywheel iteration {number}")
        catalog.update_iteration(
            character.name,
            number,
            run_id,
            status="completed",
            completed_at=now(),
            report_path=str(report.path.relative_to(ws.root)),
        )
    return IterationOutcome(number, "completed", version, lora.lora_id, made, str(report.path), report.target_met)


def _generate(ctx: RunContext, params: FlywheelParams, lora_id: str, cluster: Cluster | None) -> int:
    character = ctx.character_config()
    jobs = plan_generation(
        ctx.ws, ctx.catalog(), character, lora_id, params.profile, params.synthetic_prompts, params.synthetic_seeds
    )
    log.info(f"synthetic generation with {lora_id}: {len(jobs)} job(s) to do")
    if cluster is not None:
        ids = generate_on_cluster(cluster, ctx, lora_id, jobs, params.batch_size)
        # here: it compares with the training version in the store; adherence needs the critic, a GPU model
        check_copies(ctx, lora_id, ids, adherence=False)
        assess(ctx, ids)
        return len(ids)
    made = 0
    try:
        for batch in batches(jobs, params.batch_size):
            ids = generate_batch(ctx, lora_id, [(j.prompt.id, j.seed) for j in batch])
            score(ctx, ids, None)
            check_copies(ctx, lora_id, ids)
            assess(ctx, ids)
            made += len(ids)
    finally:
        runtime.release_models()
    return made


@flow(name="flywheel", log_prints=True)
def flywheel(params: FlywheelParams, root: str | None = None, configs: str | None = None) -> FlywheelResult:
    """Run flywheel 1 for a character until it has ``iterations`` completed iterations."""
    configure()
    ws = Workspace(root=root, configs=configs)
    catalog = ws.catalog()
    flow_run_id = str(get_run_context().flow_run.id)
    config = {"params": params.model_dump(), "root": str(ws.root)}
    with catalog.run("flow:flywheel", config, prefect_flow_run_id=flow_run_id) as run_id:
        result = run_flywheel(ws, params, run_id, holder=f"flow run {flow_run_id}")
        if result.status == "awaiting_review":
            catalog.mark_awaiting_review(run_id)
    result.run_id = run_id
    for it in result.iterations:
        if it.report:
            log.info(f"iteration {it.number}: {it.dataset_version}, LoRA {it.lora_id}, report {it.report}")
    return result
