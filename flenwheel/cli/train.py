"""Training commands: the FLUX character LoRA, and flywheel 2's editor LoRA with its evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, get_args

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from flenwheel.cli.common import CharacterArg, ProfileOpt, UserError, err, id_list, out, workspace
from flenwheel.core.types import EDIT_OPS, EditorName
from flenwheel.dataset import versions
from flenwheel.store.locks import character_lock

if TYPE_CHECKING:
    from flenwheel.training import TrainResult


def register(app: typer.Typer) -> None:
    for name, command in (
        ("train", train),
        ("train-edit", train_edit),
        ("eval-edit", eval_edit),
        ("eval-editors", eval_editors),
    ):
        app.command(name)(command)


def train(
    ctx: typer.Context,
    character: CharacterArg,
    dataset: Annotated[str | None, typer.Option(help="dataset version (default: the latest frozen one)")] = None,
    profile: ProfileOpt = None,
    steps: Annotated[int | None, typer.Option(min=1, help="override the profile's step count")] = None,
    resume: Annotated[bool, typer.Option("--resume/--restart", help="continue from the last checkpoint")] = True,
) -> None:
    """Train a FLUX.1-dev LoRA of CHARACTER; the exported checkpoint is the one whose samples are most often good,
    follow their prompts and never copy a training image (docs/training.md)."""
    from flenwheel.training import train_flux  # torch, diffusers

    ws = workspace(ctx)
    char = ws.character(character, profile)
    prof = ws.profile(profile)
    catalog = ws.catalog()
    version = dataset or versions.latest_version(catalog, character)
    if version is None:
        raise UserError(f"{character} has no frozen dataset version: run `flenwheel dataset freeze {character}`")
    config = {"character": character, "dataset": version, "profile": prof.name, "steps": steps, "resume": resume}
    with (
        character_lock(ws, character, "flenwheel train"),
        catalog.run("cli:train", config) as run_id,
        training_progress(steps or prof.trainer.steps) as progress,
    ):
        result = train_flux(ws, catalog, char, version, prof, run_id, steps, resume=resume, on_progress=progress)
    _print_training(result, f"dataset {version}")


@contextmanager
def training_progress(total: int) -> Iterator[Callable[[int, int, float, float], None]]:
    """A progress bar with loss, s/step and ETA; yields the trainer's progress callback."""
    with Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[sps]:.2f} s/step"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("train", total=total, loss=float("nan"), sps=0.0)

        def progress(step: int, total: int, loss: float, sec: float) -> None:
            bar.update(task, completed=step, total=total, loss=loss, sps=sec)

        yield progress


def _print_training(result: TrainResult, trained_on: str) -> None:
    from flenwheel.report.format import cell  # matplotlib, with the report package

    if not result.trained:
        out.print(f"already trained: {result.lora_id}")
    out.print(f"LoRA {result.lora_id} ({trained_on}): chosen checkpoint step {result.chosen_step}")
    for sc in sorted(result.scores, key=lambda x: x.step):
        mark = "  <- chosen" if sc.step == result.chosen_step else ""
        if sc.composite is None:
            rate, sim = cell(sc.pass_rate, "pass_rate"), cell(sc.mean_similarity, "mean_similarity")
            out.print(f"  step {sc.step:6d}: identity pass rate {rate:>4s}, mean similarity {sim}{mark}")
            continue
        shown = {k: cell(getattr(sc, k), k) for k in ("good_rate", "copy_rate", "adherence", "mean_likeness")}
        out.print(
            f"  step {sc.step:6d}: good {shown['good_rate']}, copies {shown['copy_rate']}, adherence "
            f"{shown['adherence']}, likeness {shown['mean_likeness']}, composite {sc.composite:+.2f}{mark}"
        )
    if result.choice:
        out.print(f"why: {result.choice}")
    out.print(f"diffusers: {result.weights}\nComfyUI:   {result.comfy_weights}")


def train_edit(
    ctx: typer.Context,
    character: CharacterArg,
    profile: ProfileOpt = None,
    steps: Annotated[int | None, typer.Option(min=1, help="override the profile's step count")] = None,
    resume: Annotated[bool, typer.Option("--resume/--restart", help="continue from the last checkpoint")] = True,
    ops: Annotated[str, typer.Option(help="which approved edits train it: edit (Qwen outputs), augment")] = "edit",
) -> None:
    """Train CHARACTER's editor LoRA (the profile's Qwen-Image-Edit, 2509 or 2511) on its approved (before,
    instruction, after) triplets."""
    from flenwheel.training import train_edit_lora  # torch, diffusers

    ws = workspace(ctx)
    char = ws.character(character, profile)
    prof = ws.profile(profile)
    chosen = id_list([ops])
    bad = sorted(set(chosen) - set(EDIT_OPS))
    if bad or not chosen:
        raise UserError(f"--ops: use edit and/or augment (got {ops!r})")
    catalog = ws.catalog()
    config = {"character": character, "profile": prof.name, "steps": steps, "resume": resume, "ops": chosen}
    with (
        character_lock(ws, character, "flenwheel train-edit"),
        catalog.run("cli:train-edit", config) as run_id,
        training_progress(steps or prof.edit_trainer.steps) as bar,
    ):
        result = train_edit_lora(ws, catalog, char, prof, run_id, steps, chosen, resume=resume, on_progress=bar)
    _print_training(result, "approved triplets")
    out.print(f"evaluate it: flenwheel eval-edit {character} --lora {result.lora_id}")


def eval_edit(
    ctx: typer.Context,
    character: CharacterArg,
    lora: Annotated[str, typer.Option("--lora", help="the editor LoRA's lora_id")],
    profile: ProfileOpt = None,
    prompts: Annotated[
        list[str] | None, typer.Option("--prompts", help="enrichment prompt ids (comma-separated)")
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, max=16, help="seeds per input and prompt")] = 1,
) -> None:
    """Edit held-out sources with the base editor and with base + LoRA; compare how well each keeps identity."""
    from flenwheel.report.format import cell  # matplotlib, with the report package
    from flenwheel.training import evaluate_edit_lora  # torch, diffusers

    ws = workspace(ctx)
    char = ws.character(character, profile)
    prof = ws.profile(profile)
    catalog = ws.catalog()
    config = {"character": character, "lora": lora, "profile": prof.name, "prompts": prompts, "seeds": seeds}
    with catalog.run("cli:eval-edit", config) as run_id:
        ev = evaluate_edit_lora(ws, catalog, char, lora, prof, run_id, id_list(prompts) or None, range(seeds))
    for arm, values in ev.metrics.items():
        show = {k: cell(values.get(k), k) for k in ("n", "pass_rate", "mean_similarity")}
        out.print(
            f"{arm:5s}: {show['n']} edit(s), identity pass rate {show['pass_rate']}, "
            f"mean similarity {show['mean_similarity']}"
        )
    out.print(f"report: {ev.report}")


def eval_editors(
    ctx: typer.Context,
    character: CharacterArg,
    editors: Annotated[
        str, typer.Option(help="editors to compare, comma-separated (qwen, vibe, augment)")
    ] = "qwen,vibe",
    profile: ProfileOpt = None,
    prompts: Annotated[
        list[str] | None, typer.Option("--prompts", help="enrichment prompt ids (comma-separated)")
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, max=16, help="seeds per input and prompt")] = 1,
    sources: Annotated[
        list[str] | None, typer.Option("--sources", help="source image ids (default: the held-out sources)")
    ] = None,
) -> None:
    """Edit the same held-out sources with each editor (same prompts, seeds); compare identity, verifier pass
    rate and failed checks (each edit checked as enrichment checks it), seconds per edit and peak memory, per
    editor and per prompt category."""
    from flenwheel.editing.compare import evaluate_editors  # torch, diffusers
    from flenwheel.report.format import cell

    ws = workspace(ctx)
    char = ws.character(character, profile)
    prof = ws.profile(profile)
    catalog = ws.catalog()
    names = id_list([editors])
    unknown = sorted(set(names) - set(get_args(EditorName)))
    if unknown:
        raise UserError(f"unknown editor(s) {', '.join(unknown)}: use {', '.join(get_args(EditorName))}")
    source_ids = [catalog.resolve_image_id(s) for s in id_list(sources)] or None
    config = {
        "character": character,
        "editors": names,
        "profile": prof.name,
        "prompts": prompts,
        "seeds": seeds,
        "sources": source_ids,
    }
    with catalog.run("cli:eval-editors", config) as run_id:
        ev = evaluate_editors(
            ws, catalog, char, names, prof, run_id, id_list(prompts) or None, range(seeds), source_ids
        )
    table = Table(
        "editor", "category", "edits", "identity", "verifier", "failed checks", "s/edit", "peak GiB", title=ev.eval_id
    )
    for key, m in ev.comparison.metrics.items():
        editor, _, category = key.partition(":")
        failed = ", ".join(
            f"{name.removeprefix('failed:')} {cell(n, name)}"
            for name, n in m.items()
            if name.startswith("failed:") and n
        )
        n, identity, verifier, seconds, peak = (
            cell(m.get(k), k) for k in ("n", "pass_rate", "verifier_pass_rate", "seconds_per_edit", "peak_gib")
        )
        table.add_row(
            editor,
            category or "all",
            n,
            identity,
            verifier,
            failed or ("none" if verifier != "-" else "-"),
            seconds,
            peak,
        )
    out.print(table)
    out.print(f"{ev.sources_note}; report: {ev.report}")
