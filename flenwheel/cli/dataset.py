"""Dataset commands: caption, freeze the approved selection as an immutable version, list versions, diff two, and
audit a set's quality flags and coverage."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from flenwheel.catalog import Catalog
from flenwheel.cli.common import ProfileOpt, UserError, group, out, progress_bar, workspace
from flenwheel.core.config import Character
from flenwheel.dataset import versions
from flenwheel.dataset.captions import caption_members
from flenwheel.models import runtime
from flenwheel.models.critic import Critic
from flenwheel.store.workspace import Workspace

dataset_app = group("Frozen dataset versions: caption, freeze, list, diff; audit quality and coverage.")


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


def _version_id(catalog: Catalog, character: str, version: str) -> str:
    """``v2``, ``2`` or ``obama@v2`` as the character's version id; an unknown one is a usage error naming the known."""
    version_id = version if "@" in version else f"{character}@v{version.lower().removeprefix('v')}"
    if not catalog.version_exists(version_id) or not version_id.startswith(f"{character}@"):
        known = ", ".join(r["version_id"] for r in catalog.versions(character)) or "none yet"
        raise UserError(f"--version: {character} has no version {version} (versions: {known})")
    return version_id


@dataset_app.command("audit")
def dataset_audit(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="character name")],
    version: Annotated[
        str | None, typer.Option("--version", help="a frozen version (v1, 1 or obama@v1); default: the next one")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per image, then one summary object")] = False,
) -> None:
    """Quality flags and coverage bins of every image of a set, then its coverage and gaps, thinnest first.

    The set is what the next version would hold (sources and approved candidates), or a frozen --version. Images not
    assessed yet are assessed first (docs/coverage.md).
    """
    from flenwheel.dataset.coverage import audit  # dlib, scikit-image

    ws = workspace(ctx)
    char = ws.character(character)
    catalog = ws.catalog()
    version_id = _version_id(catalog, character, version) if version else None
    with catalog.run("cli:dataset-audit", {"character": character, "version": version_id}) as run_id:
        with progress_bar() as bar:
            task = bar.add_task("assessing", total=None)
            report = audit(ws, catalog, char, version_id, run_id, lambda d, t: bar.update(task, completed=d, total=t))
    if as_json:
        for obj in [*report.image_objects(), report.summary()]:
            out.print(json.dumps(obj, sort_keys=True), markup=False)
        return
    images = Table(title=f"{character} {version_id or '(next version)'}: {len(report.images)} image(s)")
    for col in ("image", "origin", "flags", "yaw", "pitch", "framing", "expression", "light", "warmth"):
        images.add_column(col)
    for o in report.image_objects():
        images.add_row(
            o["image_id"][:12],
            o["origin"],
            ", ".join(o["flags"]) or "-",
            *(str(o[k] or "-") for k in ("yaw_bin", "pitch_bin", "framing", "expression", "light", "warmth_bin")),
        )
    out.print(images)
    coverage = Table(title="coverage (target: images a bin should hold at least)")
    for col in ("axis", "bin", "images", "share", "target"):
        coverage.add_column(col)
    for r in report.coverage.table(ws.settings.coverage):
        share = "-" if r["share"] is None else f"{r['share']:.0%}"
        coverage.add_row(r["axis"], r["bin"], str(r["images"]), share, str(r["target"] or "-"))
    out.print(coverage)
    gaps = report.coverage.gaps
    out.print(f"{len(gaps)} gap(s), thinnest first:" if gaps else "no gaps: every bin holds its target")
    for rank, g in enumerate(gaps, start=1):
        out.print(f"  {rank}. {g.axis} {g.bin}: {g.count} of {g.target}", markup=False)
