"""Tasks of the enrichment stage: edit a batch of jobs, identity-score what was made."""

from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NONE

from flenwheel import runtime
from flenwheel.editing import MODEL_EDITORS, EditJob, make_editor, run_edit_batch
from flenwheel.editing.checks import checker_for
from flenwheel.identity import filter_images

log = logging.getLogger(__name__)


@task(name="edit-batch", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def edit_batch(
    root: str,
    configs: str,
    character: str,
    editor: str,
    profile: str | None,
    jobs: list[tuple[str, str, int]],
    run_id: str,
) -> list[str]:
    """Run (source id, prompt id, seed) jobs with ``editor``; returns the new image ids."""
    ws = runtime.workspace(root, configs)
    cat = ws.catalog()
    char = ws.character(character)
    prompts = ws.prompt_library(char)
    manager = runtime.model_manager(ws, profile, run_id) if editor in MODEL_EDITORS else None
    ed = make_editor(editor, ws, manager, cat, char)
    # every edit verified; a failed one retried (docs/verification.md)
    checker = checker_for(ws, profile, char.identity.backend)
    made = run_edit_batch(ws, cat, character, ed, [EditJob(p, prompts[q], s) for p, q, s in jobs], run_id, checker)
    retried = len(made) - len(jobs)
    log.info(f"{editor} editor made {len(made)} image(s) of {character}"
             + (f" ({retried} retries of edits that failed a check)" if retried else ""))  # fmt: skip
    return made


@task(name="identity-score", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def score_images(root: str, configs: str, character: str, image_ids: list[str] | None, run_id: str) -> dict[str, int]:
    """Identity-score the character's unscored images (only ``image_ids`` when given); counts by verdict."""
    ws = runtime.workspace(root, configs)
    counts = filter_images(ws, ws.catalog(), ws.character(character), image_ids=image_ids, run_id=run_id)
    if counts:
        total = sum(counts.values())
        detail = ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        log.info(f"identity of {total} image(s): {counts.get('pass', 0) / total:.0%} pass ({detail})")
    return counts
