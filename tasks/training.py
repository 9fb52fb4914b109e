"""Tasks that caption the training data, train (or find) LoRAs and evaluate the editor LoRA."""

from __future__ import annotations

import logging
import math

from prefect import task
from prefect.cache_policies import NONE

from flenwheel import runtime
from flenwheel.captions import caption_members
from flenwheel.training import TrainResult, evaluate_edit_lora, train_edit_lora, train_flux
from flenwheel.training.edit_eval import EditEvaluation

log = logging.getLogger(__name__)


@task(name="caption-members", cache_policy=NONE)
def caption_dataset(
    root: str, configs: str, character: str, profile: str | None, run_id: str, redo: bool = False
) -> int:
    """VLM captions for the members a version of ``character`` would hold that have none yet; the VLM is released
    afterwards, so training gets the whole GPU."""
    ws = runtime.workspace(root, configs)

    def progress(done: int, total: int) -> None:
        log.info(f"captions: {done}/{total}")

    try:
        return caption_members(ws, ws.catalog(), ws.character(character),
                               lambda: runtime.vlm(ws, profile, ws.settings.captions.model or ""), run_id, redo,
                               progress=progress)  # fmt: skip
    finally:
        runtime.release_models()


@task(name="train-flux-lora", cache_policy=NONE)
def train_lora(
    root: str, configs: str, character: str, version_id: str, profile: str | None, steps: int | None, run_id: str
) -> TrainResult:
    """Train (or resume, or find) the FLUX LoRA of a dataset version; logs progress every tenth of the run."""
    ws = runtime.workspace(root, configs)

    def progress(step: int, total: int, loss: float, sec: float) -> None:
        if step == total or step % math.ceil(total / 10) == 0:
            log.info(f"step {step}/{total} loss {loss:.4f} {sec:.2f} s/step, about {(total - step) * sec:.0f} s left")

    result = train_flux(ws, ws.catalog(), ws.character(character), version_id, ws.profile(profile), run_id, steps,
                        resume=True, on_progress=progress)  # fmt: skip
    _log_result(result, f"FLUX LoRA of {version_id}")
    return result


@task(name="train-edit-lora", cache_policy=NONE)
def train_edit(
    root: str, configs: str, character: str, profile: str | None, steps: int | None, ops: list[str], run_id: str
) -> TrainResult:
    """Train (or resume, or find) the character's Qwen-Image-Edit LoRA on its approved triplets."""
    ws = runtime.workspace(root, configs)
    result = train_edit_lora(ws, ws.catalog(), ws.character(character), ws.profile(profile), run_id, steps, ops)
    _log_result(result, f"editor LoRA of {character}")
    return result


@task(name="evaluate-edit-lora", cache_policy=NONE)
def evaluate_edit(
    root: str, configs: str, character: str, lora_id: str, profile: str | None, prompts: list[str] | None,
    seeds: int, run_id: str,
) -> EditEvaluation:  # fmt: skip
    """Base editor vs base + LoRA on held-out sources; both arms' metrics and the report page."""
    ws = runtime.workspace(root, configs)
    ev = evaluate_edit_lora(ws, ws.catalog(), ws.character(character), lora_id, ws.profile(profile), run_id,
                            prompts, range(seeds))  # fmt: skip
    rates = {arm: m.get("pass_rate") for arm, m in ev.metrics.items()}
    log.info(f"editor LoRA {lora_id} evaluated: identity pass rate base {rates.get('base')} -> LoRA "
             f"{rates.get('lora')}; report {ev.report}")  # fmt: skip
    return ev


def _log_result(result: TrainResult, what: str) -> None:
    chosen = next((s for s in result.scores if s.step == result.chosen_step), None)
    rate = "-" if chosen is None or chosen.pass_rate is None else f"{chosen.pass_rate:.0%}"
    verb = "trained" if result.trained else "found, already trained:"
    log.info(f"{what} {verb} {result.lora_id}; chosen checkpoint step {result.chosen_step} "
             f"(sample identity pass rate {rate}) of {len(result.scores)} scored")  # fmt: skip
