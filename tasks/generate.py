"""Tasks of the synthetic stage: generate a batch with the character LoRA, and write the iteration report."""

from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NONE

from flenwheel import runtime
from flenwheel.generation import GenerationJob, SyntheticGenerator, run_generation_batch, synthetic_prompts
from flenwheel.report import IterationReport, iteration_report

log = logging.getLogger(__name__)


@task(name="generate-batch", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def generate_batch(
    root: str, configs: str, character: str, lora_id: str, profile: str | None, jobs: list[tuple[str, int]], run_id: str
) -> list[str]:
    """Generate (synthetic prompt id, seed) jobs with the character LoRA ``lora_id``; returns the new image ids."""
    ws = runtime.workspace(root, configs)
    cat = ws.catalog()
    prompts = {p.id: p for p in synthetic_prompts(ws, sorted({p for p, _ in jobs}))}
    gen = SyntheticGenerator(ws, runtime.model_manager(ws, profile, run_id), cat, ws.character(character), lora_id)
    made = run_generation_batch(ws, cat, character, gen, [GenerationJob(prompts[p], s) for p, s in jobs], run_id)
    log.info(f"generated {len(made)} synthetic image(s) of {character} with LoRA {lora_id}")
    return made


@task(name="iteration-report", cache_policy=NONE)
def make_report(root: str, configs: str, character: str, number: int, run_id: str) -> IterationReport:
    """Write the iteration's HTML report and its metrics (scope ``iteration``)."""
    ws = runtime.workspace(root, configs)
    cat = ws.catalog()
    report = iteration_report(ws.root, cat, character, number, ws.settings.review)
    cat.add_metrics(run_id, "iteration", f"{character}:{number}", report.metrics, once=True)
    rate = report.metrics.get("pass_rate")
    log.info(f"iteration {number} of {character}: synthetic identity pass rate "
             f"{'-' if rate is None else f'{rate:.0%}'} (target 70% {'met' if report.target_met else 'not met'}); "
             f"report {report.path}")  # fmt: skip
    return report
