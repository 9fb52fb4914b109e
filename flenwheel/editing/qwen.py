"""The ``qwen`` editor: Qwen-Image-Edit-2509 through the model runtime, with the profile's LoRA stack for the
prompt's category (e.g. Lightning + multiple-angles for ``angles``) and the character's own editor LoRA."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character, LoraSpec, PromptEntry
from flenwheel.editing.jobs import Box, EditError, EditJob, Editor, EditResult
from flenwheel.models.loading import ModelManager
from flenwheel.models.loras import Sampling, StackEntry, lora_stack
from flenwheel.store.workspace import Workspace


class QwenEditor(Editor):
    """Qwen-Image-Edit-2509 through the model runtime; the LoRA stack follows the prompt's category."""

    name = "qwen"
    op = "edit"

    def __init__(
        self,
        ws: Workspace,
        manager: ModelManager,
        catalog: Catalog | None = None,
        extra_loras: Sequence[StackEntry] = (),
    ) -> None:
        self.ws, self.manager, self.catalog = ws, manager, catalog
        self.stage = manager.profile.editor
        self.extra_loras = list(extra_loras)  # e.g. the character's own editor LoRA (flywheel 2)

    def supports(self, prompt: PromptEntry) -> bool:
        return True

    def _stack(self, prompt: PromptEntry) -> list[StackEntry]:
        return lora_stack(self.ws, self.stage, prompt.category, self.extra_loras)

    def fingerprint(self, prompt: PromptEntry) -> dict[str, Any]:
        stack = self._stack(prompt)
        sampling = Sampling.for_stack(self.stage, stack)
        return {
            "editor": "qwen",
            "model": self.stage.model,
            "profile": self.manager.profile.name,
            "loras": [(e.name, e.spec.ref, e.spec.weight_name, e.scale) for e in stack],
            "sampling": sampling.__dict__,
        }

    def edit(self, image: Image.Image, job: EditJob, face_box: Box | None) -> EditResult:
        stack = self._stack(job.prompt)
        loaded, records = self.manager.stacked("qwen-image-edit", stack, self.catalog)
        sampling = Sampling.for_stack(self.stage, stack)
        steps = job.prompt.steps or sampling.steps
        generator = torch.Generator("cpu").manual_seed(job.seed)
        result = loaded.pipe(
            image=[image.convert("RGB")],
            prompt=job.prompt.prompt,
            negative_prompt=sampling.negative_prompt,
            true_cfg_scale=sampling.true_cfg_scale,
            num_inference_steps=steps,
            height=sampling.height,
            width=sampling.width,
            generator=generator,
        )
        return EditResult(
            image=result.images[0].convert("RGB"),
            op=self.op,
            model_ref=loaded.ref,
            prompt=job.prompt.prompt,
            prompt_id=job.prompt.id,
            seed=job.seed,
            loras=records,
            negative_prompt=sampling.negative_prompt,
            steps=steps,
            guidance=sampling.true_cfg_scale,
            params={
                "pipeline": "QwenImageEditPlusPipeline",
                "profile": self.manager.profile.name,
                "width": sampling.width,
                "height": sampling.height,
                "scheduler": dict(loaded.pipe.scheduler.config),
                "generator": "torch.Generator('cpu').manual_seed(seed)",
            },
        )

    def close(self) -> None:
        self.manager.release()


def character_editor_loras(catalog: Catalog | None, character: Character | None) -> list[StackEntry]:
    """The character's own editor LoRA (``editor_lora`` in its config) as a stack entry, if it names one."""
    if character is None or not character.editor_lora:
        return []

    lora_id = character.editor_lora
    if catalog is None:
        raise EditError(f"{character.name}: editor_lora needs the catalog to be resolved")
    if lora_id == "latest":
        latest = catalog.latest_lora(character.name, "qwen_edit")
        if latest is None:
            raise EditError(
                f"{character.name}: editor_lora is 'latest' but no editor LoRA was trained yet "
                f"(flenwheel train-edit {character.name})"
            )
        lora_id = latest
    spec = LoraSpec(ref=f"catalog:{lora_id}", applies_to="qwen-image-edit", scale=character.editor_lora_scale)
    return [StackEntry(lora_id, spec, character.editor_lora_scale)]
