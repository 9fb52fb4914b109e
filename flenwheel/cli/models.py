"""Model commands: build the tiny offline twins, check that a profile's models and LoRAs are available."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flenwheel.cli.common import ProfileOpt, group, out, workspace

models_app = group("Model runtime: tiny offline twins, profile checks.")


@models_app.command("tiny")
def models_tiny(out_dir: Annotated[Path, typer.Argument(help="folder to build into")]) -> None:
    """Build the tiny random-weight twins of both pipelines (real classes) into OUT_DIR.

    FluxPipeline.from_pretrained(OUT_DIR/"flux") and QwenImageEditPlusPipeline.from_pretrained(
    OUT_DIR/"qwen-image-edit") load them with no hub access.
    """
    from flenwheel.tiny import ensure_tiny_models  # torch, diffusers

    for kind, path in ensure_tiny_models(out_dir).items():
        out.print(f"{kind:16s} {path}")


@models_app.command("check")
def models_check(ctx: typer.Context, profile: ProfileOpt = None) -> None:
    """Check that the profile's device and every model and LoRA it names are available, without loading them."""
    from flenwheel import models  # torch, diffusers

    ws = workspace(ctx)
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
        if stage is None:  # an optional stage (vibe_editor) this profile does not configure
            out.print(f"{stage_name:9s} not configured")
            continue
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
                    _, ref = models.resolve_lora_file(library[use.name], ws, ws.catalog())
                    out.print(f"  lora {category}/{use.name}: {ref}")
                except models.ModelError as e:
                    problems.append(str(e))
                    out.print(f"  lora {category}/{use.name}: MISSING: {e}")
    raise typer.Exit(1 if problems else 0)
