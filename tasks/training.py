"""Tasks that caption the training data, train (or find) LoRAs and evaluate the editor LoRA."""

from __future__ import annotations

import logging
import math

from prefect import task
from prefect.cache_policies import NONE

from flenwheel.dataset.captions import caption_members
from flenwheel.models import runtime
from flenwheel.models.critic import Critic
from flenwheel.store.workspace import RunContext
from flenwheel.training import TrainResult, evaluate_edit_lora, train_edit_lora, train_flux
from flenwheel.training.edit_eval import EditEvaluation

log = logging.getLogger(__name__)


@task(name="caption-members", cache_policy=NONE)
def caption_dataset(ctx: RunContext, redo: bool = False) -> int:
    """VLM captions for the members a version of the character would hold that have none yet; the VLM is released
    afterwards, so training gets the whole GPU."""
    ws = ctx.ws

    def progress(done: int, total: int) -> None:
        log.info(f"captions: {done}/{total}")

    def vlm() -> Critic:
        return runtime.vlm(ws, ctx.profile, ws.settings.captions.model or "")

    try:
        return caption_members(ws, ctx.catalog(), ctx.character_config(), vlm, ctx.run_id, redo, progress=progress)
    finally:
        runtime.release_models()


@task(name="train-flux-lora", cache_policy=NONE)
def train_lora(ctx: RunContext, version_id: str, steps: int | None) -> TrainResult:
    """Train (or resume, or find) the FLUX LoRA of a dataset version; logs progress every tenth of the run."""
    ws = ctx.ws

    def progress(step: int, total: int, loss: float, sec: float) -> None:
        if step == total or step % math.ceil(total / 10) == 0:
            log.info(f"step {step}/{total} loss {loss:.4f} {sec:.2f} s/step, about {(total - step) * sec:.0f} s left")

    character, profile = ctx.character_config(), ws.profile(ctx.profile)
    result = train_flux(ws, ctx.catalog(), character, version_id, profile, ctx.run_id, steps, on_progress=progress)
    _log_result(result, f"FLUX LoRA of {version_id}")
    return result


@task(name="train-edit-lora", cache_policy=NONE)
def train_edit(ctx: RunContext, steps: int | None, ops: list[str]) -> TrainResult:
    """Train (or resume, or find) the character's Qwen-Image-Edit LoRA on its approved triplets."""
    ws = ctx.ws
    result = train_edit_lora(ws, ctx.catalog(), ctx.character_config(), ws.profile(ctx.profile), ctx.run_id, steps, ops)
    _log_result(result, f"editor LoRA of {ctx.character}")
    return result


@task(name="evaluate-edit-lora", cache_policy=NONE)
def evaluate_edit(ctx: RunContext, lora_id: str, prompts: list[str] | None, seeds: int) -> EditEvaluation:
    """Base editor vs base + LoRA on held-out sources; both arms' metrics and the report page."""
    ws = ctx.ws
    ev = evaluate_edit_lora(
        ws, ctx.catalog(), ctx.character_config(), lora_id, ws.profile(ctx.profile), ctx.run_id, prompts, range(seeds)
    )
    rates = {arm: m.get("pass_rate") for arm, m in ev.metrics.items()}
    log.info(
        f"editor LoRA {lora_id} evaluated: identity pass rate base {rates.get('base')} -> LoRA {rates.get('lora')}; "
        f"report {ev.report}"
    )
    return ev


def _log_result(result: TrainResult, what: str) -> None:
    verb = "trained" if result.trained else "found, already trained:"
    log.info(
        f"{what} {verb} {result.lora_id}; chosen checkpoint step {result.chosen_step} of {len(result.scores)} "
        f"scored: {result.choice or 'no checkpoint was scored'}"
    )
