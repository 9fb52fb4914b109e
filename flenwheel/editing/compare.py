"""Editors compared on the same jobs: every arm edits the same sources with the same prompts and seeds.

An arm is a named editor (the base Qwen editor, Qwen + an editor LoRA, VIBE, ...). Each edit is identity-scored,
timed, and saved as an evaluation artefact under ``out_dir`` with a JSON record of every parameter: evaluation
edits are not review candidates (no ``images`` row). Given an :class:`~flenwheel.editing.checks.EditChecker`, each
edit is also checked as enrichment checks it (the same masks, verifier and critic; once, without retries: the
comparison measures each editor's first try), and the checks go to ``verifications`` keyed by the sha256 of the
edit's file, with the evaluation, arm, source, prompt, category and seed in ``params`` so SQL can group them.
Per arm and per (arm, category) the pass rates, failed checks per kind, seconds per edit and the arm's peak
memory go to ``metrics`` under ``scope``. Used by ``flenwheel eval-editors`` (editor vs editor) and by
Flywheel 2's evaluation (base vs base + LoRA).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character, Profile, PromptEntry
from flenwheel.core.files import atomic_write
from flenwheel.editing.checks import EditChecker, checker_for, verification_rows
from flenwheel.editing.jobs import EditError, EditJob, Editor
from flenwheel.identity import judge_for, judge_image, load_backend, reference_set_for
from flenwheel.models import runtime
from flenwheel.models.loading import ModelManager
from flenwheel.report import arm_stats
from flenwheel.report.checks import check_kind
from flenwheel.report.comparison import comparison_report
from flenwheel.report.format import cell
from flenwheel.store.objects import encode_png, open_rgb
from flenwheel.store.workspace import Workspace

# The PNG text chunk that records an evaluation edit's job in its file. It makes the file's sha256 (the key of its
# checks in ``verifications``) unique to (evaluation, arm, source, prompt, seed): the same pixels made by another
# arm, another evaluation or enrichment have another key, so no check row of theirs is overwritten.
EVAL_TEXT_KEY = "flenwheel:eval"


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
    """Identity pass rate and similarity and seconds per edit of ``rows``; of the checked ones the verifier pass
    rate (every check passed) and ``failed:<kind>``, how many failed a kind of check (both preservation measures
    are one kind, each critic question one, as in the enrichment report)."""
    out = arm_stats("", rows).as_metrics()
    checked = [r for r in rows if r.get("checks") is not None]
    if checked:
        out["verifier_pass_rate"] = sum(bool(r["verified"]) for r in checked) / len(checked)
        for kind in sorted({check_kind(c["name"]) for r in checked for c in r["checks"]}):
            out[f"failed:{kind}"] = float(
                sum(any(check_kind(c["name"]) == kind and not c["passed"] for c in r["checks"]) for r in checked)
            )
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
    checker: EditChecker | None = None,
) -> Comparison:
    """Edit every (source, prompt, seed) with each arm's editor; score, check, time, save and record the results.

    A prompt an arm's editor does not support (e.g. VIBE and camera angles) is left out for every arm, so the
    arms' numbers always cover the same jobs. With ``checker``, every edit is checked against the region of its
    (source, category), the same region for every arm, and the masks and checks are recorded in one transaction.
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
    checks: list[dict[str, Any]] = []  # verifications rows
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
                        job = {
                            "eval_id": scope_id,
                            "scope": scope,
                            "arm": arm.name,
                            "editor": arm.editor.name,
                            "source_id": source_id,
                            "prompt_id": prompt.id,
                            "category": prompt.category,
                            "seed": seed,
                        }
                        data = encode_png(result.image, {EVAL_TEXT_KEY: json.dumps(job, sort_keys=True)})
                        image_id = hashlib.sha256(data).hexdigest()
                        atomic_write(out_dir / name, data)
                        score = judge_image(face, judge, np.asarray(result.image))
                        check = checker.check(source_id, image, result.image, prompt, box) if checker else None
                        mine = verification_rows(check, image_id, prompt, run_id) if check else None
                        for c in mine or []:
                            c["params"] = {**(c["params"] or {}), **job, "file": _relpath(ws, out_dir / name)}
                        checks += mine or []
                        rows.append(
                            {
                                "arm": arm.name,
                                "editor": arm.editor.name,
                                "category": prompt.category,
                                "source_id": source_id,
                                "prompt_id": prompt.id,
                                "seed": seed,
                                "file": name,
                                "image_id": image_id,
                                "verdict": score.verdict,
                                "similarity": score.similarity,
                                "seconds": seconds,
                                "verified": None if check is None else check.passed,
                                "failed_checks": None if check is None else check.failures,
                                "checks": None
                                if mine is None
                                else [{k: c[k] for k in ("name", "score", "threshold", "passed")} for c in mine],
                                "model_ref": result.model_ref,
                                "loras": result.loras,
                                "steps": result.steps,
                                "guidance": result.guidance,
                                "params": result.params,
                            }
                        )
                        bar.update()
            if arm.manager is not None:  # release now: the next arm's model must not share the peak
                arm.manager.release()
                if arm.manager.last_peak is not None:
                    peaks[arm.name] = arm.manager.last_peak
    if checker is not None:
        try:
            catalog.add_checks({"masks": [m.row(run_id) for m in checker.masks.values()], "verifications": checks})
        except BaseException:
            for path in checker.new_files():  # masks no row names would be orphans
                path.unlink(missing_ok=True)
            raise
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


def _relpath(ws: Workspace, path: Path) -> str:
    try:
        return path.relative_to(ws.root).as_posix()
    except ValueError:  # an evaluation outside the data root (not one flenwheel makes)
        return str(path)


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
) -> EditorEvaluation:
    """``flenwheel eval-editors``: the named editors on the same held-out jobs, every edit checked as enrichment
    checks it (unless ``verify.enabled`` is off); metrics (scope ``editor_eval``, ids
    ``<eval_id>:<editor>[:<category>]``), checks in ``verifications`` (``params.eval_id``), the edits under
    ``<root>/evals/<eval_id>/`` and a page."""
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
        # the process's manager: the critic then shares the qwen arm's text encoder, and the memory rule sees
        # what each arm holds (runtime.vlm); arms run one after the other, each releasing its model at its end
        manager = runtime.model_manager(ws, profile.name, run_id) if name in MODEL_EDITORS else None
        arms.append(Arm(name, make_editor(name, ws, manager, catalog, character), manager))
    sources, note = comparison_sources(catalog, character, arms, source_ids)
    if not sources:
        raise EditError(f"{character.name} has no source photo to edit: flenwheel ingest {character.name} PHOTOS")
    settings = {
        "editors": {a.name: [a.editor.fingerprint(p) for p in prompts] for a in arms},
        "sources": sorted(s["image_id"] for s in sources),
        "prompts": [p.id for p in prompts],
        "seeds": list(seeds),
    }
    eval_id = "editors-" + hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    checker = checker_for(ws, profile.name, character.identity.backend)
    try:
        done = compare_editors(
            ws,
            catalog,
            character,
            arms,
            sources,
            prompts,
            seeds,
            ws.root / "evals" / eval_id,
            run_id,
            "editor_eval",
            eval_id,
            checker,
        )
    finally:
        for arm in arms:
            arm.editor.close()

    def per_arm(metric: str) -> str:
        return ", ".join(f"{a.name} {cell(done.metrics[a.name].get(metric), metric)}" for a in arms)

    summary = [
        f"Identity pass rate: {per_arm('pass_rate')}; verifier pass rate: {per_arm('verifier_pass_rate')}; "
        f"seconds per edit: {per_arm('seconds_per_edit')}.",
        f"{note.capitalize()}; {len(done.rows) // max(1, len(arms))} job(s) per editor, same prompts and seeds.",
        "Every edit checked once as enrichment checks it (same edit regions for every editor, no retries; "
        "docs/verification.md); failed:KIND counts the edits that failed that kind of check."
        if checker
        else "Edits not checked: verify.enabled is off in the settings.",
    ]
    summary += [
        f"Left out for every editor (not supported by {arm}): {', '.join(ids)}." for arm, ids in done.skipped.items()
    ]
    report = comparison_report(
        ws.root / "reports" / character.name / eval_id,
        f"{character.name}: editors compared ({', '.join(editors)})",
        summary,
        [(a.name, a.name) for a in arms],
        done.rows,
        done.metrics,
        done.out_dir,
        {s["image_id"]: ws.root / s["path"] for s in sources},
    )
    return EditorEvaluation(eval_id, done, [s["image_id"] for s in sources], note, report)
