"""The ``vibe`` editor: VIBE (Sana1.5-1.6B + Qwen3-VL-2B, arXiv 2601.02242) beside Qwen-Image-Edit.

VIBE is a compact instruction editor: Qwen3-VL reads the instruction *and* the input image, a set of learned
meta tokens appended to the VLM's input collects what the edit asks for, a small attention "edit head" turns
their last hidden states into the caption embeddings Sana cross-attends to, and the input image's DC-AE latents
are concatenated channel-wise with the noisy latents (so the transformer sees 64 input channels instead of 32).
Sampling uses InstructPix2Pix-style guidance with a text scale and an image scale.

The reference implementation is ``ai-forever/VIBE`` (vibe/editor.py, vibe/generative_pipeline/
vibe_sana_pipeline.py, vibe/transformer/): it pins transformers 4.57 and diffusers 0.33 and is not on PyPI.
This module is our own implementation of the same computation on the libraries this project runs:

* :class:`VibeSanaTransformer` *is* diffusers' ``SanaTransformer2DModel`` (whose forward, in the channel-concat
  mode VIBE ships, computes what the reference transformer computes) plus the two pieces diffusers lacks: the
  meta-token embeddings and the edit head (:class:`MetaConnector`). Parameter names follow the reference so a
  checkpoint's ``transformer/`` state dict maps one to one.
* :class:`VibePipeline` is a ``DiffusionPipeline`` with the reference's five components, so ``from_pretrained``,
  ``save_pretrained``, dtype and offload go through diffusers' own machinery (and
  ``flenwheel.models.load_pipeline``; nf4 quantization of its components is untested). The VLM conditioning is
  written against transformers 5's Qwen3-VL API (``mm_token_type_ids`` for the M-RoPE index,
  ``get_image_features`` returning deepstack features).
* :class:`VibeEditor` is the flenwheel editor: same interface and recording conventions as the qwen editor.

What could not be confirmed offline (the hub's ``model_index.json``/``config.json`` of
``iitolstykh/VIBE-Image-Edit``, its scheduler config) is listed in docs/editing.md; nothing here guesses a
weight: a checkpoint whose layout differs is refused before it loads, with one line naming the component and its
first missing or unexpected keys (:mod:`flenwheel.models.weights`; diffusers itself would only warn).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from flenwheel.catalog import Catalog
from flenwheel.core.config import PromptEntry, StageSettings
from flenwheel.editing.jobs import Box, EditError, EditJob, Editor, EditResult
from flenwheel.models.vibe.pipeline import (
    ASPECT_BINS,
    CONDITIONING,
    DEFAULT_GUIDANCE,
    DEFAULT_IMAGE_GUIDANCE,
    DEFAULT_STEPS,
    EDIT_QUERY,
    VIBE_HUB_ID,
    VLM_MAX_PIXELS,
    VLM_MIN_PIXELS,
    VibePipeline,
    VibeSanaTransformer,
    bin_table,
    closest_size,
)
from flenwheel.store.workspace import Workspace

if TYPE_CHECKING:
    from flenwheel.models.loading import ModelManager

KIND = "vibe"  # the model manager's pipeline kind

__all__ = [
    "ASPECT_BINS", "EDIT_QUERY", "KIND", "VibeEditor", "VibePipeline", "VibeSampling", "VibeSanaTransformer",
    "bin_table", "closest_size",
]  # fmt: skip


# --------------------------------------------------------------------------- the editor


@dataclass(frozen=True)
class VibeSampling:
    """The sampling settings of one VIBE edit; all of them go into the job key and the derivation."""

    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    image_guidance_scale: float = DEFAULT_IMAGE_GUIDANCE
    resolution_binning: bool = True
    revert_resize: bool = True

    @classmethod
    def for_stage(cls, stage: StageSettings) -> VibeSampling:
        """The stage's settings, the reference defaults where the stage has none.

        ``true_cfg_scale`` is VIBE's text guidance (real CFG, like Qwen-Image-Edit's); ``image_guidance_scale``,
        ``resolution_binning`` and ``revert_resize`` are read when the stage schema has them (docs/editing.md).
        """
        image_guidance = getattr(stage, "image_guidance_scale", None)
        return cls(
            steps=stage.steps,
            guidance_scale=DEFAULT_GUIDANCE if stage.true_cfg_scale is None else stage.true_cfg_scale,
            image_guidance_scale=DEFAULT_IMAGE_GUIDANCE if image_guidance is None else image_guidance,
            resolution_binning=getattr(stage, "resolution_binning", True),
            revert_resize=getattr(stage, "revert_resize", True),
        )


def _json_safe(value: Any) -> Any:
    """Scheduler configs hold -inf (lambda_min_clipped) and tuples: make them plain JSON for the catalog."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class VibeEditor(Editor):
    """VIBE through the model runtime: for edits that must keep the rest of the photo (light, background,
    expression, outfit); camera-angle prompts stay with the qwen editor and its multiple-angles LoRA.

    The stage is the profile's ``vibe_editor`` (family ``vibe``, flenwheel/models/vibe/family.py); the
    categories in ``skip_categories`` are not offered to VIBE, because the paper names large geometric changes
    as its weak spot and the angle prompts are written for the Qwen LoRA.
    """

    name = "vibe"
    op = "edit"

    def __init__(
        self,
        ws: Workspace,
        manager: ModelManager,
        catalog: Catalog | None = None,
        *,
        sampling: VibeSampling | None = None,
        skip_categories: Sequence[str] = ("angles",),
    ) -> None:
        self.ws, self.manager, self.catalog = ws, manager, catalog
        stage_name = "vibe_editor"
        self.stage: StageSettings | None = getattr(manager.profile, stage_name, None)
        if self.stage is None:
            raise EditError(
                f"profile {manager.profile.name} has no {stage_name} stage: add one for the vibe editor "
                f"(model {VIBE_HUB_ID}, see docs/editing.md)"
            )
        if self.stage.loras:
            # no VIBE LoRA exists yet; a stack would be silently ignored (and left out of the job keys)
            raise EditError(
                f"profile {manager.profile.name}: the {stage_name} stage lists LoRAs; the vibe editor "
                "applies none (docs/editing.md)"
            )
        self.sampling = sampling or VibeSampling.for_stage(self.stage)
        self.skip_categories = tuple(skip_categories)

    def supports(self, prompt: PromptEntry) -> bool:
        return prompt.category not in self.skip_categories

    def fingerprint(self, prompt: PromptEntry) -> dict[str, Any]:
        return {
            "editor": "vibe",
            "model": self.stage.model,
            "profile": self.manager.profile.name,
            "loras": [],
            "sampling": asdict(self.sampling),
            "query": EDIT_QUERY,
            "vlm_pixels": [VLM_MIN_PIXELS, VLM_MAX_PIXELS],
            "conditioning": CONDITIONING,
        }

    def edit(self, image: Image.Image, job: EditJob, face_box: Box | None) -> EditResult:
        loaded, records = self.manager.stacked("vibe_editor", [], self.catalog)
        s = self.sampling
        steps = job.prompt.steps or s.steps
        generator = torch.Generator("cpu").manual_seed(job.seed)
        out = loaded.pipe(
            image=image.convert("RGB"),
            prompt=job.prompt.prompt,
            num_inference_steps=steps,
            guidance_scale=s.guidance_scale,
            image_guidance_scale=s.image_guidance_scale,
            generator=generator,
            resolution_binning=s.resolution_binning,
            revert_resize=s.revert_resize,
        )
        result = out.images[0].convert("RGB")
        return EditResult(
            image=result,
            op=self.op,
            model_ref=loaded.ref,
            prompt=job.prompt.prompt,
            prompt_id=job.prompt.id,
            seed=job.seed,
            loras=records,
            negative_prompt=None,  # VIBE's unconditional branch is the edit head on zero hidden states
            steps=steps,
            guidance=s.guidance_scale,
            params={
                "pipeline": "VibePipeline",
                "profile": self.manager.profile.name,
                "steps": steps,
                "guidance_scale": s.guidance_scale,
                "image_guidance_scale": s.image_guidance_scale,
                "resolution_binning": s.resolution_binning,
                "revert_resize": s.revert_resize,
                "input_size": list(out.input_size),
                "canvas_size": list(out.canvas_size),
                "content_box": list(out.content_box),
                "output_size": list(result.size),
                "query": EDIT_QUERY,
                "vlm_pixels": [VLM_MIN_PIXELS, VLM_MAX_PIXELS],
                "conditioning": CONDITIONING,
                "dtype": str(loaded.pipe.transformer.dtype).removeprefix("torch."),
                "scheduler": _json_safe(dict(loaded.pipe.scheduler.config)),
                "generator": "torch.Generator('cpu').manual_seed(seed)",
            },
        )

    def close(self) -> None:
        self.manager.release()
