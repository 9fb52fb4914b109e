"""Catalog commands: ingest photos, query with SQL, follow lineage, list characters, write starter configs."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from flenwheel.catalog import Lineage
from flenwheel.cli.common import CharacterArg, UserError, err, group, out, progress_bar, workspace
from flenwheel.store import doctor as health
from flenwheel.store.ingest import IngestOutcome, ingest_paths
from flenwheel.store.objects import expand_paths
from flenwheel.store.workspace import write_starter_configs


def register(app: typer.Typer) -> None:
    for command in (ingest, sql, lineage, characters, init, doctor):
        app.command()(command)
    app.add_typer(catalog_app, name="catalog")


catalog_app = group("The catalog file itself: backups and restores.")


def ingest(
    ctx: typer.Context,
    character: CharacterArg,
    paths: Annotated[list[Path], typer.Argument(help="image files or folders")],
    batch_size: Annotated[int, typer.Option(min=1, help="files per catalog transaction")] = 32,
) -> None:
    """Validate, normalise and store source photos of CHARACTER; one line per file.

    Exit status 0 when every file was ingested (or was already there), 1 when any was rejected; the good
    files are ingested either way.
    """
    ws = workspace(ctx)
    ws.character(character)
    catalog = ws.catalog()
    files = expand_paths(paths)
    if not files:
        raise UserError("no image files found in " + ", ".join(str(p) for p in paths))
    config = {"character": character, "paths": [str(p) for p in paths], "store": ws.settings.store.model_dump()}
    with catalog.run("cli:ingest", config) as run_id, progress_bar() as bar:
        task = bar.add_task("ingesting", total=len(files))

        def report(o: IngestOutcome) -> None:
            bar.advance(task)
            if o.status == "rejected":
                out.print(f"REJECTED {o.path}: {o.reason}")
            elif o.status == "duplicate":
                out.print(f"SKIPPED  {o.path}: {o.image_id} ({o.reason})")
            else:
                out.print(f"OK       {o.path}: {o.image_id}")

        outcomes = ingest_paths(ws, catalog, character, files, run_id, batch_size=batch_size, on_outcome=report)
    n_bad = sum(not o.ok for o in outcomes)
    n_new = sum(o.status == "ingested" for o in outcomes)
    err.print(f"{n_new} ingested, {len(outcomes) - n_new - n_bad} already present, {n_bad} rejected")
    raise typer.Exit(1 if n_bad else 0)


def sql(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="SELECT or EXPLAIN statement(s)")],
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """Run read-only SQL on the catalog (writing statements are refused)."""
    if fmt not in ("table", "csv", "json"):
        raise UserError(f"--format must be table, csv or json (got {fmt!r})")
    df = workspace(ctx).catalog().query_readonly(query)
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(df.to_json(orient="records", date_format="iso", default_handler=str) + "\n")
    else:
        table = Table(show_lines=False)
        for col in df.columns:
            table.add_column(str(col))
        for row in df.itertuples(index=False):
            table.add_row(*(_cell(v) for v in row))
        out.print(table)
        err.print(f"{len(df)} row(s)")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    s = str(v)
    return s if len(s) <= 80 else s[:77] + "..."


def lineage(
    ctx: typer.Context,
    image_id: Annotated[str, typer.Argument(help="image id or a unique prefix (6+ hex characters)")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Ancestry (every step back to the source, with all parameters and runs) and descendants of an image."""
    catalog = workspace(ctx).catalog()
    result = catalog.lineage(catalog.resolve_image_id(image_id))
    if as_json:
        sys.stdout.write(json.dumps(result.to_json(), default=str, indent=2) + "\n")
        return
    print_lineage(result)


def print_lineage(result: Lineage) -> None:
    img = result.image
    out.print(
        f"[bold]{img['image_id']}[/bold]  {img['character']}  origin={img['origin']}  "
        f"{img['width']}x{img['height']}  {img['path']}"
    )
    for title, steps in (("ancestry", result.ancestors), ("descendants", result.descendants)):
        out.print(f"[bold]{title}[/bold] ({len(steps)} step(s))")
        for s in steps:
            params = {
                k: s[k]
                for k in ("prompt_id", "prompt", "seed", "steps", "guidance", "strength")
                if s.get(k) is not None
            }
            run = f"{s['run_flow']}@{s['run_id'][:8]}" if s["run_id"] else "-"
            out.print(
                f"  {'  ' * (s['depth'] - 1)}{s['child_id'][:12]} <- {s['op']}({(s['parent_id'] or 'text')[:12]})"
                f" model={s['model_ref'] or '-'} loras={json.dumps(s['loras'])}"
                f" {json.dumps(params, ensure_ascii=False)} params={json.dumps(s['params'], default=str)} run={run}"
            )


def characters(ctx: typer.Context) -> None:
    """Each character with image counts by origin and by identity verdict."""
    ws = workspace(ctx)
    catalog = ws.catalog()
    df = catalog.characters_summary() if catalog.path.exists() else None
    table = Table()
    for col in ("character", "images", "source", "edit", "augment", "generate", "id_pass", "id_other", "unscored"):
        table.add_column(col, justify="left" if col == "character" else "right")
    seen = set()
    if df is not None:
        for row in df.itertuples(index=False):
            seen.add(row.character)
            table.add_row(*(str(v) for v in row))
    for name in ws.character_names():
        if name not in seen:
            table.add_row(name, *(["0"] * 8))
    out.print(table)


def init(
    folder: Annotated[Path, typer.Argument(help="a new folder for the configs, e.g. ./configs")] = Path("configs"),
) -> None:
    """Write a starter configs/ (profiles, prompt libraries, LoRA library, example characters) to edit."""
    written = write_starter_configs(folder.resolve())
    out.print(f"wrote {len(written)} file(s) to {folder}; add a character in {folder}/characters/<name>.yaml")


def doctor(
    ctx: typer.Context,
    fix: Annotated[bool, typer.Option("--fix", help="remove orphans and leftovers of interrupted writes")] = False,
    grace: Annotated[
        float,
        typer.Option(
            help="--fix spares files younger than this (seconds): a running "
            "command may be between writing a file and recording it"
        ),
    ] = 600.0,
) -> None:
    """Check that the store holds what the catalog says (files, hashes, lineage, versions, LoRAs) and nothing else.

    Says what --fix removed, what it kept and why, and what to do about the problems it leaves to you. Exit status
    0 when nothing is wrong (after --fix: when nothing is left), 1 otherwise.
    """
    ws = workspace(ctx)
    with progress_bar() as bar:
        task = bar.add_task("checking images", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = health.examine(ws, ws.catalog(), fix=fix, grace_s=grace, on_progress=progress)
    for finding in report.findings:
        fixed = finding.what in report.fixed
        out.print(f"{'FIXED' if fixed else finding.kind.upper():20s} {finding.what}", markup=False)
        if not fixed and (finding.spared or finding.hint):
            out.print(f"{'':20s}   {'kept: ' + finding.spared if finding.spared else finding.hint}", markup=False)
    left = report.left
    checked = ", ".join(f"{n} {what}" for what, n in report.checked.items())
    out.print(
        f"checked {checked or 'nothing (no catalog yet)'}: {len(left)} problem(s)"
        + (f", {len(report.fixed)} fixed" if report.fixed else "")
    )
    if fix:
        removed = Counter(f.kind for f in report.findings if f.what in report.fixed)
        out.print("removed: " + (", ".join(f"{n} {kind}" for kind, n in removed.items()) or "nothing"))
    if report.spared:
        out.print(
            f"{'kept' if fix else '--fix keeps'} {len(report.spared)} orphan(s) younger than --grace "
            f"({grace:g} s): a running command may be between writing such a file and recording it. Run "
            "`flenwheel doctor --fix` again once they are older, or, when no flenwheel command is running, "
            "`flenwheel doctor --fix --grace 0`.",
            markup=False,
        )
    if not fix and any(f.fixable for f in left):
        out.print("run `flenwheel doctor --fix` to remove the orphans and leftovers")
    manual = [kind for kind in dict.fromkeys(f.kind for f in left) if kind in health.ADVICE]
    if manual:
        out.print("what to do:", markup=False)
        for kind in manual:
            out.print(f"  {kind.upper()}: {health.ADVICE[kind]}", markup=False)
        out.print(f"  ({health.FIX_TOUCHES})", markup=False)
    raise typer.Exit(1 if left else 0)


@catalog_app.command("backup")
def catalog_backup(
    ctx: typer.Context, folder: Annotated[Path, typer.Argument(help="a new folder for the backup")]
) -> None:
    """Back up the catalog (DuckDB's EXPORT DATABASE: schema and data), consistent while other commands run."""
    target = workspace(ctx).catalog().backup(folder.resolve())
    out.print(f"catalog backed up to {target} (restore: flenwheel catalog restore {target})")


@catalog_app.command("restore")
def catalog_restore(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="a folder written by `flenwheel catalog backup`")],
    replace: Annotated[bool, typer.Option("--replace", help="overwrite an existing catalog")] = False,
) -> None:
    """Restore the catalog from a backup (stop running flows first); the store's files are not touched."""
    ws = workspace(ctx)
    ws.catalog().restore(folder.resolve(), replace=replace)
    out.print(f"catalog {ws.catalog_path} restored from {folder}; check it with `flenwheel doctor`")
