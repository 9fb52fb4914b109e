"""Identity commands: score any files, filter the catalog's images, calibrate a character's threshold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from flenwheel import identity as idn
from flenwheel.cli.common import CharacterArg, UserError, group, out, progress_bar, workspace
from flenwheel.core.types import IdentityBackendName
from flenwheel.store.objects import expand_paths, load_rgb

identity_app = group("Face identity: score, filter and calibrate.")

BackendOpt = Annotated[IdentityBackendName | None, typer.Option("--backend", help="default: the character's")]


@identity_app.command("score")
def identity_score(
    ctx: typer.Context,
    character: CharacterArg,
    paths: Annotated[list[Path], typer.Argument(help="image files or folders (stored or not)")],
    backend: BackendOpt = None,
    refs: Annotated[
        list[Path] | None, typer.Option("--ref", help="score against these photos instead of the catalog's set")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per file")] = False,
) -> None:
    """Score any image files against CHARACTER; nothing is added to the catalog.

    Exit status 1 when a file could not be read.
    """
    ws = workspace(ctx)
    char = ws.character(character)
    files = expand_paths(paths)
    if not files:
        raise UserError("no image files found in " + ", ".join(str(p) for p in paths))
    if refs:
        be = idn.load_backend(backend or char.identity.backend, ws.settings.identity)
        refset = idn.build_reference_set(be, character, [(str(p), load_rgb(p)) for p in expand_paths(refs)])
    else:
        catalog = ws.catalog()
        with catalog.run("cli:identity-score", {"character": character, "backend": backend}):
            refset = idn.reference_set_for(ws, catalog, char, backend)
    judge = idn.judge_for(ws, char, refset)
    failures = 0
    with progress_bar() as bar:
        task = bar.add_task("scoring", total=len(files))
        for key, result in idn.score_files(judge, [(str(p), str(p)) for p in files]):
            bar.advance(task)
            if isinstance(result, str):
                failures += 1
                record: dict[str, Any] = {"path": key, "verdict": None, "error": result}
            else:
                record = {"path": key, **result.to_json()}
            if as_json:
                out.print(json.dumps(record), markup=False)
            elif record["verdict"] is None:
                out.print(f"ERROR    {key}: {record['error']}", markup=False)
            else:
                sim = "-" if record["similarity"] is None else f"{record['similarity']:.3f}"
                thr = "-" if record["threshold"] is None else f"{record['threshold']:.3f}"
                out.print(
                    f"{record['verdict']:14s} similarity {sim} threshold {thr} faces {record['n_faces']}  {key}",
                    markup=False,
                )
    raise typer.Exit(1 if failures else 0)


@identity_app.command("filter")
def identity_filter(
    ctx: typer.Context,
    character: CharacterArg,
    backend: BackendOpt = None,
    rescore: Annotated[bool, typer.Option("--rescore", help="score again images already scored")] = False,
) -> None:
    """Score every unscored catalog image of CHARACTER against its reference set, in batches."""
    ws = workspace(ctx)
    char = ws.character(character)
    catalog = ws.catalog()
    config = {
        "character": character,
        "backend": backend,
        "rescore": rescore,
        "identity": ws.settings.identity.model_dump(mode="json"),
    }
    with catalog.run("cli:identity-filter", config) as run_id, progress_bar() as bar:
        task = bar.add_task("identity", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        counts = idn.filter_images(
            ws, catalog, char, backend_name=backend, rescore=rescore, run_id=run_id, on_progress=progress
        )
    total = sum(counts.values())
    if not total:
        out.print("nothing to score: every image already has a score for the current reference set")
        return
    from flenwheel.report.format import cell  # matplotlib, with the report package

    table = Table(title=f"{character}: identity verdicts of {total} image(s)")
    table.add_column("verdict")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    for verdict, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        table.add_row(verdict, cell(n, "images"), cell(n / total, "share"))
    out.print(table)


@identity_app.command("calibrate")
def identity_calibrate(
    ctx: typer.Context,
    character: CharacterArg,
    backend: BackendOpt = None,
) -> None:
    """Propose a threshold from real-vs-real pairs of CHARACTER's source photos and store it with the set."""
    ws = workspace(ctx)
    char = ws.character(character)
    catalog = ws.catalog()
    with catalog.run("cli:identity-calibrate", {"character": character, "backend": backend}):
        refset = idn.recalibrate(ws, catalog, char, backend)
    cal = refset.calibration
    facts = idn.FACTS[refset.backend]
    out.print(
        f"[bold]{character}[/bold] reference set {refset.reference_set_id} ({refset.backend}): "
        f"{len(refset.image_ids)} photo(s)"
    )
    for image_id, why in refset.skipped.items():
        out.print(f"  skipped {image_id[:12]}: {why}")
    if cal.genuine:
        g = np.asarray(cal.genuine)
        out.print(
            f"real-vs-real pairs: {len(g)}  min {g.min():.3f}  5% {np.quantile(g, 0.05):.3f}  "
            f"median {np.median(g):.3f}  max {g.max():.3f}"
        )
        for lo in np.arange(np.floor(g.min() * 20) / 20, g.max() + 1e-9, 0.05):
            n = int(((g >= lo) & (g < lo + 0.05)).sum())
            out.print(f"  {lo:5.2f}-{lo + 0.05:4.2f} {'#' * n} {n}")
    if cal.impostor_max is not None:
        out.print(f"other characters' references: max similarity {cal.impostor_max:.3f}, 99% {cal.impostor_q99:.3f}")
    lo, hi = facts.threshold_range
    out.print(
        f"calibrated threshold: [bold]{cal.threshold:.3f}[/bold] ({cal.method}; "
        f"accepted range {lo:.2f}-{hi:.2f}, backend default {facts.default_threshold:.2f})"
    )
    if char.identity.threshold is not None:
        out.print(f"note: configs/characters/{character}.yaml sets threshold {char.identity.threshold}, which wins")
