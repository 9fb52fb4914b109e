"""Enrichment: every source photo x prompt x seed not yet done (or, with ``fill_gaps``, the ones aimed at the set's
thinnest coverage bins) -> edit -> store -> identity -> quality and coverage -> review gate.

Work is planned from the catalog (an edit job is done when a derivation with its ``job_key`` exists), run
in batches of ``batch_size`` jobs per task, and recorded batch by batch; a run that is killed and started
again ends with the same rows as one that was never interrupted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated

from prefect import flow
from prefect.context import get_run_context
from pydantic import BaseModel, ConfigDict, Field

from flenwheel.core.errors import AwaitingReview
from flenwheel.core.types import CharacterName, EditorChoice, ProfileName, PromptId, ReviewMode
from flenwheel.dataset.iteration import EnrichSummary
from flenwheel.editing.planning import plan_enrichment
from flenwheel.flows.gate import run_gate
from flenwheel.flows.setup import configure
from flenwheel.gate import Gate
from flenwheel.models import runtime
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.locks import CharacterBusy, character_lock
from flenwheel.store.objects import expand_paths
from flenwheel.store.workspace import RunContext, Workspace
from flenwheel.tasks import batches
from flenwheel.tasks.cluster import Cluster, cluster_for
from flenwheel.tasks.enrich import assess, edit_batch, score_images
from flenwheel.tasks.remote import edit_on_cluster, score_on_cluster
from flenwheel.tasks.review import sync_review

log = logging.getLogger("flenwheel.flows.enrich")


ClusterAddress = Annotated[
    str | None,
    Field(
        None,
        pattern=r"^(local|(tcp|tls|ws|wss|inproc|ucx)://\S+)$",
        description="Dask scheduler (tcp://HOST:PORT) for the GPU-bound batches; default: cluster.address of "
        "configs/flenwheel.yaml; 'local': this process",
    ),
]


class EnrichParams(BaseModel):
    """Parameters of an enrichment run (a validated form in the Prefect UI)."""

    model_config = ConfigDict(extra="forbid")

    character: CharacterName
    editor: EditorChoice = Field(
        "augment",
        description="configured: each prompt category's editor from the "
        "character's config; else one editor for every prompt",
    )
    profile: ProfileName | None = Field(None, description="default: configs/flenwheel.yaml")
    prompts: list[PromptId] | None = Field(None, description="prompt ids; default: the whole library")
    seeds: int = Field(2, ge=1, le=64, description="seeds 0..N-1 per source and prompt")
    review: ReviewMode = "fiftyone"
    wait: bool = Field(False, description="a local run pauses at the gate instead of exiting")
    batch_size: int = Field(16, ge=1, le=1024, description="edit jobs per task run")
    sources: list[str] | None = Field(None, description="only these source image ids (nightly: the new ones)")
    cluster: ClusterAddress = None
    fill_gaps: bool = Field(
        False, description="only the sources x prompts that fill the set's thinnest coverage bins (docs/coverage.md)"
    )
    budget: int | None = Field(None, ge=1, description="fill_gaps: edit jobs at most (default: coverage.budget)")


def enrich_work(ctx: RunContext, params: EnrichParams, cluster: Cluster | None = None) -> EnrichSummary:
    """Edit, store and identity-score every pending job of ``ctx``'s character (no review): shared by the enrich,
    flywheel and nightly flows. With ``cluster`` the edit batches (with their checks and identity) run on its
    workers and are recorded here as they come back."""
    score(ctx, None, cluster)  # sources: reference set and face boxes
    assess(ctx, None)  # sources: their bins (what each can add) and flags
    work = plan_enrichment(
        ctx.ws,
        ctx.catalog(),
        ctx.character_config(),
        params.editor,
        params.profile,
        params.prompts,
        params.seeds,
        params.sources,
        fill_gaps=params.fill_gaps,
        budget=params.budget,
        run_id=ctx.run_id,
    )
    made: list[str] = []
    try:
        for name, jobs in work:
            if cluster is not None:
                ids = edit_on_cluster(cluster, ctx, name, jobs, params.batch_size)
                assess(ctx, ids)  # here: bins and flags are cheap, CPU-only and compare with the whole set
                made.extend(ids)
                continue
            for batch in batches(jobs, params.batch_size):
                ids = edit_batch(ctx, name, [(j.parent_id, j.prompt.id, j.seed) for j in batch])
                score_images(ctx, ids)
                assess(ctx, ids)
                made.extend(ids)
            runtime.release_models()  # the next editor's pipeline must not share the GPU with this one
    finally:
        runtime.release_models()
    return EnrichSummary(ctx.character, sum(len(j) for _, j in work), len(made))


def score(ctx: RunContext, image_ids: list[str] | None, cluster: Cluster | None) -> dict[str, int]:
    """Identity-score the character's unscored images, here or on the cluster's workers."""
    return score_images(ctx, image_ids) if cluster is None else score_on_cluster(cluster, ctx, image_ids)


def enrich_stage(ws: Workspace, params: EnrichParams, run_id: str, holder: str) -> EnrichSummary:
    """The enrichment work (under the character's lock), then the review gate."""
    ctx = RunContext.of(ws, params.character, params.profile, run_id)
    try:
        with character_lock(ws, params.character, holder), cluster_for(ws.settings.cluster, params.cluster) as cluster:
            summary = enrich_work(ctx, params, cluster)
    except CharacterBusy as e:  # not a failure of this run: another one is working on the character
        return EnrichSummary(params.character, 0, 0, status="busy", message=str(e))
    try:
        summary.gate = run_gate(ctx, "enrich", params.review, params.wait)
    except AwaitingReview as e:
        summary.status, summary.message = "awaiting_review", str(e)
        log.info(str(e))
    return summary


@flow(name="enrich", log_prints=True)
def enrich(params: EnrichParams, root: str | None = None, configs: str | None = None) -> EnrichSummary:
    """Enrich a character's source photos and stop at the review gate."""
    configure()
    ws = Workspace(root=root, configs=configs)
    catalog = ws.catalog()
    flow_run_id = str(get_run_context().flow_run.id)
    config = {"params": params.model_dump(), "root": str(ws.root)}
    with catalog.run("flow:enrich", config, prefect_flow_run_id=flow_run_id) as run_id:
        result = enrich_stage(ws, params, run_id, holder=f"enrich flow run {flow_run_id}")
        if result.status == "awaiting_review":
            catalog.mark_awaiting_review(run_id)
    return result


class NightlyParams(BaseModel):
    """The nightly run: new photos in each character's source folder (default ``<root>/inbox/<character>/``)."""

    model_config = ConfigDict(extra="forbid")

    characters: list[CharacterName] | None = Field(None, description="default: every character in configs")
    editor: EditorChoice = "configured"
    profile: ProfileName | None = None
    prompts: list[PromptId] | None = None
    seeds: int = Field(2, ge=1, le=64)
    review: ReviewMode = Field("fiftyone", description="auto decides now; fiftyone/cli leave candidates for people")
    batch_size: int = Field(16, ge=1, le=1024)
    cluster: ClusterAddress = None


@dataclass
class NightlyOutcome:
    """One character's night: what was ingested and enriched, or why it was skipped."""

    character: str
    skipped: str = ""
    folder: str = ""
    new_photos: int = 0
    rejected: list[str] = field(default_factory=list)
    enrichment: EnrichSummary | None = None
    pending_review: int = 0
    busy: bool = False  # skipped because another run held the character's lock


def nightly_work(ws: Workspace, params: NightlyParams, run_id: str, holder: str) -> list[NightlyOutcome]:
    """Ingest what is new in each source folder, enrich what is pending, and queue it for review.

    Never waits at a gate: the candidates wait in FiftyOne (or the CLI) for the next flywheel run's gate. A
    character whose lock is held by a running iteration is skipped with a note (the next night catches up).
    """
    with cluster_for(ws.settings.cluster, params.cluster) as cluster:
        return _nightly_characters(ws, params, run_id, holder, cluster)


def _nightly_characters(
    ws: Workspace, params: NightlyParams, run_id: str, holder: str, cluster: Cluster | None
) -> list[NightlyOutcome]:
    catalog = ws.catalog()
    results = []
    for name in params.characters or ws.character_names():
        ctx = RunContext.of(ws, name, params.profile, run_id)
        the_gate = Gate(catalog, name, "enrich", ws.settings.review)
        folder = ws.source_dir(ctx.character_config())
        files = expand_paths([folder]) if folder.is_dir() else []
        try:
            with character_lock(ws, name, holder):
                outcomes = ingest_paths(ws, catalog, name, files, run_id)
                if not catalog.source_images(name):
                    results.append(NightlyOutcome(name, skipped=f"no source photos (folder {folder})"))
                    continue
                enrich = EnrichParams(
                    character=name,
                    editor=params.editor,
                    profile=params.profile,
                    prompts=params.prompts,
                    seeds=params.seeds,
                    review=params.review,
                    batch_size=params.batch_size,
                )
                summary = enrich_work(ctx, enrich, cluster)
                if params.review == "auto":
                    the_gate.auto_review(run_id)
                else:
                    if ws.settings.review.auto_clear:
                        the_gate.auto_decide_clear(run_id)
                    if params.review == "fiftyone":
                        sync_review(ctx)
        except CharacterBusy as e:
            results.append(NightlyOutcome(name, skipped=str(e), busy=True))
            continue
        outcome = NightlyOutcome(
            name,
            folder=str(folder),
            new_photos=sum(o.status == "ingested" for o in outcomes),
            rejected=[f"{o.path.name}: {o.reason}" for o in outcomes if o.status == "rejected"],
            enrichment=summary,
            pending_review=the_gate.status().pending,
        )
        log.info(
            f"nightly {name}: {outcome.new_photos} new photo(s), {summary.images} new candidate(s), "
            f"{outcome.pending_review} waiting for review"
        )
        results.append(outcome)
    return results


@flow(name="nightly-enrich", log_prints=True)
def nightly_enrich(
    params: NightlyParams | None = None, root: str | None = None, configs: str | None = None
) -> list[NightlyOutcome]:
    """Enrich new source photos of every character (scheduled at 03:00 by ``flenwheel serve``)."""
    configure()
    ws = Workspace(root=root, configs=configs)
    params = params or NightlyParams()
    flow_run_id = str(get_run_context().flow_run.id)
    with ws.catalog().run("flow:nightly-enrich", {"params": params.model_dump()}, flow_run_id) as run_id:
        return nightly_work(ws, params, run_id, holder=f"nightly flow run {flow_run_id}")
