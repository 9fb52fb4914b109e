"""Batched tasks: edit, score, sync the review dataset."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from flenwheel.editing import EditJob, make_editor, run_edit_batch
from flenwheel.identity import filter_images
from flenwheel.tasks.runtime import catalog, model_manager, workspace


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
    ws = workspace(root, configs)
    cat = catalog(ws)
    char = ws.character(character)
    prompts = ws.prompt_library(char)
    manager = model_manager(ws, profile, run_id) if editor == "qwen" else None
    ed = make_editor(editor, ws, manager, cat)
    return run_edit_batch(ws, cat, character, ed, [EditJob(p, prompts[q], s) for p, q, s in jobs], run_id)


@task(name="identity-score", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def score_images(root: str, configs: str, character: str, image_ids: list[str] | None, run_id: str) -> dict[str, int]:
    """Identity-score the character's unscored images (only ``image_ids`` when given); counts by verdict."""
    ws = workspace(root, configs)
    return filter_images(ws, catalog(ws), ws.character(character), image_ids=image_ids, run_id=run_id)


@task(name="review-sync", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def sync_review(root: str, configs: str, character: str, run_id: str) -> dict[str, int]:
    """Push new candidates to the FiftyOne dataset and pull reviewers' tags into the catalog."""
    from flenwheel.review.datasets import pull_decisions, sync_candidates

    ws = workspace(root, configs)
    cat = catalog(ws)
    added = sync_candidates(ws, cat, character)
    return {"added": added, "decisions": pull_decisions(ws, cat, character, run_id)}
