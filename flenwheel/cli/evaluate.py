"""``flenwheel evaluate``: images or a LoRA's evaluation set scored as samples of a character (docs/evaluation.md).

Each sample gets a likeness (identity similarity to the character's references), its nearest training image of
the frozen version with a copy score, and a verdict: good, copy, weak, no_face, multi_face.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flenwheel.catalog import Catalog
from flenwheel.cli.common import CharacterArg, ProfileOpt, UserError, out, progress_bar, workspace
from flenwheel.dataset import versions
from flenwheel.store.objects import expand_paths

if TYPE_CHECKING:
    from flenwheel.evaluation import SampleScore, Summary


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)


def evaluate(
    ctx: typer.Context,
    character: CharacterArg,
    images: Annotated[
        Path | None, typer.Option("--images", help="a folder of images to score as samples (any trainer's, renders)")
    ] = None,
    lora: Annotated[
        str | None,
        typer.Option(
            "--lora",
            help="a FLUX LoRA to generate the evaluation set with: a lora_id, a name in configs/loras.yaml, or a "
            ".safetensors file or folder (diffusers, kohya/ComfyUI, ai-toolkit)",
        ),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(
            "--version",
            help="the frozen dataset version to compare with, e.g. v2 (default: the LoRA's, else the latest)",
        ),
    ] = None,
    profile: ProfileOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per image, then a summary object")] = False,
) -> None:
    """Score images as samples of CHARACTER: likeness, nearest training image and copy score, verdict (good, copy,
    weak, no_face, multi_face), and a summary; with --lora, generate the character's evaluation set first."""
    if (images is None) == (lora is None):
        raise UserError("give --images DIR (score a folder) or --lora PATH_OR_ID (generate and score), one of them")
    ws = workspace(ctx)
    char = ws.character(character)
    catalog = ws.catalog()
    if images is not None:
        files = _image_files(images)
        _score_folder(ws, catalog, char, files, resolve_version(catalog, character, version, None), as_json)
        return
    assert lora is not None
    from flenwheel.evaluation.lora import evaluate_lora, lora_under_test  # torch, diffusers
    from flenwheel.evaluation.scoring import configured_critic

    prof = ws.profile(profile)
    target = lora_under_test(ws, catalog, lora)
    chosen = resolve_version(catalog, character, version, target.version)
    config = {"character": character, "lora": target.pinned, "version": chosen, "profile": prof.name}
    with catalog.run("cli:evaluate", config) as run_id, progress_bar() as bar:
        task = bar.add_task("generating", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        ev = evaluate_lora(ws, catalog, char, lora, prof, chosen, run_id, configured_critic(ws, prof.name), progress)
    for score in ev.scores:
        _print_score(score, as_json)
    if ev.in_captions and not as_json:
        out.print(f"note: evaluation prompt(s) {', '.join(ev.in_captions)} are training captions of {chosen}")
    _print_summary(ev.summary, chosen, as_json, {"lora": ev.lora.key, "report": str(ev.report)})
    if not as_json:
        out.print(f"metrics: scope lora_eval, id {ev.lora.key}; samples: {ev.out_dir}; report: {ev.report}")


def resolve_version(catalog: Catalog, character: str, asked: str | None, default: str | None) -> str:
    """The frozen version to compare with: ``--version`` (``v2``, ``2`` or ``name@v2``), else ``default``, else the
    character's latest; a one-line error when there is none."""
    if asked:
        tag = asked.split("@", 1)[1] if "@" in asked else asked
        version_id = f"{character}@{tag if tag.startswith('v') else 'v' + tag}"
        if asked.split("@", 1)[0] not in (character, asked) or not catalog.version_exists(version_id):
            raise UserError(
                f"--version {asked}: {character} has no such dataset version (flenwheel dataset list {character})"
            )
        return version_id
    found = default or versions.latest_version(catalog, character)
    if found is None:
        raise UserError(
            f"{character} has no frozen dataset version to compare samples with: "
            f"run `flenwheel dataset freeze {character}`"
        )
    return found


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"--images {folder}: not a folder")
    files = expand_paths([folder])
    if not files:
        raise UserError(f"--images {folder}: no image files in it (jpg, png, webp, bmp, tif)")
    return files


def _score_folder(ws: Any, catalog: Catalog, char: Any, files: list[Path], version: str, as_json: bool) -> None:
    from flenwheel.evaluation import EvaluationError, SampleScorer, summarise
    from flenwheel.store.objects import ImageRejected

    scorer = SampleScorer(ws, catalog, char, version)
    scores = []
    with progress_bar() as bar:
        task = bar.add_task("scoring", total=len(files))
        for path in files:
            try:
                score = scorer.score_file(path)
            except ImageRejected as e:
                _print_unreadable(path, str(e), as_json)
            else:
                scores.append(score)
                _print_score(score, as_json)
            bar.advance(task)
    if not scores:
        raise EvaluationError(f"none of the {len(files)} file(s) could be read as an image")
    band = scorer.band
    _print_summary(
        summarise(scores), version, as_json, {"likeness_floor": band.likeness_floor, "copy_ceiling": band.copy_ceiling}
    )


def _print_score(score: SampleScore, as_json: bool) -> None:
    if as_json:
        out.print(json.dumps(score.to_json(), default=str), markup=False)
        return
    likeness = "-" if score.likeness is None else f"{score.likeness:.3f}"
    near = "-"
    if score.nearest:
        copy = "-" if score.copy_score is None else f"{score.copy_score:.3f}"
        near = f"{score.nearest[:12]} (copy score {copy})"
    adherence = "" if score.adherence is None else f", adherence {score.adherence:.0%}"
    out.print(f"{score.key}: {score.verdict}, likeness {likeness}, nearest {near}{adherence}", markup=False)


def _print_unreadable(path: Path, reason: str, as_json: bool) -> None:
    if as_json:
        out.print(json.dumps({"file": path.name, "error": reason}), markup=False)
    else:
        out.print(f"{path.name}: not scored ({reason})", markup=False)


def _print_summary(summary: Summary, version: str, as_json: bool, extra: dict[str, Any]) -> None:
    if as_json:
        out.print(json.dumps({"summary": True, "version": version, **summary.metrics(), **extra}), markup=False)
    else:
        out.print(f"summary against {version}: {summary.line()}", markup=False)
