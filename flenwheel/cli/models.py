"""Model commands: build the tiny offline twins, check that a profile's models and LoRAs are available."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flenwheel.cli.common import ProfileOpt, group, out, workspace
from flenwheel.core.config.profiles import STAGE_NAMES

if TYPE_CHECKING:
    from flenwheel.core.config import Profile
    from flenwheel.store.workspace import Workspace

models_app = group("Model runtime: the configured models and their licences, tiny offline twins, profile checks.")


@models_app.command("tiny")
def models_tiny(out_dir: Annotated[Path, typer.Argument(help="folder to build into")]) -> None:
    """Build the tiny random-weight twins of the model families (real classes) into OUT_DIR.

    FluxPipeline.from_pretrained(OUT_DIR/"flux"), QwenImageEditPlusPipeline.from_pretrained(
    OUT_DIR/"qwen-image-edit") and Flux2KleinPipeline.from_pretrained(OUT_DIR/"flux2-klein") load them with no hub
    access.
    """
    from flenwheel.models.twins import ensure_tiny_models  # torch, diffusers

    for kind, path in ensure_tiny_models(out_dir).items():
        out.print(f"{kind:16s} {path}")


@models_app.command("list")
def models_list(ctx: typer.Context, profile: ProfileOpt = None) -> None:
    """Every model the profiles configure (or one profile's): family, hub id, pipeline class, licence and whether a
    business may use it, gated or not, download size, and whether it is in the Hugging Face cache. The identity
    backends and the captions'/critic's VLM are listed too; a non-commercial licence is flagged."""
    from flenwheel.identity import LICENCES
    from flenwheel.models.families import family
    from flenwheel.models.listing import configured_models

    ws = workspace(ctx)
    names = [profile] if profile else ws.profile_names()
    rows = configured_models(ws, [ws.profile(n) for n in names], LICENCES)
    flagged = 0
    for r in rows:
        pipeline = family(r.family).pipeline_class.rpartition(":")[2] if r.family else "-"
        mark = "" if r.commercial else ("  NON-COMMERCIAL" if r.commercial is False else "  LICENCE UNKNOWN")
        flagged += r.commercial is not True
        out.print(
            f"{r.model}  (used by {', '.join(r.used_by)})\n"
            f"    family {r.family or '-'} · pipeline {pipeline} · licence {r.licence}{mark}\n"
            f"    gated {'yes' if r.gated else 'no'} · download {r.size} · {r.cached}",
            markup=False,
        )
    out.print(f"{len(rows)} model(s); {flagged} not cleared for commercial use")


@models_app.command("check")
def models_check(ctx: typer.Context, profile: ProfileOpt = None) -> None:
    """Check that the profile's device and every model and LoRA it names are available, without loading them.

    For what is missing: how to get it (gated repos first need their licence accepted and a hub token), its
    download size (a table of known sizes, flenwheel.models.downloads) and the total against the free disk of the
    Hugging Face cache.
    """
    from flenwheel.models import downloads, loading, refs  # torch, diffusers
    from flenwheel.models.loras import resolve_lora_file

    ws = workspace(ctx)
    prof = ws.profile(profile)
    problems = []
    to_fetch: dict[tuple[str, str | None], downloads.KnownDownload | None] = {}

    def missing(repo: str, filename: str | None = None) -> None:
        """What a missing hub model or LoRA file costs, once per file."""
        if not refs.HUB_ID.match(repo.partition("@")[0]):
            return  # a local path: nothing to download
        known = downloads.known_download(repo, filename)
        key = (repo.partition("@")[0], filename)
        if key in to_fetch:
            return
        to_fetch[key] = known
        if known is not None and known.gated:
            out.print(f"          {downloads.gated_note(known.repo)}")
        size = f"~{downloads.gb(known.size)} ({known.source})" if known else "size not known here"
        out.print(f"          download: {size}")
        if filename is None and known is not None:  # a pipeline: its folders, not the repo's single-file copies
            out.print(f"          only what the pipeline loads: hf download {key[0]} --include model_index.json '*/*'")

    try:
        loading.check_device(prof)
        out.print(f"device    {prof.device}: ok")
    except refs.ModelError as e:
        problems.append(str(e))
        out.print(f"device    {prof.device}: {e}")
    for stage_name in STAGE_NAMES:
        stage = getattr(prof, stage_name)
        if stage is None:  # an optional stage (vibe_editor, ref_editor) this profile does not configure
            out.print(f"{stage_name:9s} not configured")
            continue
        try:
            resolved = refs.resolve_model(stage.model, prof.family_of(stage_name), ws)
            out.print(f"{stage_name:9s} {resolved.ref}")
        except refs.ModelError as e:
            problems.append(str(e))
            out.print(f"{stage_name:9s} MISSING: {e}")
            missing(stage.model)
        library = ws.loras()
        for category, stack in stage.loras.items():
            for use in stack:
                spec = library[use.name]
                try:
                    _, ref = resolve_lora_file(spec, ws, ws.catalog())
                    out.print(f"  lora {category}/{use.name}: {ref}")
                except refs.ModelError as e:
                    problems.append(str(e))
                    out.print(f"  lora {category}/{use.name}: MISSING: {e}")
                    missing(spec.ref, spec.weight_name)
    for ref in sorted({r for r in (ws.settings.captions.model, ws.settings.verify.critic) if r}):
        problem = _check_vlm(ref, prof, ws, missing)
        if problem:
            problems.append(problem)
    if to_fetch:
        cache = refs.hf_cache_dir()
        known = [k for k in to_fetch.values() if k is not None]
        total, free = sum(k.size for k in known), downloads.free_bytes(cache)
        unknown = len(to_fetch) - len(known)
        extra = f" and {unknown} of unknown size" if unknown else ""
        out.print(
            f"download  {downloads.gb(total)} for profile {prof.name} ({len(known)} item(s){extra}); free disk "
            f"at the Hugging Face cache {cache}: {downloads.gb(free)}"
        )
        if free < total:
            short = f"{downloads.gb(total - free)} short"
            problems.append(short)
            out.print(f"          not enough disk: {short}; free space there or point HF_HOME at a larger disk")
    raise typer.Exit(1 if problems else 0)


def _check_vlm(ref: str, prof: Profile, ws: Workspace, missing: Callable[[str], None]) -> str | None:
    """The captions' and critic's VLM: the editor's text encoder when it has its output layer, else a hub model."""
    from huggingface_hub import snapshot_download

    from flenwheel.models import downloads, refs
    from flenwheel.models.critic import DEFAULT_HUB_ID, critic_source

    hub = ref
    if ref == "editor":
        try:
            editor = refs.resolve_model(prof.editor.model, "qwen-image-edit", ws)
        except refs.ModelError:
            known = downloads.known_download(DEFAULT_HUB_ID)
            more = f", ~{downloads.gb(known.size)} more" if known else ""
            out.print(
                f"vlm       the editor's text encoder (comes with the editor; if it lacks its output layer: "
                f"{DEFAULT_HUB_ID}{more})"
            )
            return None
        source = critic_source(editor.path)
        if source.reused:
            out.print(f"vlm       {source.model}: ok ({source.reason})")
            return None
        hub = source.model
    if not refs.HUB_ID.match(hub.partition("@")[0]):
        ok = Path(hub).expanduser().is_dir()
        out.print(f"vlm       {hub}: {'ok' if ok else 'MISSING: no such folder'}")
        return None if ok else f"VLM folder {hub} not found"
    try:
        path = snapshot_download(hub.partition("@")[0], revision=hub.partition("@")[2] or None, local_files_only=True)
        out.print(f"vlm       {hub}@{Path(path).name}")
        return None
    except Exception:
        out.print(f"vlm       MISSING: {hub} is not in the Hugging Face cache")
        missing(hub)
        return f"VLM {hub} missing"
