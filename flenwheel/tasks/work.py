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
    ed = make_editor(editor, ws, manager, cat, char)
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


@task(name="train-flux-lora", cache_policy=NONE)
def train_lora(
    root: str, configs: str, character: str, version_id: str, profile: str | None, steps: int | None, run_id: str
) -> dict[str, object]:
    """Train (or resume, or find) the FLUX LoRA of a dataset version; logs progress every tenth of the run."""
    from prefect import get_run_logger

    from flenwheel.training import train_flux

    ws = workspace(root, configs)
    logger = get_run_logger()

    def progress(step: int, total: int, loss: float, sec: float) -> None:
        if step == total or step % max(1, total // 10) == 0:
            logger.info(
                f"step {step}/{total} loss {loss:.4f} {sec:.2f} s/step, about {(total - step) * sec:.0f} s left"
            )

    result = train_flux(ws, catalog(ws), ws.character(character), version_id, ws.profile(profile), run_id, steps,
                        resume=True, on_progress=progress)  # fmt: skip
    return {"lora_id": result.lora_id, "chosen_step": result.chosen_step, "trained": result.trained}


@task(name="generate-batch", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def generate_batch(
    root: str, configs: str, character: str, lora_id: str, profile: str | None, jobs: list[tuple[str, int]], run_id: str
) -> list[str]:
    """Generate (synthetic prompt id, seed) jobs with the character LoRA ``lora_id``; returns the new image ids."""
    from flenwheel.generation import GenerationJob, SyntheticGenerator, run_generation_batch, synthetic_prompts

    ws = workspace(root, configs)
    cat = catalog(ws)
    prompts = {p.id: p for p in synthetic_prompts(ws, sorted({p for p, _ in jobs}))}
    gen = SyntheticGenerator(ws, model_manager(ws, profile, run_id), cat, ws.character(character), lora_id)
    return run_generation_batch(ws, cat, character, gen, [GenerationJob(prompts[p], s) for p, s in jobs], run_id)


@task(name="iteration-report", cache_policy=NONE)
def make_report(root: str, configs: str, character: str, number: int, run_id: str) -> dict[str, object]:
    """Write the iteration's HTML report and its metrics (scope ``iteration``)."""
    from flenwheel.report import iteration_report

    ws = workspace(root, configs)
    cat = catalog(ws)
    report = iteration_report(ws.root, cat, character, number)
    cat.add_metrics(run_id, "iteration", f"{character}:{number}", report.metrics)
    return {"path": str(report.path), "markdown": report.markdown, "table": report.table,
            "target_met": report.target_met}  # fmt: skip


@task(name="train-edit-lora", cache_policy=NONE)
def train_edit(
    root: str, configs: str, character: str, profile: str | None, steps: int | None, ops: list[str], run_id: str
) -> dict[str, object]:
    """Train (or resume, or find) the character's Qwen-Image-Edit LoRA on its approved triplets."""
    from flenwheel.edit_training import train_edit_lora

    ws = workspace(root, configs)
    result = train_edit_lora(ws, catalog(ws), ws.character(character), ws.profile(profile), run_id, steps, ops)
    return {"lora_id": result.lora_id, "chosen_step": result.chosen_step, "trained": result.trained}


@task(name="evaluate-edit-lora", cache_policy=NONE)
def evaluate_edit(
    root: str, configs: str, character: str, lora_id: str, profile: str | None, prompts: list[str] | None,
    seeds: int, run_id: str,
) -> dict[str, object]:  # fmt: skip
    """Base editor vs base + LoRA on held-out sources; both arms' metrics and the report page."""
    from flenwheel.edit_training import evaluate_edit_lora

    ws = workspace(root, configs)
    ev = evaluate_edit_lora(ws, catalog(ws), ws.character(character), lora_id, ws.profile(profile), run_id,
                            prompts, range(seeds))  # fmt: skip
    return {"metrics": ev.metrics, "report": str(ev.report), "held_out": ev.held_out}
