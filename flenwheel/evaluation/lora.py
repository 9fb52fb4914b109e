"""A LoRA evaluated on the character's evaluation set: generated, scored, recorded, shown (``flenwheel evaluate
--lora``).

Any FLUX LoRA: one of the catalog's (by ``lora_id``), a name of configs/loras.yaml, or a file or folder — diffusers'
format, or kohya/ComfyUI (``lora_unet_...``) and others that diffusers' ``load_lora_weights`` converts itself, e.g.
a LoRA trained with ai-toolkit. Every evaluation prompt is sampled with every seed of the set through the profile's
generator (:func:`flenwheel.models.generate.text_to_image`, the call the flywheel generates with), and the
samples are then scored with the pipeline released, so the critic has the card to itself.

Outputs are evaluation artefacts, not candidates: images and ``samples.json`` (every sample's parameters and score)
under ``<root>/evals/lora-<key>/``, the summary in ``metrics`` (scope ``lora_eval``: id ``<key>`` for all samples,
``<key>:<prompt id>`` per prompt), and a page under ``<root>/reports/<character>/lora-eval-<key>/``. The key is the
catalog's ``lora_id``, ``library-<name>`` or ``file-<sha256 prefix>``, so one file is one key wherever it lies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character, LoraSpec, Profile
from flenwheel.core.files import atomic_write, file_sha256
from flenwheel.evaluation.scoring import CriticSource, EvaluationError, SampleScore, SampleScorer
from flenwheel.evaluation.summary import Summary, summarise
from flenwheel.models import runtime
from flenwheel.models.generate import text_to_image
from flenwheel.models.loras import StackEntry, lora_stack, resolve_lora_file
from flenwheel.models.refs import ModelError
from flenwheel.report.evaluation import lora_evaluation_report
from flenwheel.store.objects import encode_png, open_rgb
from flenwheel.store.workspace import Workspace

SCOPE = "lora_eval"


@dataclass(frozen=True)
class LoraUnderTest:
    key: str  # the metrics id: lora_id, library-<name> or file-<sha256 prefix>
    spec: LoraSpec
    pinned: str  # the resolved file's pinned ref (path or catalog id with its sha256)
    version: str | None  # the dataset version a catalog LoRA was trained on


@dataclass
class LoraEvaluation:
    lora: LoraUnderTest
    version: str
    scores: list[SampleScore]
    summary: Summary
    per_prompt: dict[str, Summary]
    out_dir: Path
    report: Path
    in_captions: list[str]  # evaluation prompts that are training captions of the version (should be none)


def lora_under_test(ws: Workspace, catalog: Catalog, ref: str) -> LoraUnderTest:
    """What ``--lora`` names: a catalog FLUX LoRA, a configs/loras.yaml name, or a file or folder."""
    row = catalog.lora(ref)
    library = ws.loras()
    if row is not None:
        if row["kind"] != "flux":
            raise EvaluationError(f"--lora {ref}: a {row['kind']} LoRA; evaluate takes FLUX LoRAs")
        spec, key, version = LoraSpec(ref=f"catalog:{ref}", applies_to="flux"), ref, row["dataset_version"]
    elif ref in library:
        spec, key, version = library[ref], f"library-{ref}", None
        if spec.applies_to != "flux":
            raise EvaluationError(f"--lora {ref}: configs/loras.yaml says it is for {spec.applies_to}, not FLUX")
    elif Path(ref).expanduser().exists():
        spec, key, version = LoraSpec(ref=str(Path(ref).expanduser().resolve()), applies_to="flux"), "", None
    else:
        raise EvaluationError(
            f"--lora {ref}: not a lora_id of the catalog (flenwheel sql 'SELECT lora_id FROM loras'), a name in "
            "configs/loras.yaml, or an existing .safetensors file or folder"
        )
    try:
        path, pinned = resolve_lora_file(spec, ws, catalog)
    except ModelError as e:
        raise EvaluationError(str(e)) from None
    return LoraUnderTest(key or f"file-{file_sha256(path)[:16]}", spec, pinned, version)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:96]


def evaluate_lora(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    ref: str,
    profile: Profile,
    version: str,
    run_id: str | None,
    critic: CriticSource = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> LoraEvaluation:
    """Generate the evaluation set with the LoRA ``ref``, score it against ``version``, record and show it.

    ``on_progress(stage, done, total)`` is told of each sample generated and scored.
    """
    lora = lora_under_test(ws, catalog, ref)
    prompts, seeds = ws.evaluation_set(character)
    scorer = SampleScorer(ws, catalog, character, version, critic)
    out_dir = ws.root / "evals" / f"lora-{_slug(lora.key)}"
    jobs = [(p, seed) for p in prompts.values() for seed in seeds]
    in_captions = scorer.in_training_captions(
        {p.id: p.prompt.replace("{trigger}", character.trigger) for p in prompts.values()}
    )
    records: list[dict[str, Any]] = []
    manager = runtime.model_manager(ws, profile.name, run_id)
    own = StackEntry(lora.key, lora.spec, lora.spec.scale)
    try:
        for done, (prompt, seed) in enumerate(jobs, start=1):
            text = prompt.prompt.replace("{trigger}", character.trigger)
            stack = lora_stack(ws, profile.generator, prompt.category, [own])
            made = text_to_image(manager, stack, text, prompt.steps, seed, catalog)
            name = f"{prompt.id}-seed{seed}.png"
            atomic_write(out_dir / name, encode_png(made.image))
            records.append(
                {
                    "file": name,
                    "prompt_id": prompt.id,
                    "prompt": text,
                    "seed": seed,
                    "steps": made.steps,
                    "guidance": made.sampling.guidance,
                    "model_ref": made.model_ref,
                    "loras": made.loras,
                }
            )
            if on_progress:
                on_progress("generating", done, len(jobs))
    finally:
        runtime.release_models()  # the pipeline leaves the card before the critic may load
    scores = []
    for done, ((prompt, seed), record) in enumerate(zip(jobs, records, strict=True), start=1):
        image = open_rgb(out_dir / record["file"])
        scores.append(scorer.score(image, record["file"], prompt_id=prompt.id, seed=seed, checks=prompt.checks))
        if on_progress:
            on_progress("scoring", done, len(jobs))
    summary = summarise(scores)
    per_prompt = {p: summarise([s for s in scores if s.prompt_id == p]) for p in prompts}
    if run_id is not None:
        catalog.add_metrics(run_id, SCOPE, lora.key, summary.metrics())
        for prompt_id, part in per_prompt.items():
            catalog.add_metrics(run_id, SCOPE, f"{lora.key}:{prompt_id}", part.metrics())
    detail = {
        "lora": lora.pinned,
        "key": lora.key,
        "character": character.name,
        "version": version,
        "band": scorer.band.__dict__,
        "profile": profile.name,
        "samples": [{**r, **s.to_json()} for r, s in zip(records, scores, strict=True)],
    }
    atomic_write(out_dir / "samples.json", json.dumps(detail, indent=1, default=str).encode())
    report = _page(ws, character, lora, version, scorer, scores, records, summary, per_prompt, out_dir, in_captions)
    return LoraEvaluation(lora, version, scores, summary, per_prompt, out_dir, report, in_captions)


def _page(
    ws: Workspace,
    character: Character,
    lora: LoraUnderTest,
    version: str,
    scorer: SampleScorer,
    scores: list[SampleScore],
    records: list[dict[str, Any]],
    summary: Summary,
    per_prompt: dict[str, Summary],
    out_dir: Path,
    in_captions: list[str],
) -> Path:
    paths = {m.image_id: m.path for m in scorer.members}
    rows = []
    for record, score in zip(records, scores, strict=True):
        near = paths.get(score.nearest) if score.nearest else None
        copy = "-" if score.copy_score is None else f"{score.copy_score:.2f}"
        rows.append(
            {
                **record,
                "file": out_dir / record["file"],
                "label": score.label(),
                "nearest_path": near,
                "nearest_label": f"nearest {score.nearest[:8]}, copy score {copy}" if near else "",
            }
        )
    band = scorer.band
    lines = [
        f"LoRA {lora.pinned}, against dataset version {version} ({len(scorer.members)} training image(s) with a face).",
        summary.line() + ".",
        f"Band ({scorer.backend.name}): likeness floor {band.likeness_floor:.2f}, copy ceiling {band.copy_ceiling:.2f} "
        f"({band.source}).",
    ]
    if in_captions:
        lines.append(
            f"Evaluation prompt(s) {', '.join(in_captions)} are training captions of {version}: their samples measure "
            "recall of training photos, not generalisation."
        )
    metrics = {"all": summary.metrics(), **{p: s.metrics() for p, s in per_prompt.items()}}
    out = ws.root / "reports" / character.name / f"lora-eval-{_slug(lora.key)}"
    return lora_evaluation_report(out, f"{character.name}: LoRA {lora.key} on the evaluation set", lines, rows, metrics)
