"""Editors compared on the same jobs: every arm edits the same sources with the same prompts and seeds.

An arm is a named editor (the base Qwen editor, Qwen + an editor LoRA, VIBE, ...). Each edit is identity-scored
(and verified, where a verifier is given), timed, and saved as an evaluation artefact under ``out_dir`` with a
JSON record of every parameter: evaluation edits are not review candidates. Per arm and per (arm, category) the
pass rates, seconds per edit and the arm's peak memory go to ``metrics`` under ``scope``. Used by
``flenwheel eval-editors`` (editor vs editor) and by Flywheel 2's evaluation (base vs base + LoRA).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from flenwheel.catalog import Catalog
from flenwheel.config import Character, Profile, PromptEntry
from flenwheel.editing.jobs import EditError, EditJob, Editor
from flenwheel.identity import judge_for, judge_image, load_backend, reference_set_for
from flenwheel.models import ModelManager
from flenwheel.report import arm_stats
from flenwheel.report.comparison import comparison_report
from flenwheel.store import atomic_write, encode_png, open_rgb
from flenwheel.workspace import Workspace

# A check run on each edit beside identity: (source, edited, prompt) -> {"passed": bool, ...scores}.
Verifier = Callable[[Image.Image, Image.Image, PromptEntry], dict[str, Any]]


@dataclass
class Arm:
    """One side of a comparison: a label and the editor that makes its edits."""

    name: str
    editor: Editor
    manager: ModelManager | None = None  # where the arm's peak memory is read (model editors)


@dataclass
class Comparison:
    rows: list[dict[str, Any]]  # one per (arm, source, prompt, seed)
    metrics: dict[str, dict[str, float]]  # "<arm>" and "<arm>:<category>" -> metrics
    out_dir: Path
    skipped: dict[str, list[str]] = field(default_factory=dict)  # arm -> prompt ids its editor does not support


def group_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Identity pass rate and similarity, verifier pass rate and seconds per edit of ``rows``."""
    out = arm_stats("", rows).as_metrics()
    checked = [r["verified"] for r in rows if r.get("verified") is not None]
    if checked:
        out["verifier_pass_rate"] = sum(checked) / len(checked)
    if rows:
        out["seconds_per_edit"] = float(np.mean([r["seconds"] for r in rows]))
    return out


def compare_editors(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    arms: Sequence[Arm],
    sources: Sequence[dict[str, Any]],
    prompts: Sequence[PromptEntry],
    seeds: Sequence[int],
    out_dir: Path,
    run_id: str | None,
    scope: str,
    scope_id: str,
    verify: Verifier | None = None,
) -> Comparison:
    """Edit every (source, prompt, seed) with each arm's editor; score, time, save and record the results.

    A prompt an arm's editor does not support (e.g. VIBE and camera angles) is left out for every arm, so the
    arms' numbers always cover the same jobs.
    """
    skipped = {a.name: [p.id for p in prompts if not a.editor.supports(p)] for a in arms}
    common = [p for p in prompts if all(a.editor.supports(p) for a in arms)]
    refset = reference_set_for(ws, catalog, character)
    judge = judge_for(ws, character, refset)
    face = load_backend(refset.backend, ws.settings.identity)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {s["image_id"]: open_rgb(ws.root / s["path"]) for s in sources}
    boxes = catalog.images_with_face_box(list(images))
    rows: list[dict[str, Any]] = []
    peaks: dict[str, float] = {}
    total = len(arms) * len(images) * len(common) * len(seeds)
    with tqdm(total=total, desc="editor comparison", unit="edit") as bar:
        for arm in arms:
            for source_id, image in images.items():
                box = boxes.get(source_id, {}).get("face_box")
                for prompt in common:
                    for seed in seeds:
                        started = time.perf_counter()
                        result = arm.editor.edit(image, EditJob(source_id, prompt, seed), tuple(box) if box else None)
                        seconds = time.perf_counter() - started
                        name = f"{arm.name}-{source_id[:12]}-{prompt.id}-{seed}.png"
                        atomic_write(out_dir / name, encode_png(result.image))
                        score = judge_image(face, judge, np.asarray(result.image))
                        checked = verify(image, result.image, prompt) if verify else None
                        rows.append({
                            "arm": arm.name, "editor": arm.editor.name, "category": prompt.category,
                            "source_id": source_id, "prompt_id": prompt.id, "seed": seed, "file": name,
                            "verdict": score.verdict, "similarity": score.similarity, "seconds": seconds,
                            "verified": None if checked is None else bool(checked["passed"]), "verifier": checked,
                            "model_ref": result.model_ref, "loras": result.loras, "steps": result.steps,
                            "guidance": result.guidance, "params": result.params,
                        })  # fmt: skip
                        bar.update()
            if arm.manager is not None:  # release now: the next arm's model must not share the peak
                arm.manager.release()
                peaks[arm.name] = max(arm.manager.peaks.values(), default=0.0)
    atomic_write(out_dir / "evaluation.json", json.dumps(rows, indent=1, default=str).encode())
    metrics: dict[str, dict[str, float]] = {}
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm.name]
        metrics[arm.name] = group_metrics(mine) | ({"peak_gib": peaks[arm.name]} if arm.name in peaks else {})
        for category in sorted({r["category"] for r in mine}):
            metrics[f"{arm.name}:{category}"] = group_metrics([r for r in mine if r["category"] == category])
    if run_id:
        for key, values in metrics.items():
            catalog.add_metrics(run_id, scope, f"{scope_id}:{key}", values, once=True)
    return Comparison(rows, metrics, out_dir, {k: v for k, v in skipped.items() if v})


@dataclass
class EditorEvaluation:
    eval_id: str
    comparison: Comparison
    sources: list[str]
    sources_note: str
    report: Path


def comparison_sources(
    catalog: Catalog, character: Character, arms: Sequence[Arm], chosen: Sequence[str] | None
) -> tuple[list[dict[str, Any]], str]:
    """The inputs of an editor comparison, and a line saying what they are.

    ``chosen`` ids when given; else, when an arm applies the character's own editor LoRA, the sources that LoRA
    held out (it saw the others in training); else every source photo (base editors never saw any of them).
    """
    sources = catalog.source_images(character.name)
    if chosen:
        missing = sorted(set(chosen) - {s["image_id"] for s in sources})
        if missing:
            raise EditError(f"not source images of {character.name}: {', '.join(m[:12] for m in missing)}")
        return [s for s in sources if s["image_id"] in set(chosen)], f"inputs: the {len(chosen)} chosen source(s)"
    own = {e.name for a in arms for e in getattr(a.editor, "extra_loras", [])}
    held: set[str] = set()
    for lora_id in sorted(own):
        row = catalog.lora(lora_id)
        held |= set((row or {}).get("hyperparams", {}).get("held_out_sources") or [])
    if held:
        return [s for s in sources if s["image_id"] in held], "inputs: the sources the editor LoRA held out"
    return sources, f"inputs: all {len(sources)} source photo(s) (no arm was trained on them)"


def evaluate_editors(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    editors: Sequence[str],
    profile: Profile,
    run_id: str | None,
    prompt_ids: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    source_ids: Sequence[str] | None = None,
    verify: Verifier | None = None,
) -> EditorEvaluation:
    """``flenwheel eval-editors``: the named editors on the same held-out jobs; metrics (scope ``editor_eval``,
    ids ``<eval_id>:<editor>[:<category>]``), the edits under ``<root>/evals/<eval_id>/`` and a page."""
    from flenwheel.editing import MODEL_EDITORS, make_editor  # the registry imports every editor

    if len(set(editors)) < 2:
        raise EditError("name at least two different editors to compare, e.g. --editors qwen,vibe")
    library = ws.prompt_library(character)
    unknown = sorted(set(prompt_ids or []) - set(library))
    if unknown:
        raise EditError(f"unknown prompt id(s) {', '.join(unknown)}; known: {', '.join(sorted(library))}")
    prompts = [library[p] for p in prompt_ids] if prompt_ids else list(library.values())
    arms = []
    for name in editors:
        manager = ModelManager(ws, profile, catalog, run_id) if name in MODEL_EDITORS else None
        arms.append(Arm(name, make_editor(name, ws, manager, catalog, character), manager))
    sources, note = comparison_sources(catalog, character, arms, source_ids)
    if not sources:
        raise EditError(f"{character.name} has no source photo to edit: flenwheel ingest {character.name} PHOTOS")
    settings = {"editors": {a.name: [a.editor.fingerprint(p) for p in prompts] for a in arms},
                "sources": sorted(s["image_id"] for s in sources), "prompts": [p.id for p in prompts],
                "seeds": list(seeds)}  # fmt: skip
    eval_id = "editors-" + hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    try:
        done = compare_editors(ws, catalog, character, arms, sources, prompts, seeds, ws.root / "evals" / eval_id,
                               run_id, "editor_eval", eval_id, verify)  # fmt: skip
    finally:
        for arm in arms:
            arm.editor.close()
    pct = lambda x: "-" if x is None else f"{x:.0%}"  # noqa: E731
    summary = [
        "Identity pass rate: " + ", ".join(f"{a.name} {pct(done.metrics[a.name].get('pass_rate'))}" for a in arms)
        + "; seconds per edit: " + ", ".join(f"{a.name} {done.metrics[a.name].get('seconds_per_edit', 0):.2f}"
                                             for a in arms) + ".",
        f"{note.capitalize()}; {len(done.rows) // max(1, len(arms))} job(s) per editor, same prompts and seeds.",
    ]  # fmt: skip
    summary += [f"Left out for every editor (not supported by {arm}): {', '.join(ids)}."
                for arm, ids in done.skipped.items()]  # fmt: skip
    report = comparison_report(
        ws.root / "reports" / character.name / eval_id, f"{character.name}: editors compared ({', '.join(editors)})",
        summary, [(a.name, a.name) for a in arms], done.rows, done.metrics, done.out_dir,
        {s["image_id"]: ws.root / s["path"] for s in sources},
    )  # fmt: skip
    return EditorEvaluation(eval_id, done, [s["image_id"] for s in sources], note, report)
