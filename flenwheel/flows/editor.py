"""Flywheel 2: train the character's Qwen-Image-Edit LoRA on approved triplets, then show whether it keeps the
identity better than the base editor (same held-out inputs, prompts and seeds). Resumable like flywheel 1: a
finished LoRA is found by its training fingerprint and not trained again."""

from __future__ import annotations

import re
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context
from pydantic import BaseModel, ConfigDict, Field

from flenwheel.config import Workspace
from flenwheel.flows.lock import character_lock
from flenwheel.tasks.runtime import catalog as open_catalog
from flenwheel.tasks.work import evaluate_edit, train_edit


class EditorParams(BaseModel):
    """Parameters of a flywheel 2 run (a validated form in the Prefect UI)."""

    model_config = ConfigDict(extra="forbid")

    character: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    profile: Literal["cpu-tiny", "gpu-24gb", "gpu-80gb"] | None = None
    steps: int | None = Field(None, ge=1, description="override the profile's edit-trainer steps")
    ops: list[Literal["edit", "augment"]] = Field(["edit"], min_length=1, description="which approved edits train")
    eval_prompts: list[str] | None = Field(None, description="enrichment prompt ids to evaluate; default: all")
    eval_seeds: int = Field(1, ge=1, le=16)


@flow(name="editor-flywheel", log_prints=True)
def editor_flywheel(params: EditorParams, root: str | None = None, configs: str | None = None) -> dict[str, Any]:
    """Train and evaluate the character's editor LoRA; the comparison goes to metrics, a report and artifacts."""
    ws = Workspace(root=root, configs=configs)
    ws.character(params.character)
    flow_run_id = str(get_run_context().flow_run.id)
    where = (str(ws.root), str(ws.configs_dir))
    with open_catalog(ws).run("flow:editor-flywheel", {"params": params.model_dump()}, flow_run_id) as run_id:
        with character_lock(ws, params.character, f"editor flow run {flow_run_id}"):
            trained = train_edit(*where, params.character, params.profile, params.steps, list(params.ops), run_id)
            lora_id = str(trained["lora_id"])
            ev = evaluate_edit(*where, params.character, lora_id, params.profile, params.eval_prompts,
                               params.eval_seeds, run_id)  # fmt: skip
    metrics: dict[str, dict[str, float]] = ev["metrics"]  # type: ignore[assignment]
    table = [{"arm": arm, **values} for arm, values in metrics.items()]
    key = re.sub(r"[^a-z0-9-]+", "-", f"{params.character}-editor-lora".lower()).strip("-")
    create_table_artifact(table, key=f"{key}-identity", description=f"base vs LoRA, {lora_id}")
    base, lora = (metrics[a].get("pass_rate") for a in ("base", "lora"))
    verdict = "keeps the character better" if base is not None and lora is not None and lora > base else "no gain"
    create_markdown_artifact(
        f"## {params.character}: editor LoRA `{lora_id}`\n\n- identity pass rate: base {base} → LoRA {lora}: "
        f"**{verdict}**\n- report: `{ev['report']}`\n",
        key=key,
        description="flywheel 2",
    )
    return {"lora_id": lora_id, "trained": trained["trained"], **ev, "run_id": run_id}
