"""Flywheel commands: enrich, run flywheel 1, rewrite a report, serve the deployments to a Prefect server.

``enrich`` and ``flywheel`` run their Prefect flows in this process. Without a configured server
(``PREFECT_API_URL``) they start a local Prefect API that dies with the command (:mod:`flenwheel.flows.local_api`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from flenwheel.cli.common import (
    EXIT_AWAITING_REVIEW,
    CharacterArg,
    EditorOpt,
    ProfileOpt,
    ReviewOpt,
    UserError,
    err,
    id_list,
    out,
    params,
    workspace,
)
from flenwheel.core.types import EditorChoice, ReviewMode
from flenwheel.store.locks import CharacterBusy

if TYPE_CHECKING:
    from flenwheel.dataset.iteration import FlywheelResult
    from flenwheel.flows.enrich import NightlyOutcome

ClusterOpt = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        metavar="ADDRESS",
        help="run the GPU-bound batches on the Dask cluster at ADDRESS (tcp://HOST:PORT; docs/scale.md); "
        "default: cluster.address of configs/flenwheel.yaml; 'local': in this process",
    ),
]


def register(app: typer.Typer) -> None:
    for command in (enrich, flywheel, nightly, watch, report, serve):
        app.command()(command)


def enrich(
    ctx: typer.Context,
    character: CharacterArg,
    editor: EditorOpt = "augment",
    profile: ProfileOpt = None,
    prompts: Annotated[list[str] | None, typer.Option("--prompts", help="prompt ids (comma-separated)")] = None,
    seeds: Annotated[int, typer.Option(min=1, max=64, help="seeds per source and prompt")] = 2,
    review: ReviewOpt = "fiftyone",
    wait: Annotated[bool, typer.Option("--wait", help="pause at the review gate instead of exiting")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="edit jobs per task")] = 16,
    cluster: ClusterOpt = None,
    fill_gaps: Annotated[
        bool, typer.Option("--fill-gaps", help="only the sources x prompts that fill the thinnest coverage bins")
    ] = False,
    budget: Annotated[
        int | None, typer.Option(min=1, help="--fill-gaps: edit jobs at most (default: coverage.budget)")
    ] = None,
) -> None:
    """Enrich CHARACTER's source photos (source x prompt x seed not yet done), score them, open the review gate.

    With --fill-gaps only the jobs aimed at the set's thinnest coverage bins, within --budget (docs/coverage.md).

    Exit status 3 when the run stopped at the review gate: review, then run the same command again.
    """
    from flenwheel.flows.enrich import EnrichParams  # prefect, torch
    from flenwheel.flows.enrich import enrich as enrich_flow
    from flenwheel.flows.local_api import prefect_api

    ws = workspace(ctx)
    library = ws.prompt_library(ws.character(character))
    unknown = sorted(set(id_list(prompts)) - set(library))
    if unknown:  # refused before a flow run starts, in one line
        raise UserError(f"--prompts: unknown prompt id(s) {', '.join(unknown)}; known: {', '.join(sorted(library))}")
    chosen = params(
        EnrichParams,
        character=character,
        editor=editor,
        profile=profile,
        prompts=id_list(prompts) or None,
        seeds=seeds,
        review=review,
        wait=wait,
        batch_size=batch_size,
        cluster=cluster,
        fill_gaps=fill_gaps,
        budget=budget,
    )
    if budget is not None and not fill_gaps:
        raise UserError("--budget applies to --fill-gaps: add --fill-gaps or leave out --budget")
    with prefect_api(notify=err.print):
        result = enrich_flow(chosen, root=str(ws.root), configs=str(ws.configs_dir))
    if result.status == "busy":
        raise CharacterBusy(result.message)
    out.print(f"{result.images} new image(s) from {result.jobs} job(s)")
    if result.status == "awaiting_review":
        out.print(result.message, markup=False)
        raise typer.Exit(EXIT_AWAITING_REVIEW)
    if result.gate is not None:
        g = result.gate
        out.print(f"gate {g.gate_id}: {g.approved} approved, {g.rejected} rejected, {g.pending} pending")


def flywheel(
    ctx: typer.Context,
    character: CharacterArg,
    iterations: Annotated[int, typer.Option(help="iterations the character should have (done ones are skipped)")] = 2,
    profile: ProfileOpt = None,
    editor: EditorOpt = "configured",
    review: ReviewOpt = "fiftyone",
    wait: Annotated[bool, typer.Option("--wait", help="pause at review gates instead of exiting")] = False,
    enrich_seeds: Annotated[int, typer.Option(help="seeds per source and enrichment prompt")] = 2,
    fill_gaps: Annotated[
        bool, typer.Option(help="enrich only the sources x prompts that fill the thinnest coverage bins")
    ] = True,
    budget: Annotated[
        int | None, typer.Option(min=1, help="edit jobs per enrichment at most (default: coverage.budget)")
    ] = None,
    synthetic_prompts: Annotated[list[str] | None, typer.Option(help="synthetic prompt ids (comma-separated)")] = None,
    synthetic_seeds: Annotated[int, typer.Option(help="seeds per synthetic prompt")] = 2,
    train_steps: Annotated[int | None, typer.Option(help="override the profile's training steps")] = None,
    max_synthetic_share: Annotated[float, typer.Option(help="cap on synthetic images in a version")] = 0.5,
    min_new_synthetics: Annotated[int, typer.Option(help="stop before retraining with fewer new synthetics")] = 1,
    cluster: ClusterOpt = None,
) -> None:
    """Run flywheel 1 for CHARACTER (enrich, review, freeze, train, generate, review, retrain, report).

    Exit status 3 when the run stopped at a review gate: review, then run the same command again.
    """
    from flenwheel.flows.flywheel import FlywheelParams  # prefect, torch
    from flenwheel.flows.flywheel import flywheel as flywheel_flow
    from flenwheel.flows.local_api import prefect_api

    ws = workspace(ctx)
    ws.character(character)
    chosen = params(
        FlywheelParams,
        character=character,
        iterations=iterations,
        profile=profile,
        editor=editor,
        review=review,
        wait=wait,
        enrich_seeds=enrich_seeds,
        fill_gaps=fill_gaps,
        fill_budget=budget,
        synthetic_prompts=id_list(synthetic_prompts) or None,
        synthetic_seeds=synthetic_seeds,
        train_steps=train_steps,
        max_synthetic_share=max_synthetic_share,
        min_new_synthetics=min_new_synthetics,
        cluster=cluster,
    )
    with prefect_api(notify=err.print):
        result = flywheel_flow(chosen, root=str(ws.root), configs=str(ws.configs_dir))
    if result.status == "busy":
        raise CharacterBusy(result.message)
    print_flywheel(result)
    if result.status == "awaiting_review":
        raise typer.Exit(EXIT_AWAITING_REVIEW)


def nightly(
    ctx: typer.Context,
    characters: Annotated[list[str] | None, typer.Option(help="characters (comma-separated); default: all")] = None,
    editor: Annotated[
        EditorChoice | None, typer.Option(help="default: nightly.editor of configs/flenwheel.yaml")
    ] = None,
    review: Annotated[ReviewMode | None, typer.Option(help="default: nightly.review of configs/flenwheel.yaml")] = None,
    profile: ProfileOpt = None,
    seeds: Annotated[int, typer.Option(min=1, max=64, help="seeds per source and prompt")] = 2,
    cluster: ClusterOpt = None,
) -> None:
    """Run the nightly enrichment now: ingest new photos of each character's source folder, enrich them and queue
    the candidates for review (never waits at a gate). A character busy with another run is skipped."""
    from flenwheel.flows.enrich import nightly_enrich  # prefect, torch
    from flenwheel.flows.local_api import prefect_api

    ws = workspace(ctx)
    chosen = nightly_params(ws, characters, editor, review, profile, seeds, cluster)
    with prefect_api(notify=err.print):
        outcomes = nightly_enrich(chosen, root=str(ws.root), configs=str(ws.configs_dir))
    print_nightly(outcomes)


def print_nightly(outcomes: list[NightlyOutcome]) -> None:
    for o in outcomes:
        if o.skipped:
            out.print(f"{o.character}: skipped: {o.skipped}", markup=False)
            continue
        made = o.enrichment.images if o.enrichment else 0
        rejected = f"; rejected {', '.join(o.rejected)}" if o.rejected else ""
        out.print(
            f"{o.character}: {o.new_photos} new photo(s), {made} new candidate(s), {o.pending_review} "
            f"waiting for review{rejected}",
            markup=False,
        )


def watch(
    ctx: typer.Context,
    characters: Annotated[list[str] | None, typer.Option(help="characters (comma-separated); default: all")] = None,
    editor: Annotated[
        EditorChoice | None, typer.Option(help="default: nightly.editor of configs/flenwheel.yaml")
    ] = None,
    review: Annotated[ReviewMode | None, typer.Option(help="default: nightly.review of configs/flenwheel.yaml")] = None,
    profile: ProfileOpt = None,
    seeds: Annotated[int, typer.Option(min=1, max=64, help="seeds per source and prompt")] = 2,
    quiet: Annotated[float, typer.Option(min=0.1, help="seconds without new files that end a burst")] = 5.0,
    poll: Annotated[float, typer.Option(min=0.05, help="seconds between looks at the folders")] = 1.0,
    runs: Annotated[int | None, typer.Option(min=1, help="stop after this many runs (default: until Ctrl+C)")] = None,
    cluster: ClusterOpt = None,
    emit_only: Annotated[
        bool,
        typer.Option(
            "--emit-only",
            help="only emit the Prefect event flenwheel.photos.landed; the nightly-enrich deployment that "
            "`flenwheel serve` serves runs on it (needs a Prefect server)",
        ),
    ] = False,
) -> None:
    """Watch each character's source folder and run the nightly enrichment for it as soon as new photos land (one
    run per burst of files, once the folder is quiet); idempotent with the nightly run."""
    from flenwheel.flows.local_api import prefect_api
    from flenwheel.flows.watch import WatchRun
    from flenwheel.flows.watch import watch as watch_folders

    ws = workspace(ctx)
    chosen = nightly_params(ws, characters, editor, review, profile, seeds, cluster)
    for name in chosen.characters or []:
        ws.character(name)

    def report_run(run: WatchRun) -> None:
        print_nightly([run.outcome])

    with prefect_api(notify=err.print):
        try:
            watch_folders(
                ws,
                chosen,
                quiet,
                poll,
                runs,
                on_run=report_run,
                on_ready=lambda: err.print("watching; Ctrl+C stops"),
                emit_only=emit_only,
                on_event=lambda name, files: out.print(f"{name}: new photos ({files} file(s))"),
            )
        except KeyboardInterrupt:
            err.print("stopped watching")


def print_flywheel(result: FlywheelResult) -> None:
    if result.enrichment:
        out.print(f"enrichment: {result.enrichment.images} new image(s) from {result.enrichment.jobs} job(s)")
    for it in result.iterations:
        if it.report:
            met = "met" if it.target_met else "not met"
            out.print(
                f"iteration {it.number}: dataset {it.dataset_version}, LoRA {it.lora_id}, "
                f"{it.generated} synthetic image(s), 70% target {met}"
            )
            out.print(f"  report: {it.report}")
        else:
            out.print(f"iteration {it.number}: {it.status}")
    if result.status != "completed":
        out.print(f"{result.status}: {result.message}", markup=False)


def report(
    ctx: typer.Context,
    character: CharacterArg,
    iteration: Annotated[int | None, typer.Option(help="iteration number (default: the latest with a LoRA)")] = None,
) -> None:
    """(Re)write the HTML report of a flywheel iteration from the catalog and print its path."""
    from flenwheel.report import iteration_report  # matplotlib

    ws = workspace(ctx)
    ws.character(character)
    catalog = ws.catalog()
    numbers = [r["number"] for r in catalog.iterations(character) if r["lora_id"]]
    if not numbers:
        raise UserError(f"{character} has no flywheel iteration with a LoRA yet: run `flenwheel flywheel {character}`")
    number = iteration or numbers[-1]
    if number not in numbers:
        raise UserError(f"iteration {number} of {character} has no LoRA (iterations with one: {numbers})")
    settings = ws.settings
    out.print(str(iteration_report(ws.root, catalog, character, number, settings.review, settings.coverage).path))


def serve(ctx: typer.Context) -> None:
    """Serve the `flywheel`, `editor-flywheel` and `nightly-enrich` deployments to a Prefect server."""
    from flenwheel.flows.deployments import has_server  # prefect, torch
    from flenwheel.flows.deployments import serve as serve_deployments

    ws = workspace(ctx)
    if not has_server():
        err.print(
            "warning: PREFECT_API_URL is not set, so Prefect serves against a temporary server that no UI sees. "
            "Run `prefect server start` and `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` first."
        )
    nightly = ws.settings.nightly
    err.print(
        f"serving flywheel and editor-flywheel (run them from the Prefect UI) and nightly-enrich "
        f"({nightly.cron}, {nightly.timezone}) for data root {ws.root}"
    )
    serve_deployments(ws)


def nightly_params(
    ws: Any,
    characters: str | None,
    editor: str | None,
    review: str | None,
    profile: str | None,
    seeds: int,
    cluster: str | None,
) -> Any:
    """The nightly run's parameters from the command line, ``nightly:`` of configs/flenwheel.yaml filling the gaps
    (shared by `nightly` and `watch`)."""
    from flenwheel.flows.enrich import NightlyParams  # prefect, torch

    defaults = ws.settings.nightly
    return params(
        NightlyParams,
        characters=id_list(characters) or None,
        editor=editor or defaults.editor,
        review=review or defaults.review,
        profile=profile,
        seeds=seeds,
        cluster=cluster,
    )
