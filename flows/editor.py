"""Flywheel 2: train the character's Qwen-Image-Edit LoRA on approved triplets, then show whether it keeps the
identity better than the base editor (same held-out inputs, prompts and seeds). Resumable like flywheel 1: a
finished LoRA is found by its training fingerprint and not trained again."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context
from pydantic import BaseModel, ConfigDict, Field

from flenwheel.core.types import CharacterName, EditOp, ProfileName, PromptId
from flenwheel.flows.flywheel import artifact_key
from flenwheel.flows.setup import configure
from flenwheel.report.format import cell, format_rows
from flenwheel.store.locks import character_lock
from flenwheel.store.workspace import RunContext, Workspace
from flenwheel.tasks.training import caption_dataset, evaluate_edit, train_edit
from flenwheel.training import EditEvaluation, TrainResult

log = logging.getLogger("flenwheel.flows.editor")


class EditorParams(BaseModel):
    """Parameters of a flywheel 2 run (a validated form in the Prefect UI)."""

    model_config = ConfigDict(extra="forbid")

    character: CharacterName
    profile: ProfileName | None = Field(None, description="default: configs/flenwheel.yaml")
    steps: int | None = Field(None, ge=1, description="override the profile's edit-trainer steps")
    ops: list[EditOp] = Field(["edit"], min_length=1, description="which approved edits train it")
    eval_prompts: list[PromptId] | None = Field(None, description="enrichment prompt ids to evaluate; default: all")
    eval_seeds: int = Field(1, ge=1, le=16)


@dataclass
class EditorFlywheelResult:
    lora: TrainResult
    evaluation: EditEvaluation
    run_id: str


@flow(name="editor-flywheel", log_prints=True)
def editor_flywheel(params: EditorParams, root: str | None = None, configs: str | None = None) -> EditorFlywheelResult:
    """Train and evaluate the character's editor LoRA; the comparison goes to metrics, a report and artifacts."""
    configure()
    ws = Workspace(root=root, configs=configs)
    ws.character(params.character)
    flow_run_id = str(get_run_context().flow_run.id)
    with ws.catalog().run("flow:editor-flywheel", {"params": params.model_dump()}, flow_run_id) as run_id:
        ctx = RunContext.of(ws, params.character, params.profile, run_id)
        with character_lock(ws, params.character, f"editor flow run {flow_run_id}"):
            if ws.settings.captions.edit_text == "instruction+caption":  # the approved results' captions
                caption_dataset(ctx)
            lora = train_edit(ctx, params.steps, list(params.ops))
            ev = evaluate_edit(ctx, lora.lora_id, params.eval_prompts, params.eval_seeds)
    table = format_rows([{"arm": arm, **values} for arm, values in ev.metrics.items()])  # 21 edits, not 21.0
    key = artifact_key(f"{params.character}-editor-lora")
    create_table_artifact(table, key=f"{key}-identity", description=f"base vs LoRA, {lora.lora_id}")
    base, tuned = (ev.metrics[a].get("pass_rate") for a in ("base", "lora"))
    verdict = "keeps the character better" if base is not None and tuned is not None and tuned > base else "no gain"
    create_markdown_artifact(
        f"## {params.character}: editor LoRA `{lora.lora_id}`\n\n- identity pass rate: base {cell(base, 'pass_rate')} "
        f"→ LoRA {cell(tuned, 'pass_rate')}: "
        f"**{verdict}**\n- report: `{ev.report}`\n",
        key=key,
        description="flywheel 2",
    )
    log.info(f"editor LoRA {lora.lora_id}: {verdict}; report {ev.report}")
    return EditorFlywheelResult(lora, ev, run_id)
