"""Review commands: the FiftyOne App as a service, syncing tags, gate status, decisions from the shell."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
    """Push new candidates to the character's FiftyOne dataset; pull reviewers' tags and caption edits back."""
    from flenwheel.review.datasets import dataset_name, sync_both_ways  # fiftyone

    ws = workspace(ctx)
    ws.character(character)
    catalog = ws.catalog()
    with catalog.run("cli:review-sync", {"character": character}) as run_id:
        n = sync_both_ways(ws, catalog, character, run_id)
    out.print(
        f"dataset {dataset_name(ws, character)}: {n['added']} sample(s) added, {n['decisions']} decision(s) "
        f"and {n['captions']} caption edit(s) recorded"
    )


@review_app.command("status")
def review_status(
    ctx: typer.Context,
    character: CharacterArg,
    stage: StageOpt = "enrich",
) -> None:
    """Candidates, approved, rejected and pending in CHARACTER's gate."""
    ws = workspace(ctx)
    ws.character(character)
    st = gate.Gate(ws.catalog(), character, stage).status()
    out.print(
        f"{st.gate_id}: {st.candidates} candidate(s), {st.approved} approved, {st.rejected} rejected, "
        f"{st.pending} pending ({st.unscored} not yet identity-scored)"
    )
    stats = gate.Gate(ws.catalog(), character, stage, ws.settings.review).review_stats()
    if stats.by_policy or stats.by_people:
        share = f"{stats.auto_share:.0%}" if stats.auto_share is not None else "-"
        agree = f"{stats.agreement:.0%} of {stats.compared}" if stats.agreement is not None else "nothing to compare"
        out.print(
            f"decided by the policy {stats.by_policy}, by people {stats.by_people} (policy share {share}); "
            f"people agreed with the policy: {agree}; "
            f"policy decisions overridden: {stats.overridden}"
        )


@review_app.command("queue")
def review_queue(
    ctx: typer.Context,
    character: CharacterArg,
    stage: StageOpt = "enrich",
    limit: Annotated[int, typer.Option(help="show at most this many")] = 20,
) -> None:
    """Undecided candidates, the most uncertain first (identity near its threshold, failed or borderline checks)."""
    ws = workspace(ctx)
    ws.character(character)
    queue = gate.Gate(ws.catalog(), character, stage, ws.settings.review).review_queue()
    table = Table("image", "uncertainty", "prompt", "similarity", "why")
    for r in queue[:limit]:
        u = "-" if r["uncertainty"] is None else f"{r['uncertainty']:.2f}"
        sim = "-" if r["similarity"] is None else f"{r['similarity']:.3f}"
        table.add_row(r["image_id"][:12], u, r["prompt_id"] or "-", sim, r["why"])
    out.print(table)
    out.print(f"{len(queue)} undecided in {gate.gate_id(character, stage)}")


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
        changed = gate.Gate(catalog, character, stage).decide(rows, "cli", reviewer, run_id)
    st = gate.Gate(catalog, character, stage).status()
    out.print(
        f"{changed} decision(s) recorded; {st.gate_id}: {st.approved} approved, {st.rejected} rejected, "
        f"{st.pending} pending"
    )
