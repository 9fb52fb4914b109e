"""Flywheel 2's evaluation: edit held-out sources with the base editor and with base + LoRA, same prompts and
seeds, and compare how well each keeps the character."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flenwheel.catalog import Catalog
from flenwheel.config import Character, LoraSpec, Profile
from flenwheel.editing import EditJob, QwenEditor
from flenwheel.identity import judge_for, judge_image, load_backend, reference_set_for
from flenwheel.models import ModelManager, StackEntry
from flenwheel.report import arm_stats, edit_eval_report
from flenwheel.store import open_rgb
from flenwheel.training.checkpoints import TrainingError
from flenwheel.workspace import Workspace


@dataclass
class EditEvaluation:
    lora_id: str
    held_out: bool  # False when the character had no held-out source and training sources were used
    rows: list[dict[str, Any]]  # one per (arm, source, prompt, seed)
    metrics: dict[str, dict[str, float]]  # arm -> metrics
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
    of every parameter, and both arms' pass rate and similarity go to ``metrics`` (scope ``edit_eval``).
    """
    row = catalog.lora(lora_id)
    if row is None or row["kind"] != "qwen_edit" or row["character"] != character.name:
        raise TrainingError(f"{lora_id!r} is not a Qwen-Image-Edit LoRA of {character.name} in the catalog")
    hyper = row["hyperparams"]
    held = set(hyper.get("held_out_sources") or [])
    sources = [r for r in catalog.source_images(character.name) if not held or r["image_id"] in held]
    library = ws.prompt_library(character)
    prompts = [library[p] for p in prompt_ids] if prompt_ids else list(library.values())
    refset = reference_set_for(ws, catalog, character)
    judge = judge_for(ws, character, refset)
    face = load_backend(refset.backend, ws.settings.identity)
    out_dir = ws.root / "evals" / lora_id
    out_dir.mkdir(parents=True, exist_ok=True)
    own = StackEntry(lora_id, LoraSpec(ref=f"catalog:{lora_id}", applies_to="qwen-image-edit"), 1.0)
    results: list[dict[str, Any]] = []
    with ModelManager(ws, profile, catalog, run_id) as manager:
        for arm, extra in (("base", []), ("lora", [own])):
            editor = QwenEditor(ws, manager, catalog, extra_loras=extra)
            for src in sources:
                image = open_rgb(ws.root / src["path"])
                for prompt in prompts:
                    for seed in seeds:
                        result = editor.edit(image, EditJob(src["image_id"], prompt, seed), None)
                        name = f"{arm}-{src['image_id'][:12]}-{prompt.id}-{seed}.png"
                        result.image.save(out_dir / name)
                        score = judge_image(face, judge, np.asarray(result.image))
                        results.append({
                            "arm": arm, "source_id": src["image_id"], "prompt_id": prompt.id, "seed": seed,
                            "file": name, "verdict": score.verdict, "similarity": score.similarity,
                            "loras": result.loras, "steps": result.steps, "guidance": result.guidance,
                            "model_ref": result.model_ref,
                        })  # fmt: skip
    (out_dir / "evaluation.json").write_text(json.dumps(results, indent=1, default=str))
    metrics = {arm: arm_stats(arm, [r for r in results if r["arm"] == arm]).as_metrics() for arm in ("base", "lora")}
    if run_id:
        for arm, values in metrics.items():
            catalog.add_metrics(run_id, "edit_eval", f"{lora_id}:{arm}", values)
    report = edit_eval_report(ws.root, character.name, lora_id, results, out_dir, bool(held))
    return EditEvaluation(lora_id, bool(held), results, metrics, report)
