"""Dataset commands: freeze the approved selection as an immutable version, list versions, diff two."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from flenwheel.catalog import Catalog
from flenwheel.cli.common import ProfileOpt, group, out, progress_bar, workspace
from flenwheel.core.config import Character
from flenwheel.dataset import versions
from flenwheel.dataset.captions import caption_members
from flenwheel.models import runtime
from flenwheel.models.critic import Critic
from flenwheel.store.workspace import Workspace

dataset_app = group("Frozen dataset versions: caption, freeze, list, diff.")


def _caption(ws: Workspace, catalog: Catalog, char: Character, profile: str | None, run_id: str, redo: bool) -> int:
    with progress_bar() as bar:
        task = bar.add_task("captioning", total=None)

        def vlm() -> Critic:
            return runtime.vlm(ws, profile, ws.settings.captions.model or "")

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            return caption_members(ws, catalog, char, vlm, run_id, redo, progress=progress)
        finally:
            runtime.release_models()


@dataset_app.command("caption")
def dataset_caption(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="character name")],
    profile: ProfileOpt = None,
    redo: Annotated[bool, typer.Option(help="caption every member again, edited captions too")] = False,
) -> None:
    """VLM captions (captions.model in configs/flenwheel.yaml) for the members the next version would hold."""
    ws = workspace(ctx)
    char = ws.character(character, profile)
    catalog = ws.catalog()
    if ws.settings.captions.model is None:
        out.print("captions.model is null in configs/flenwheel.yaml: versions use template captions")
        return
    with catalog.run("cli:dataset-caption", {"character": character, "redo": redo}) as run_id:
        n = _caption(ws, catalog, char, profile, run_id, redo)
    out.print(f"{n} caption(s) written for {character}")


@dataset_app.command("freeze")
def dataset_freeze(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="character name")],
    captions: Annotated[bool, typer.Option(help="caption members that have no caption first (VLM)")] = True,
    profile: ProfileOpt = None,
) -> None:
    """Freeze approved sources and candidates as the next immutable version (nothing new if unchanged)."""
    ws = workspace(ctx)
    char = ws.character(character, profile)
    catalog = ws.catalog()
    with catalog.run("cli:dataset-freeze", {"character": character, "captions": captions}) as run_id:
        if captions:
            _caption(ws, catalog, char, profile, run_id, redo=False)
        frozen = versions.freeze(ws, catalog, char, run_id)
    what = "frozen" if frozen.created else "unchanged, still"
    out.print(
        f"{what} {frozen.version_id}: {frozen.n_images} image(s), manifest {frozen.manifest_path} "
        f"(sha256 {frozen.manifest_sha256[:16]})"
    )


@dataset_app.command("list")
def dataset_list(ctx: typer.Context, character: Annotated[str, typer.Argument(help="character name")]) -> None:
    """Versions of CHARACTER with their composition."""
    ws = workspace(ctx)
    ws.character(character)
    rows = ws.catalog().versions(character)
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
    d = versions.diff(workspace(ctx).catalog(), v1, v2)
    for kind, sign in (("added", "+"), ("removed", "-")):
        for m in d[kind]:
            out.print(f"{sign} {m['image_id'][:12]} {m['origin']:8s} {m['caption']}", markup=False)
    for m in d["recaptioned"]:
        out.print(f"~ {m['image_id'][:12]} {m['old_caption']!r} -> {m['caption']!r}", markup=False)
    out.print(f"{len(d['added'])} added, {len(d['removed'])} removed, {len(d['recaptioned'])} re-captioned")
