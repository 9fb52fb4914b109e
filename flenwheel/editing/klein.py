"""The ``klein`` editor: FLUX.2 [klein]'s reference-image editing through the model runtime.

``Flux2KleinPipeline`` takes the source as a reference image: its VAE latents join the sequence after the noisy
target with their own position ids, and the instruction is the prompt (no CFG on the step-distilled klein-4B). The
stage is the profile's ``ref_editor``; its LoRA stack follows the prompt's category like the qwen editor's. The
output has the source's size (rounded down to the pipeline's multiple of 16) unless the stage sets one.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from flenwheel.catalog import Catalog
from flenwheel.core.config import PromptEntry
from flenwheel.editing.jobs import Box, EditError, EditJob, Editor, EditResult
from flenwheel.models.loading import ModelManager
from flenwheel.models.loras import Sampling, StackEntry, lora_stack
from flenwheel.store.workspace import Workspace

STAGE = "ref_editor"


class KleinEditor(Editor):
    """FLUX.2 [klein] reference-image editing (``Flux2KleinPipeline(image=[source], prompt=instruction)``)."""

    name = "klein"
    op = "edit"

    def __init__(self, ws: Workspace, manager: ModelManager, catalog: Catalog | None = None) -> None:
        self.ws, self.manager, self.catalog = ws, manager, catalog
        stage = getattr(manager.profile, STAGE, None)
        if stage is None:
            raise EditError(
                f"profile {manager.profile.name} has no {STAGE} stage: add one for the klein editor "
                "(family flux2-klein, model black-forest-labs/FLUX.2-klein-4B; see docs/models.md)"
            )
        self.stage = stage

    def supports(self, prompt: PromptEntry) -> bool:
        return True

    def _stack(self, prompt: PromptEntry) -> list[StackEntry]:
        return lora_stack(self.ws, self.stage, prompt.category)

    def fingerprint(self, prompt: PromptEntry) -> dict[str, Any]:
        stack = self._stack(prompt)
        return {
            "editor": self.name,
            "model": self.stage.model,
            "profile": self.manager.profile.name,
            "loras": [(e.name, e.spec.ref, e.spec.weight_name, e.scale) for e in stack],
            "sampling": Sampling.for_stack(self.stage, stack).__dict__,
        }

    def edit(self, image: Image.Image, job: EditJob, face_box: Box | None) -> EditResult:
        stack = self._stack(job.prompt)
        loaded, records = self.manager.stacked(STAGE, stack, self.catalog)
        sampling = Sampling.for_stack(self.stage, stack)
        steps = job.prompt.steps or sampling.steps
        guidance = 1.0 if sampling.guidance is None else sampling.guidance
        result = loaded.pipe(
            image=[image.convert("RGB")],
            prompt=job.prompt.prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=sampling.height,
            width=sampling.width,
            generator=torch.Generator("cpu").manual_seed(job.seed),
        )
        out = result.images[0].convert("RGB")
        return EditResult(
            image=out,
            op=self.op,
            model_ref=loaded.ref,
            prompt=job.prompt.prompt,
            prompt_id=job.prompt.id,
            seed=job.seed,
            loras=records,
            negative_prompt=None,
            steps=steps,
            guidance=guidance,
            params={
                "pipeline": type(loaded.pipe).__name__,
                "profile": self.manager.profile.name,
                "width": out.width,
                "height": out.height,
                "reference_images": 1,
                "scheduler": dict(loaded.pipe.scheduler.config),
                "generator": "torch.Generator('cpu').manual_seed(seed)",
            },
        )

    def close(self) -> None:
        self.manager.release()
