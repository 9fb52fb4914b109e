"""Flywheel 2's evaluation: edit held-out sources with the base editor and with base + LoRA, same prompts and
seeds, and compare how well each keeps the character (an editor comparison with two Qwen arms)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character, LoraSpec, Profile
from flenwheel.editing import QwenEditor
from flenwheel.editing.compare import Arm, compare_editors
from flenwheel.models.loading import ModelManager
from flenwheel.models.loras import StackEntry
from flenwheel.report.comparison import comparison_report
from flenwheel.store.workspace import Workspace
from flenwheel.training.checkpoints import TrainingError


@dataclass
class EditEvaluation:
    lora_id: str
    held_out: bool  # False when the character had no held-out source and training sources were used
    rows: list[dict[str, Any]]  # one per (arm, source, prompt, seed)
    metrics: dict[str, dict[str, float]]  # "base", "lora" and "<arm>:<category>" -> metrics
    report: Path


def evaluate_edit_lora(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    lora_id: str,
    profile: Profile,
    run_id: str | None,
    prompt_ids: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
) -> EditEvaluation:
    """Edit held-out sources with the base editor and with base + LoRA (same prompts and seeds); compare identity.

    Outputs are evaluation artefacts, not candidates: they go to ``<root>/evals/<lora_id>/`` with a JSON record
    of every parameter, and both arms' metrics go to ``metrics`` (scope ``edit_eval``, ids ``<lora_id>:<arm>``
    and ``<lora_id>:<arm>:<category>``).
    """
    row = catalog.lora(lora_id)
    if row is None or row["kind"] != "qwen_edit" or row["character"] != character.name:
        raise TrainingError(f"{lora_id!r} is not a Qwen-Image-Edit LoRA of {character.name} in the catalog")
    held = set(row["hyperparams"].get("held_out_sources") or [])
    sources = [r for r in catalog.source_images(character.name) if not held or r["image_id"] in held]
    library = ws.prompt_library(character)
    prompts = [library[p] for p in prompt_ids] if prompt_ids else list(library.values())
    own = StackEntry(lora_id, LoraSpec(ref=f"catalog:{lora_id}", applies_to="qwen-image-edit"), 1.0)
    # One manager for both arms: the base arm after the LoRA arm must see the very same base weights.
    with ModelManager(ws, profile, catalog, run_id) as manager:
        arms = [Arm("base", QwenEditor(ws, manager, catalog)), Arm("lora", QwenEditor(ws, manager, catalog, [own]))]
        done = compare_editors(
            ws,
            catalog,
            character,
            arms,
            sources,
            prompts,
            seeds,
            ws.root / "evals" / lora_id,
            run_id,
            "edit_eval",
            lora_id,
        )
    b_rate, l_rate = (done.metrics.get(a, {}).get("pass_rate") for a in ("base", "lora"))
    better = l_rate is not None and b_rate is not None and l_rate > b_rate
    pct = lambda x: "-" if x is None else f"{x:.0%}"  # noqa: E731
    summary = [
        f"Identity pass rate: base editor {pct(b_rate)} → base + LoRA {pct(l_rate)}: "
        f"<span class='{'ok' if better else 'miss'}'>{'the LoRA keeps the character better' if better else 'no gain'}"
        "</span>.",
        "Inputs: held-out source photos the LoRA never saw."
        if held
        else "Inputs: the training sources (the character has no held-out photo: add more sources for a fair test).",
    ]
    report = comparison_report(
        ws.root / "reports" / character.name / f"edit-eval-{lora_id}",
        f"{character.name}: editor LoRA {lora_id}",
        summary,
        [("base", "base editor"), ("lora", "base + LoRA")],
        done.rows,
        done.metrics,
        done.out_dir,
        {s["image_id"]: ws.root / s["path"] for s in sources},
    )
    return EditEvaluation(lora_id, bool(held), done.rows, done.metrics, report)
