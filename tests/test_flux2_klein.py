"""FLUX.2 [klein] on its tiny twin: a character LoRA trained with the generic loop on klein's encoders, exported,
loaded by plain diffusers ``Flux2KleinPipeline.load_lora_weights`` (the diffusers file and the ComfyUI file give
the same output, which differs from the base), its licences on record; and the klein reference-image editor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline
from PIL import Image

from flenwheel.catalog import Catalog
from flenwheel.core.config import PromptEntry
from flenwheel.dataset import versions
from flenwheel.editing import EditJob, make_editor
from flenwheel.models.families import family
from flenwheel.models.loading import ModelManager
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace
from flenwheel.training import train_flux

pytestmark = pytest.mark.tiny

PROFILE = "cpu-tiny-open"


def generate(pipe: Flux2KleinPipeline) -> np.ndarray:
    out = pipe(
        prompt="photo of fw_obama",
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=1.0,
        max_sequence_length=32,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    )
    return out.images[0]


def test_klein_lora_trains_exports_and_loads_in_plain_diffusers(
    ws: Workspace, catalog: Catalog, faces: Path, tiny_models: dict[str, Path]
) -> None:
    ingest_paths(ws, catalog, "obama", [faces / "obama" / f"obama_{i}.jpg" for i in (1, 2, 3)], None)
    character = ws.character("obama", PROFILE)
    version = versions.freeze(ws, catalog, character, None).version_id
    profile = ws.profile(PROFILE)
    # a large step size, so that 8 steps move the tiny model visibly (the profile's 1e-3 moves it by ~1e-5)
    profile = profile.model_copy(update={"trainer": profile.trainer.model_copy(update={"learning_rate": 0.05})})
    result = train_flux(ws, catalog, character, version, profile, None, steps=8)

    row = catalog.lora(result.lora_id)
    assert row["kind"] == family("flux2-klein").lora_kind == "flux2_klein"
    assert row["base_model_ref"].startswith("tiny:flux2-klein@")
    base = next(r for r in row["licences"] if r["role"] == "base model")
    assert base["licence"] == "Apache-2.0" and base["commercial"] is True
    assert "FLUX.2-klein-4B" in base["model"]  # the twin records what it stands in for
    assert catalog.version_licences(version) == []  # the user's own photos, not judged yet: no model made them

    pipe = Flux2KleinPipeline.from_pretrained(tiny_models["flux2-klein"])
    pipe.set_progress_bar_config(disable=True)
    before = generate(pipe)
    pipe.load_lora_weights(str(result.weights), adapter_name="character")
    with_lora = generate(pipe)
    assert np.abs(with_lora - before).mean() > 1e-3  # the LoRA changes the output

    comfy = Flux2KleinPipeline.from_pretrained(tiny_models["flux2-klein"])
    comfy.set_progress_bar_config(disable=True)
    comfy.load_lora_weights(str(result.comfy_weights), adapter_name="comfy")  # diffusers' kohya FLUX.2 converter
    np.testing.assert_allclose(generate(comfy), with_lora, atol=1e-5)


def test_klein_editor_edits_with_the_reference_image(ws: Workspace, catalog: Catalog, faces: Path, tiny_models) -> None:
    """The source enters the transformer as reference tokens after the target's (what klein's editing is); the
    output has the stage's size. (The twin's random weights barely react to them, so the tokens are what is
    checked.)"""
    manager = ModelManager(ws, ws.profile(PROFILE))
    editor = make_editor("klein", ws, manager, catalog)
    prompt = PromptEntry(id="light-warm", category="lighting", prompt="warm evening light")
    source = Image.open(faces / "obama" / "obama_small.jpg").convert("RGB")  # 320 x 240
    seen: list[int] = []
    pipe = manager.get("ref_editor").pipe
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["hidden_states"].shape[1]), with_kwargs=True
    )
    result = editor.edit(source, EditJob("a" * 64, prompt, 0), None)
    hook.remove()
    assert result.params["pipeline"] == "Flux2KleinPipeline" and result.model_ref.startswith("tiny:flux2-klein@")
    assert result.image.size == (64, 64) and manager.current.stage_name == "ref_editor"
    target, reference = (64 // 16) ** 2, (320 // 16) * (240 // 16)  # 2x2-patchified latents of x8 VAEs
    assert seen and set(seen) == {target + reference}
    editor.close()
