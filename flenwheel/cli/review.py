"""Review commands: the FiftyOne App as a service, syncing tags, gate status, decisions from the shell."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flenwheel import gate
from flenwheel.cli.common import CharacterArg, StageOpt, UserError, group, id_list, out, workspace

review_app = group("Review gates: the FiftyOne App, status, decisions.")


@review_app.command("serve")
def review_serve(
    ctx: typer.Context,
    character: Annotated[str | None, typer.Argument(help="open this character's dataset")] = None,
) -> None:
    """Run the FiftyOne App as a long-lived service (address and port from configs/flenwheel.yaml)."""
    from flenwheel.review.datasets import sync_candidates  # fiftyone
    from flenwheel.review.service import serve

    ws = workspace(ctx)
    if character:
        ws.character(character)
        catalog = ws.catalog()
        if catalog.path.exists():
            sync_candidates(ws, catalog, character)
    serve(ws, character, on_ready=lambda url: out.print(f"FiftyOne App: {url}  (Ctrl+C to stop)"))


@review_app.command("sync")
def review_sync(ctx: typer.Context, character: Annotated[str, typer.Argument(help="character name")]) -> None:
    """Push new candidates to the character's FiftyOne dataset and pull reviewers' tags into the catalog."""
    from flenwheel.review.datasets import dataset_name, pull_decisions, sync_candidates  # fiftyone

    ws = workspace(ctx)
    ws.character(character)
    catalog = ws.catalog()
    with catalog.run("cli:review-sync", {"character": character}) as run_id:
        added = sync_candidates(ws, catalog, character)
        changed = pull_decisions(ws, catalog, character, run_id)
    out.print(f"dataset {dataset_name(ws, character)}: {added} sample(s) added, {changed} decision(s) recorded")


@review_app.command("status")
def review_status(
    ctx: typer.Context,
    character: CharacterArg,
    stage: StageOpt = "enrich",
) -> None:
    """Candidates, approved, rejected and pending in CHARACTER's gate."""
    ws = workspace(ctx)
    ws.character(character)
    st = gate.status(ws.catalog(), character, stage)
    out.print(
        f"{st.gate_id}: {st.candidates} candidate(s), {st.approved} approved, {st.rejected} rejected, "
        f"{st.pending} pending ({st.unscored} not yet identity-scored)"
    )


@review_app.command("decide")
def review_decide(
    ctx: typer.Context,
    character: CharacterArg,
    approve: Annotated[list[str] | None, typer.Option(help="image ids or prefixes (comma-separated)")] = None,
    reject: Annotated[list[str] | None, typer.Option(help="image ids or prefixes (comma-separated)")] = None,
    from_csv: Annotated[Path | None, typer.Option(help="CSV of image_id,decision[,note]")] = None,
    stage: StageOpt = "enrich",
    reviewer: Annotated[str | None, typer.Option(help="who decided (recorded)")] = None,
    note: Annotated[str | None, typer.Option(help="note recorded with --approve/--reject")] = None,
) -> None:
    """Record decisions for candidates of a gate; every id is checked before anything is written."""
    rows = [(i, "approved", note) for i in id_list(approve)] + [(i, "rejected", note) for i in id_list(reject)]
    if from_csv is not None:
        rows += gate.read_decisions_csv(from_csv)
    if not rows:
        raise UserError("nothing to decide: give --approve, --reject or --from-csv")
    ws = workspace(ctx)
    ws.character(character)
    catalog = ws.catalog()
    with catalog.run("cli:review-decide", {"character": character, "stage": stage, "n": len(rows)}) as run_id:
        changed = gate.decide(catalog, character, stage, rows, "cli", reviewer, run_id)
    st = gate.status(catalog, character, stage)
    out.print(
        f"{changed} decision(s) recorded; {st.gate_id}: {st.approved} approved, {st.rejected} rejected, "
        f"{st.pending} pending"
    )
