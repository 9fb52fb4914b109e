"""The offline demo's story: sample photos shipped in installed packages -> the whole flywheel on cpu-tiny ->
what to look at (a catalog query, a lineage, the report, the FiftyOne command) -> how to run the real models."""

from __future__ import annotations

from typing import Annotated

import typer

from flenwheel.cli.catalog import print_lineage, sql
from flenwheel.cli.common import EditorOpt, ProfileOpt, err, out, workspace
from flenwheel.cli.flywheel import print_flywheel
from flenwheel.cli.samples import sample_photos
from flenwheel.store.ingest import ingest_paths


def register(app: typer.Typer) -> None:
    app.command()(demo)


DEMO_CHARACTER = "hopper"


def demo(
    ctx: typer.Context,
    iterations: Annotated[int, typer.Option(min=1, max=5, help="flywheel iterations")] = 2,
    profile: ProfileOpt = None,
    editor: EditorOpt = "augment",
) -> None:
    """Offline demo on a CPU profile (cpu-tiny; cpu-tiny-open: the open stack's twins and the sface backend):
    sample photos -> enrichment (augment, or --editor qwen/klein with the tiny twin) -> identity -> auto review ->
    v1 -> tiny LoRA -> synthetic images -> auto review -> v2 -> retrain -> report with the licences on record."""
    import diffusers  # torch, prefect: only the demo pays for them
    import transformers

    from flenwheel.flows.flywheel import FlywheelParams
    from flenwheel.flows.flywheel import flywheel as flywheel_flow
    from flenwheel.flows.local_api import prefect_api

    for lib in (diffusers, transformers):  # loading bars of tiny models in seconds are noise here
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    ws = workspace(ctx)
    prof = ws.profile(profile or "cpu-tiny")
    if prof.device != "cpu":
        err.print(f"the demo runs offline on a CPU profile (cpu-tiny, cpu-tiny-open); {prof.name} is for {prof.device}")
        raise typer.Exit(2)
    catalog = ws.catalog()
    out.print("[bold]1. ingest sample photos shipped inside installed packages[/bold]")
    for character, paths in sample_photos().items():
        ws.character(character)
        with catalog.run("cli:demo", {"character": character, "paths": [str(p) for p in paths]}) as run_id:
            for o in ingest_paths(ws, catalog, character, paths, run_id):
                out.print(f"  {o.status:9s} {character:10s} {o.path.name}: {o.image_id or o.reason}")
    out.print(f"\n[bold]2. flywheel 1 for {DEMO_CHARACTER}, {iterations} iteration(s) on {prof.name}[/bold]")
    out.print(
        f"  Tiny random-weight models stand in for {prof.family_of('generator')}: their images are noise by design, "
        "so no synthetic\n  image keeps the identity and the demo retrains anyway (min_new_synthetics=0) to show "
        "the loop."
    )
    params = FlywheelParams(
        character=DEMO_CHARACTER,
        iterations=iterations,
        profile=prof.name,
        editor=editor,
        review="auto",
        enrich_seeds=1,
        synthetic_prompts=["pose-portrait", "pose-three-quarter", "scene-park", "light-studio"],
        synthetic_seeds=1,
        min_new_synthetics=0,
    )
    with prefect_api(notify=err.print):
        result = flywheel_flow(params, root=str(ws.root), configs=str(ws.configs_dir))
    print_flywheel(result)
    out.print(f"\n[bold]catalog[/bold]: {ws.catalog_path}")
    query = (
        "SELECT v.version_id, v.n_images, l.lora_id, l.chosen_checkpoint, m.name, round(m.value, 3) AS value "
        "FROM iterations it JOIN dataset_versions v ON v.version_id = it.dataset_version "
        "JOIN loras l ON l.lora_id = it.lora_id "
        "JOIN metrics m ON m.scope = 'iteration' AND m.scope_id = it.character || ':' || it.number "
        "WHERE m.name IN ('pass_rate', 'n') ORDER BY it.number, m.name"
    )
    out.print(f'\n[bold]flenwheel sql "{query}"[/bold]')
    ctx.invoke(sql, ctx=ctx, query=query, fmt="table")
    first = catalog.image_ids(DEMO_CHARACTER, ("augment",))[:1]
    if first:
        out.print(f"\n[bold]flenwheel lineage {first[0][:12]}[/bold]")
        print_lineage(catalog.lineage(first[0]))
    reports = result.reports
    reports = reports or [ws.root / r["report_path"] for r in catalog.iterations(DEMO_CHARACTER) if r["report_path"]]
    out.print(f"\n[bold]report[/bold]: {reports[-1] if reports else '-'}")
    out.print(
        f"[bold]review in FiftyOne[/bold]: flenwheel --root {ws.root} review serve {DEMO_CHARACTER}  "
        f"(then open http://{ws.settings.review.app_address}:{ws.settings.review.app_port})"
    )
    gpu = "gpu-24gb-open" if prof.name.endswith("-open") else "gpu-24gb"
    out.print(
        "[bold]real models[/bold]: on a 24 GB GPU with the weights in the Hugging Face cache, run\n"
        f"  flenwheel flywheel {DEMO_CHARACTER} --profile {gpu}"
        " --editor qwen --review fiftyone\n  (flenwheel models list shows each model's licence)"
    )
