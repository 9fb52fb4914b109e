"""Tasks of the synthetic stage: generate a batch with the character LoRA, check it for copies of training images,
and write the iteration report."""

from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NONE

from flenwheel.dataset.admission import check_synthetics
from flenwheel.dataset.generation import GenerationJob, SyntheticGenerator, run_generation_batch, synthetic_prompts
from flenwheel.evaluation.scoring import configured_critic
from flenwheel.models import runtime
from flenwheel.report import IterationReport, iteration_report
from flenwheel.store.workspace import RunContext

log = logging.getLogger(__name__)


@task(name="generate-batch", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def generate_batch(ctx: RunContext, lora_id: str, jobs: list[tuple[str, int]]) -> list[str]:
    """Generate (synthetic prompt id, seed) jobs with the character LoRA ``lora_id``; returns the new image ids."""
    ws, cat = ctx.ws, ctx.catalog()
    prompts = {p.id: p for p in synthetic_prompts(ws, sorted({p for p, _ in jobs}))}
    manager = runtime.model_manager(ws, ctx.profile, ctx.run_id)
    gen = SyntheticGenerator(ws, manager, cat, ctx.character_config(), lora_id)
    todo = [GenerationJob(prompts[p], s) for p, s in jobs]
    made = run_generation_batch(ws, cat, ctx.character, gen, todo, ctx.run_id)
    log.info(f"generated {len(made)} synthetic image(s) of {ctx.character} with LoRA {lora_id}")
    return made


@task(name="copy-check", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def check_copies(ctx: RunContext, lora_id: str, image_ids: list[str], adherence: bool = True) -> dict[str, int]:
    """Score generated images as samples against the LoRA's training version: a copy of a training image fails
    check ``copy`` (docs/evaluation.md); counts by verdict. ``adherence=False`` leaves the critic out (cluster mode:
    the flow's machine need not hold a GPU for the VLM)."""
    ws = ctx.ws
    critic = configured_critic(ws, ctx.profile) if adherence else None
    counts = check_synthetics(ws, ctx.catalog(), ctx.character_config(), lora_id, image_ids, ctx.run_id, critic)
    if counts:
        detail = ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        log.info(f"samples of LoRA {lora_id}: {detail}; copies fail check 'copy' and stay out of the next version")
    return counts


@task(name="iteration-report", cache_policy=NONE)
def make_report(ctx: RunContext, number: int) -> IterationReport:
    """Write the iteration's HTML report and its metrics (scope ``iteration``)."""
    ws, cat = ctx.ws, ctx.catalog()
    report = iteration_report(ws.root, cat, ctx.character, number, ws.settings.review, ws.settings.coverage)
    cat.add_metrics(ctx.run_id, "iteration", f"{ctx.character}:{number}", report.metrics, once=True)
    rate = report.metrics.get("pass_rate")
    shown = "-" if rate is None else f"{rate:.0%}"
    log.info(
        f"iteration {number} of {ctx.character}: synthetic identity pass rate {shown} "
        f"(target 70% {'met' if report.target_met else 'not met'}); report {report.path}"
    )
    return report
