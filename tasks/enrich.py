"""Tasks of the enrichment stage: edit a batch of jobs, identity-score what was made, assess quality and coverage."""

from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NONE

from flenwheel.dataset.coverage import assess_images
from flenwheel.editing import MODEL_EDITORS, EditJob, make_editor, run_edit_batch
from flenwheel.editing.checks import checker_for
from flenwheel.identity import filter_images
from flenwheel.models import runtime
from flenwheel.store.workspace import RunContext

log = logging.getLogger(__name__)


@task(name="edit-batch", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def edit_batch(ctx: RunContext, editor: str, jobs: list[tuple[str, str, int]]) -> list[str]:
    """Run (source id, prompt id, seed) jobs with ``editor``; returns the new image ids."""
    ws, char = ctx.ws, ctx.character_config()
    cat = ws.catalog()
    prompts = ws.prompt_library(char)
    manager = runtime.model_manager(ws, ctx.profile, ctx.run_id) if editor in MODEL_EDITORS else None
    ed = make_editor(editor, ws, manager, cat, char)
    # every edit verified; a failed one retried (docs/verification.md)
    checker = checker_for(ws, ctx.profile, char.identity.backend)
    todo = [EditJob(p, prompts[q], s) for p, q, s in jobs]
    made = run_edit_batch(ws, cat, ctx.character, ed, todo, ctx.run_id, checker)
    retried = len(made) - len(jobs)
    retries = f" ({retried} retries of edits that failed a check)" if retried else ""
    log.info(f"{editor} editor made {len(made)} image(s) of {ctx.character}{retries}")
    return made


@task(name="identity-score", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def score_images(ctx: RunContext, image_ids: list[str] | None) -> dict[str, int]:
    """Identity-score the character's unscored images (only ``image_ids`` when given); counts by verdict."""
    counts = filter_images(ctx.ws, ctx.catalog(), ctx.character_config(), image_ids=image_ids, run_id=ctx.run_id)
    if counts:
        total = sum(counts.values())
        detail = ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        log.info(f"identity of {total} image(s): {counts.get('pass', 0) / total:.0%} pass ({detail})")
    return counts


@task(name="assess-images", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def assess(ctx: RunContext, image_ids: list[str] | None) -> dict[str, int]:
    """Coverage bins and quality flags of the character's images not assessed yet (only ``image_ids`` when given),
    run after identity scoring: sources before an enrichment aims at their gaps, candidates before the gate."""
    return assess_images(ctx.ws, ctx.catalog(), ctx.character_config(), image_ids, ctx.run_id)
