"""The ``flenwheel`` command.

Every command that writes records a ``runs`` row. Errors the user can fix (bad config, bad input, a busy or
foreign catalog) print one line starting with ``error:`` and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperGroup

from flenwheel.catalog import Catalog
from flenwheel.config import Workspace
from flenwheel.errors import FlenwheelError


class UserError(FlenwheelError):
    """A wrong command-line argument."""


class _OneLineErrors(TyperGroup):
    """Turn the errors a user can fix into one ``error:`` line on stderr and exit status 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except FlenwheelError as e:
            err.print(f"error: {e}", markup=False)
            raise typer.Exit(2) from None


# Without a terminal rich would wrap at 80 columns; ids and paths read better unwrapped.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


app = typer.Typer(
    cls=_OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    help="flenwheel: curated, versioned character training sets and LoRAs, with lineage for everything.",
)


def _workspace(ctx: typer.Context) -> Workspace:
    if not isinstance(ctx.obj, Workspace):
        opts = ctx.obj or {}
        ctx.obj = Workspace(root=opts.get("root"), configs=opts.get("configs"))
    return ctx.obj


def _catalog(ws: Workspace) -> Catalog:
    return Catalog(ws.catalog_path, lock_timeout_s=ws.settings.catalog.lock_timeout_s)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


@app.callback()
def _options(
    ctx: typer.Context,
    root: Annotated[
        Path | None, typer.Option("--root", help="data root (default: FLENWHEEL_HOME, else ./datasets)")
    ] = None,
    configs: Annotated[
        Path | None, typer.Option("--configs", help="config folder (default: FLENWHEEL_CONFIGS, else ./configs)")
    ] = None,
) -> None:
    ctx.obj = {"root": root, "configs": configs}


# --------------------------------------------------------------------------- ingest


@app.command()
def ingest(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="character name (configs/characters/<name>.yaml)")],
    paths: Annotated[list[Path], typer.Argument(help="image files or folders")],
    batch_size: Annotated[int, typer.Option(min=1, help="files per catalog transaction")] = 32,
) -> None:
    """Validate, normalise and store source photos of CHARACTER; one line per file.

    Exit status 0 when every file was ingested (or was already there), 1 when any was rejected; the good
    files are ingested either way.
    """
    from flenwheel.ingest import ingest_paths
    from flenwheel.store import expand_paths

    ws = _workspace(ctx)
    ws.character(character)
    catalog = _catalog(ws)
    files = expand_paths(paths)
    if not files:
        raise UserError("no image files found in " + ", ".join(str(p) for p in paths))
    config = {"character": character, "paths": [str(p) for p in paths], "store": ws.settings.store.model_dump()}
    with catalog.run("cli:ingest", config) as run_id, progress_bar() as bar:
        task = bar.add_task("ingesting", total=len(files))

        def report(o: Any) -> None:
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


# --------------------------------------------------------------------------- queries


@app.command()
def sql(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="SELECT or EXPLAIN statement(s)")],
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """Run read-only SQL on the catalog (writing statements are refused)."""
    if fmt not in ("table", "csv", "json"):
        raise UserError(f"--format must be table, csv or json (got {fmt!r})")
    df = _catalog(_workspace(ctx)).query_readonly(query)
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


@app.command()
def lineage(
    ctx: typer.Context,
    image_id: Annotated[str, typer.Argument(help="image id or a unique prefix (6+ hex characters)")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Ancestry (every step back to the source, with all parameters and runs) and descendants of an image."""
    catalog = _catalog(_workspace(ctx))
    result = catalog.lineage(catalog.resolve_image_id(image_id))
    if as_json:
        sys.stdout.write(json.dumps(result.to_json(), default=str, indent=2) + "\n")
        return
    print_lineage(result)


def print_lineage(result: Any) -> None:
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


@app.command()
def characters(ctx: typer.Context) -> None:
    """Each character with image counts by origin and by identity verdict."""
    ws = _workspace(ctx)
    catalog = _catalog(ws)
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


# --------------------------------------------------------------------------- identity

identity_app = typer.Typer(no_args_is_help=True, help="Face identity: score, filter and calibrate.")
app.add_typer(identity_app, name="identity")

BackendOpt = Annotated[str | None, typer.Option("--backend", help="dlib or insightface (default: the character's)")]


def _check_backend(backend: str | None) -> None:
    from flenwheel.identity import BACKENDS

    if backend is not None and backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)} (got {backend!r})")


@identity_app.command("score")
def identity_score(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="character whose reference set is used")],
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
    from flenwheel import identity as idn
    from flenwheel.store import expand_paths

    _check_backend(backend)
    ws = _workspace(ctx)
    char = ws.character(character)
    files = expand_paths(paths)
    if not files:
        raise UserError("no image files found in " + ", ".join(str(p) for p in paths))
    if refs:
        be = idn.load_backend(backend or char.identity.backend, ws.settings.identity)
        refset = idn.build_reference_set(be, character, [(str(p), idn.load_rgb(p)) for p in expand_paths(refs)])
    else:
        catalog = _catalog(ws)
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
    character: Annotated[str, typer.Argument(help="character name")],
    backend: BackendOpt = None,
    rescore: Annotated[bool, typer.Option("--rescore", help="score again images already scored")] = False,
) -> None:
    """Score every unscored catalog image of CHARACTER against its reference set, in batches."""
    from flenwheel import identity as idn

    _check_backend(backend)
    ws = _workspace(ctx)
    char = ws.character(character)
    catalog = _catalog(ws)
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
    table = Table(title=f"{character}: identity verdicts of {total} image(s)")
    table.add_column("verdict")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    for verdict, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        table.add_row(verdict, str(n), f"{n / total:.0%}")
    out.print(table)


@identity_app.command("calibrate")
def identity_calibrate(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="character name")],
    backend: BackendOpt = None,
) -> None:
    """Propose a threshold from real-vs-real pairs of CHARACTER's source photos and store it with the set."""
    from flenwheel import identity as idn

    _check_backend(backend)
    ws = _workspace(ctx)
    char = ws.character(character)
    catalog = _catalog(ws)
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


# --------------------------------------------------------------------------- models

models_app = typer.Typer(no_args_is_help=True, help="Model runtime: tiny offline twins, profile checks.")
app.add_typer(models_app, name="models")

ProfileOpt = Annotated[str | None, typer.Option("--profile", help="cpu-tiny, gpu-24gb or gpu-80gb")]


@models_app.command("tiny")
def models_tiny(out_dir: Annotated[Path, typer.Argument(help="folder to build into")]) -> None:
    """Build the tiny random-weight twins of both pipelines (real classes) into OUT_DIR.

    FluxPipeline.from_pretrained(OUT_DIR/"flux") and QwenImageEditPlusPipeline.from_pretrained(
    OUT_DIR/"qwen-image-edit") load them with no hub access.
    """
    from flenwheel.tiny import ensure_tiny_models

    for kind, path in ensure_tiny_models(out_dir).items():
        out.print(f"{kind:16s} {path}")


@models_app.command("check")
def models_check(ctx: typer.Context, profile: ProfileOpt = None) -> None:
    """Check that the profile's device and every model and LoRA it names are available, without loading them."""
    from flenwheel import models

    ws = _workspace(ctx)
    prof = ws.profile(profile)
    problems = []
    try:
        models.check_device(prof)
        out.print(f"device    {prof.device}: ok")
    except models.ModelError as e:
        problems.append(str(e))
        out.print(f"device    {prof.device}: {e}")
    for kind, stage_name in models.STAGE_OF_KIND.items():
        stage = getattr(prof, stage_name)
        try:
            resolved = models.resolve_model(stage.model, kind, ws)
            out.print(f"{stage_name:9s} {resolved.ref}")
        except models.ModelError as e:
            problems.append(str(e))
            out.print(f"{stage_name:9s} MISSING: {e}")
        library = ws.loras()
        for category, stack in stage.loras.items():
            for use in stack:
                try:
                    _, ref = models.resolve_lora_file(library[use.name], ws, _catalog(ws))
                    out.print(f"  lora {category}/{use.name}: {ref}")
                except models.ModelError as e:
                    problems.append(str(e))
                    out.print(f"  lora {category}/{use.name}: MISSING: {e}")
    raise typer.Exit(1 if problems else 0)


# --------------------------------------------------------------------------- enrichment and review

EXIT_AWAITING_REVIEW = 3


def _id_list(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


@app.command()
def enrich(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="character name")],
    editor: Annotated[str, typer.Option(help="qwen (Qwen-Image-Edit-2509) or augment (CPU transforms)")] = "augment",
    profile: ProfileOpt = None,
    prompts: Annotated[list[str] | None, typer.Option("--prompts", help="prompt ids (comma-separated)")] = None,
    seeds: Annotated[int, typer.Option(min=1, max=64, help="seeds per source and prompt")] = 2,
    review: Annotated[str, typer.Option(help="fiftyone, cli or auto")] = "fiftyone",
    wait: Annotated[bool, typer.Option("--wait", help="pause at the review gate instead of exiting")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="edit jobs per task")] = 16,
) -> None:
    """Enrich CHARACTER's source photos (source x prompt x seed not yet done), score them, open the review gate.

    Exit status 3 when the run stopped at the review gate: review, then run the same command again.
    """
    from flenwheel.flows.enrich import EnrichParams
    from flenwheel.flows.enrich import enrich as enrich_flow

    ws = _workspace(ctx)
    ws.character(character)
    params = _params(
        EnrichParams, character=character, editor=editor, profile=profile, prompts=_id_list(prompts) or None,
        seeds=seeds, review=review, wait=wait, batch_size=batch_size,
    )  # fmt: skip
    result = enrich_flow(params, root=str(ws.root), configs=str(ws.configs_dir))
    out.print(f"{result['images']} new image(s) from {result['jobs']} job(s)")
    if result["status"] == "awaiting_review":
        out.print(result["message"], markup=False)
        raise typer.Exit(EXIT_AWAITING_REVIEW)
    gate = result["gate"]
    out.print(
        f"gate {gate['gate_id']}: {gate['approved']} approved, {gate['rejected']} rejected, {gate['pending']} pending"
    )


review_app = typer.Typer(no_args_is_help=True, help="Review gates: the FiftyOne App, status, decisions.")
app.add_typer(review_app, name="review")
StageOpt = Annotated[str, typer.Option("--stage", help="enrich or synthetic")]


@review_app.command("serve")
def review_serve(
    ctx: typer.Context,
    character: Annotated[str | None, typer.Argument(help="open this character's dataset")] = None,
) -> None:
    """Run the FiftyOne App as a long-lived service (address and port from configs/flenwheel.yaml)."""
    from flenwheel.review.datasets import sync_candidates
    from flenwheel.review.service import serve

    ws = _workspace(ctx)
    if character:
        ws.character(character)
        catalog = _catalog(ws)
        if catalog.path.exists():
            sync_candidates(ws, catalog, character)
    serve(ws, character, on_ready=lambda url: out.print(f"FiftyOne App: {url}  (Ctrl+C to stop)"))


@review_app.command("sync")
def review_sync(ctx: typer.Context, character: Annotated[str, typer.Argument(help="character name")]) -> None:
    """Push new candidates to the character's FiftyOne dataset and pull reviewers' tags into the catalog."""
    from flenwheel.review.datasets import dataset_name, pull_decisions, sync_candidates

    ws = _workspace(ctx)
    ws.character(character)
    catalog = _catalog(ws)
    with catalog.run("cli:review-sync", {"character": character}) as run_id:
        added = sync_candidates(ws, catalog, character)
        changed = pull_decisions(ws, catalog, character, run_id)
    out.print(f"dataset {dataset_name(ws, character)}: {added} sample(s) added, {changed} decision(s) recorded")


@review_app.command("status")
def review_status(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="character name")],
    stage: StageOpt = "enrich",
) -> None:
    """Candidates, approved, rejected and pending in CHARACTER's gate."""
    from flenwheel import decisions

    ws = _workspace(ctx)
    ws.character(character)
    st = decisions.status(_catalog(ws), character, stage)
    out.print(
        f"{st.gate_id}: {st.candidates} candidate(s), {st.approved} approved, {st.rejected} rejected, "
        f"{st.pending} pending ({st.unscored} not yet identity-scored)"
    )


@review_app.command("decide")
def review_decide(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="character name")],
    approve: Annotated[list[str] | None, typer.Option(help="image ids or prefixes (comma-separated)")] = None,
    reject: Annotated[list[str] | None, typer.Option(help="image ids or prefixes (comma-separated)")] = None,
    from_csv: Annotated[Path | None, typer.Option(help="CSV of image_id,decision[,note]")] = None,
    stage: StageOpt = "enrich",
    reviewer: Annotated[str | None, typer.Option(help="who decided (recorded)")] = None,
    note: Annotated[str | None, typer.Option(help="note recorded with --approve/--reject")] = None,
) -> None:
    """Record decisions for candidates of a gate; every id is checked before anything is written."""
    from flenwheel import decisions

    rows = [(i, "approved", note) for i in _id_list(approve)] + [(i, "rejected", note) for i in _id_list(reject)]
    if from_csv is not None:
        rows += decisions.read_decisions_csv(from_csv)
    if not rows:
        raise UserError("nothing to decide: give --approve, --reject or --from-csv")
    ws = _workspace(ctx)
    ws.character(character)
    catalog = _catalog(ws)
    with catalog.run("cli:review-decide", {"character": character, "stage": stage, "n": len(rows)}) as run_id:
        changed = decisions.decide(catalog, character, stage, rows, "cli", reviewer, run_id)
    st = decisions.status(catalog, character, stage)
    out.print(
        f"{changed} decision(s) recorded; {st.gate_id}: {st.approved} approved, {st.rejected} rejected, "
        f"{st.pending} pending"
    )


# --------------------------------------------------------------------------- datasets

dataset_app = typer.Typer(no_args_is_help=True, help="Frozen dataset versions: freeze, list, diff.")
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("freeze")
def dataset_freeze(ctx: typer.Context, character: Annotated[str, typer.Argument(help="character name")]) -> None:
    """Freeze approved sources and candidates as the next immutable version (nothing new if unchanged)."""
    from flenwheel import versions

    ws = _workspace(ctx)
    char = ws.character(character)
    catalog = _catalog(ws)
    with catalog.run("cli:dataset-freeze", {"character": character}) as run_id:
        frozen = versions.freeze(ws, catalog, char, run_id)
    what = "frozen" if frozen.created else "unchanged, still"
    out.print(
        f"{what} {frozen.version_id}: {frozen.n_images} image(s), manifest {frozen.manifest_path} "
        f"(sha256 {frozen.manifest_sha256[:16]})"
    )


@dataset_app.command("list")
def dataset_list(ctx: typer.Context, character: Annotated[str, typer.Argument(help="character name")]) -> None:
    """Versions of CHARACTER with their composition."""
    from flenwheel import versions

    ws = _workspace(ctx)
    ws.character(character)
    rows = versions.versions(_catalog(ws), character)
    table = Table()
    for col in ("version", "parent", "images", "source", "enriched", "synthetic", "manifest", "frozen"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["version_id"],
            r["parent_version"] or "-",
            str(r["n_images"]),
            str(r["source"]),
            str(r["enriched"]),
            str(r["synthetic"]),
            r["manifest_sha256"][:12],
            str(r["frozen_at"])[:19],
        )
    out.print(table)


@dataset_app.command("diff")
def dataset_diff(
    ctx: typer.Context,
    v1: Annotated[str, typer.Argument(help="older version, e.g. astronaut@v1")],
    v2: Annotated[str, typer.Argument(help="newer version")],
) -> None:
    """Images added, removed and re-captioned between two versions."""
    from flenwheel import versions

    d = versions.diff(_catalog(_workspace(ctx)), v1, v2)
    for kind, sign in (("added", "+"), ("removed", "-")):
        for m in d[kind]:
            out.print(f"{sign} {m['image_id'][:12]} {m['origin']:8s} {m['caption']}", markup=False)
    for m in d["recaptioned"]:
        out.print(f"~ {m['image_id'][:12]} {m['old_caption']!r} -> {m['caption']!r}", markup=False)
    out.print(f"{len(d['added'])} added, {len(d['removed'])} removed, {len(d['recaptioned'])} re-captioned")


# --------------------------------------------------------------------------- training


@app.command()
def train(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="character name")],
    dataset: Annotated[str | None, typer.Option(help="dataset version (default: the latest frozen one)")] = None,
    profile: ProfileOpt = None,
    steps: Annotated[int | None, typer.Option(min=1, help="override the profile's step count")] = None,
    resume: Annotated[bool, typer.Option("--resume/--restart", help="continue from the last checkpoint")] = True,
) -> None:
    """Train a FLUX.1-dev LoRA of CHARACTER; the exported checkpoint is the one with the best identity pass rate."""
    from flenwheel import versions
    from flenwheel.training import train_flux

    ws = _workspace(ctx)
    char = ws.character(character)
    prof = ws.profile(profile)
    catalog = _catalog(ws)
    version = dataset or versions.latest_version(catalog, character)
    if version is None:
        raise UserError(f"{character} has no frozen dataset version: run `flenwheel dataset freeze {character}`")
    config = {"character": character, "dataset": version, "profile": prof.name, "steps": steps, "resume": resume}
    with catalog.run("cli:train", config) as run_id, training_progress(steps or prof.trainer.steps) as progress:
        result = train_flux(ws, catalog, char, version, prof, run_id, steps, resume=resume, on_progress=progress)
    _print_training(result, f"dataset {version}")


@contextmanager
def training_progress(total: int) -> Iterator[Callable[[int, int, float, float], None]]:
    """A progress bar with loss, s/step and ETA; yields the trainer's progress callback."""
    with Progress(
        TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[sps]:.2f} s/step"), TimeRemainingColumn(), console=err, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("train", total=total, loss=float("nan"), sps=0.0)

        def progress(step: int, total: int, loss: float, sec: float) -> None:
            bar.update(task, completed=step, total=total, loss=loss, sps=sec)

        yield progress


def _print_training(result: Any, trained_on: str) -> None:
    if not result.trained:
        out.print(f"already trained: {result.lora_id}")
    out.print(f"LoRA {result.lora_id} ({trained_on}): chosen checkpoint step {result.chosen_step}")
    for sc in sorted(result.scores, key=lambda x: x.step):
        rate = "-" if sc.pass_rate is None else f"{sc.pass_rate:.0%}"
        sim = "-" if sc.mean_similarity is None else f"{sc.mean_similarity:.3f}"
        mark = "  <- chosen" if sc.step == result.chosen_step else ""
        out.print(f"  step {sc.step:6d}: identity pass rate {rate:>4s}, mean similarity {sim}{mark}")
    out.print(f"diffusers: {result.weights}\nComfyUI:   {result.comfy_weights}")


@app.command("train-edit")
def train_edit(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="character name")],
    profile: ProfileOpt = None,
    steps: Annotated[int | None, typer.Option(min=1, help="override the profile's step count")] = None,
    resume: Annotated[bool, typer.Option("--resume/--restart", help="continue from the last checkpoint")] = True,
    ops: Annotated[str, typer.Option(help="which approved edits train it: edit (Qwen outputs), augment")] = "edit",
) -> None:
    """Train CHARACTER's Qwen-Image-Edit-2509 LoRA on its approved (before, instruction, after) triplets."""
    from flenwheel.edit_training import train_edit_lora

    ws = _workspace(ctx)
    char = ws.character(character)
    prof = ws.profile(profile)
    chosen = _id_list([ops])
    bad = sorted(set(chosen) - {"edit", "augment"})
    if bad or not chosen:
        raise UserError(f"--ops: use edit and/or augment (got {ops!r})")
    catalog = _catalog(ws)
    config = {"character": character, "profile": prof.name, "steps": steps, "resume": resume, "ops": chosen}
    with catalog.run("cli:train-edit", config) as run_id, training_progress(steps or prof.edit_trainer.steps) as bar:
        result = train_edit_lora(ws, catalog, char, prof, run_id, steps, chosen, resume=resume, on_progress=bar)
    _print_training(result, "approved triplets")
    out.print(f"evaluate it: flenwheel eval-edit {character} --lora {result.lora_id}")


@app.command("eval-edit")
def eval_edit(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="character name")],
    lora: Annotated[str, typer.Option("--lora", help="the editor LoRA's lora_id")],
    profile: ProfileOpt = None,
    prompts: Annotated[
        list[str] | None, typer.Option("--prompts", help="enrichment prompt ids (comma-separated)")
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, max=16, help="seeds per input and prompt")] = 1,
) -> None:
    """Edit held-out sources with the base editor and with base + LoRA; compare how well each keeps identity."""
    from flenwheel.edit_training import evaluate_edit_lora

    ws = _workspace(ctx)
    char = ws.character(character)
    prof = ws.profile(profile)
    catalog = _catalog(ws)
    config = {"character": character, "lora": lora, "profile": prof.name, "prompts": prompts, "seeds": seeds}
    with catalog.run("cli:eval-edit", config) as run_id:
        ev = evaluate_edit_lora(ws, catalog, char, lora, prof, run_id, _id_list(prompts) or None, range(seeds))
    for arm, values in ev.metrics.items():
        rate = values.get("pass_rate")
        sim = values.get("mean_similarity")
        rate_s = "-" if rate is None else f"{rate:.0%}"
        sim_s = "-" if sim is None else f"{sim:.3f}"
        out.print(f"{arm:5s}: {int(values['n'])} edit(s), identity pass rate {rate_s}, mean similarity {sim_s}")
    out.print(f"report: {ev.report}")


# --------------------------------------------------------------------------- flywheel


def _params(model: Any, **values: Any) -> Any:
    """Build a flow's pydantic parameters; a bad value becomes one line naming the option."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as e:
        first = e.errors()[0]
        raise UserError(f"--{'-'.join(str(x) for x in first['loc']).replace('_', '-')}: {first['msg']}") from None


@app.command()
def flywheel(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="character name")],
    iterations: Annotated[int, typer.Option(help="iterations the character should have (done ones are skipped)")] = 2,
    profile: ProfileOpt = None,
    editor: Annotated[str, typer.Option(help="qwen or augment")] = "qwen",
    review: Annotated[str, typer.Option(help="fiftyone, cli or auto")] = "fiftyone",
    wait: Annotated[bool, typer.Option("--wait", help="pause at review gates instead of exiting")] = False,
    enrich_seeds: Annotated[int, typer.Option(help="seeds per source and enrichment prompt")] = 2,
    synthetic_prompts: Annotated[list[str] | None, typer.Option(help="synthetic prompt ids (comma-separated)")] = None,
    synthetic_seeds: Annotated[int, typer.Option(help="seeds per synthetic prompt")] = 2,
    train_steps: Annotated[int | None, typer.Option(help="override the profile's training steps")] = None,
    max_synthetic_share: Annotated[float, typer.Option(help="cap on synthetic images in a version")] = 0.5,
    min_new_synthetics: Annotated[int, typer.Option(help="stop before retraining with fewer new synthetics")] = 1,
) -> None:
    """Run flywheel 1 for CHARACTER (enrich, review, freeze, train, generate, review, retrain, report).

    Exit status 3 when the run stopped at a review gate: review, then run the same command again.
    """
    from flenwheel.flows.flywheel import FlywheelParams
    from flenwheel.flows.flywheel import flywheel as flywheel_flow

    ws = _workspace(ctx)
    ws.character(character)
    params = _params(
        FlywheelParams, character=character, iterations=iterations, profile=profile, editor=editor, review=review,
        wait=wait, enrich_seeds=enrich_seeds, synthetic_prompts=_id_list(synthetic_prompts) or None,
        synthetic_seeds=synthetic_seeds, train_steps=train_steps, max_synthetic_share=max_synthetic_share,
        min_new_synthetics=min_new_synthetics,
    )  # fmt: skip
    result = flywheel_flow(params, root=str(ws.root), configs=str(ws.configs_dir))
    _print_flywheel(result)
    if result["status"] == "awaiting_review":
        raise typer.Exit(EXIT_AWAITING_REVIEW)


def _print_flywheel(result: dict[str, Any]) -> None:
    enrich = result.get("enrichment")
    if enrich:
        out.print(f"enrichment: {enrich['images']} new image(s) from {enrich['jobs']} job(s)")
    for it in result["iterations"]:
        if "report" in it:
            met = "met" if it["target_met"] else "not met"
            out.print(f"iteration {it['number']}: dataset {it['dataset_version']}, LoRA {it['lora_id']}, "
                      f"{it['generated']} synthetic image(s), 70% target {met}")  # fmt: skip
            out.print(f"  report: {it['report']}")
        else:
            out.print(f"iteration {it['number']}: {it['status']}")
    if result["status"] != "completed":
        out.print(f"{result['status']}: {result['message']}", markup=False)


@app.command()
def report(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="character name")],
    iteration: Annotated[int | None, typer.Option(help="iteration number (default: the latest with a LoRA)")] = None,
) -> None:
    """(Re)write the HTML report of a flywheel iteration from the catalog and print its path."""
    from flenwheel.report import iteration_report

    ws = _workspace(ctx)
    ws.character(character)
    catalog = _catalog(ws)
    numbers = [r["number"] for r in catalog.iterations(character) if r["lora_id"]]
    if not numbers:
        raise UserError(f"{character} has no flywheel iteration with a LoRA yet: run `flenwheel flywheel {character}`")
    number = iteration or numbers[-1]
    if number not in numbers:
        raise UserError(f"iteration {number} of {character} has no LoRA (iterations with one: {numbers})")
    out.print(str(iteration_report(ws.root, catalog, character, number).path))


@app.command()
def serve(ctx: typer.Context) -> None:
    """Serve the `flywheel` and `nightly-enrich` deployments to a Prefect server (start `prefect server start`)."""
    from flenwheel.flows.deployments import has_server
    from flenwheel.flows.deployments import serve as serve_deployments

    ws = _workspace(ctx)
    if not has_server():
        err.print(
            "warning: PREFECT_API_URL is not set, so Prefect serves against a temporary server that no UI sees. "
            "Run `prefect server start` and `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` first."
        )
    nightly = ws.settings.nightly
    err.print(f"serving flywheel (run it from the Prefect UI) and nightly-enrich ({nightly.cron}, {nightly.timezone}) "
              f"for data root {ws.root}")  # fmt: skip
    serve_deployments(ws)


# --------------------------------------------------------------------------- demo

DEMO_CHARACTER = "hopper"


@app.command()
def demo(
    ctx: typer.Context,
    iterations: Annotated[int, typer.Option(min=1, max=5, help="flywheel iterations")] = 2,
) -> None:
    """Offline demo on cpu-tiny: sample photos -> augment enrichment -> dlib identity -> auto review -> v1 ->
    tiny FLUX LoRA -> synthetic images -> auto review -> v2 -> retrain -> report."""
    import diffusers
    import transformers

    from flenwheel.demo import sample_photos
    from flenwheel.flows.flywheel import FlywheelParams
    from flenwheel.flows.flywheel import flywheel as flywheel_flow
    from flenwheel.ingest import ingest_paths

    for lib in (diffusers, transformers):  # loading bars of tiny models in seconds are noise here
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    ws = _workspace(ctx)
    catalog = _catalog(ws)
    out.print("[bold]1. ingest sample photos shipped inside installed packages[/bold]")
    for character, paths in sample_photos().items():
        ws.character(character)
        with catalog.run("cli:demo", {"character": character, "paths": [str(p) for p in paths]}) as run_id:
            for o in ingest_paths(ws, catalog, character, paths, run_id):
                out.print(f"  {o.status:9s} {character:10s} {o.path.name}: {o.image_id or o.reason}")
    out.print(f"\n[bold]2. flywheel 1 for {DEMO_CHARACTER}, {iterations} iteration(s) on cpu-tiny[/bold]")
    out.print(
        "  Tiny random-weight models stand in for FLUX.1-dev: their images are noise by design, so no synthetic\n"
        "  image keeps the identity and the demo retrains anyway (min_new_synthetics=0) to show the loop."
    )
    params = FlywheelParams(
        character=DEMO_CHARACTER, iterations=iterations, profile="cpu-tiny", editor="augment", review="auto",
        enrich_seeds=1, synthetic_prompts=["pose-portrait", "pose-three-quarter", "scene-park", "light-studio"],
        synthetic_seeds=1, min_new_synthetics=0,
    )  # fmt: skip
    result = flywheel_flow(params, root=str(ws.root), configs=str(ws.configs_dir))
    _print_flywheel(result)
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
    first = catalog.rows("SELECT image_id FROM images WHERE origin = 'augment' ORDER BY image_id LIMIT 1")
    if first:
        out.print(f"\n[bold]flenwheel lineage {first[0]['image_id'][:12]}[/bold]")
        print_lineage(catalog.lineage(first[0]["image_id"]))
    reports = [it["report"] for it in result["iterations"] if "report" in it]
    reports = reports or [r["report_path"] for r in catalog.iterations(DEMO_CHARACTER) if r["report_path"]]
    out.print(f"\n[bold]report[/bold]: {reports[-1] if reports else '-'}")
    out.print(f"[bold]review in FiftyOne[/bold]: flenwheel --root {ws.root} review serve {DEMO_CHARACTER}  "
              f"(then open http://{ws.settings.review.app_address}:{ws.settings.review.app_port})")  # fmt: skip
    out.print("[bold]real models[/bold]: on a 24 GB GPU with the weights in the Hugging Face cache, run\n"
              f"  flenwheel flywheel {DEMO_CHARACTER} --profile gpu-24gb --editor qwen --review fiftyone")  # fmt: skip


def main() -> None:
    """Console entry point."""
    app()
