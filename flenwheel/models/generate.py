"""Text-to-image with the profile's generator (FLUX.1, FLUX.2 [klein]: whichever family the profile names) and a
LoRA stack through the resident pipeline: one call, shared by synthetic generation
(:mod:`flenwheel.dataset.generation`) and LoRA evaluation (:mod:`flenwheel.evaluation.lora`), so a LoRA is judged
on images made exactly as the flywheel makes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from flenwheel.models.loading import ModelManager
from flenwheel.models.loras import Sampling, StackEntry


@dataclass
class FluxImage:
    """One generated image and what made it (for the derivation or evaluation record)."""

    image: Image.Image
    model_ref: str  # the pipeline's pinned ref with its precision
    pipeline: str  # its diffusers class
    loras: list[dict[str, Any]]  # the stack's records (name, pinned ref, scale)
    steps: int
    sampling: Sampling
    scheduler: dict[str, Any] = field(default_factory=dict)


def text_to_image(
    manager: ModelManager, stack: list[StackEntry], prompt: str, steps: int | None, seed: int, catalog: Any = None
) -> FluxImage:
    """``prompt`` through the profile's generator with ``stack`` applied; the stack's sampling settings win
    over the stage's, ``steps`` (a prompt's own) over both; the seed drives a CPU generator, as everywhere."""
    loaded, records = manager.stacked("generator", stack, catalog)
    sampling = Sampling.for_stack(manager.profile.generator, stack)
    steps = steps or sampling.steps
    kwargs: dict[str, Any] = {"width": sampling.width, "height": sampling.height}
    if sampling.guidance is not None:
        kwargs["guidance_scale"] = sampling.guidance
    result = loaded.pipe(
        prompt=prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed), **kwargs
    )
    return FluxImage(
        result.images[0].convert("RGB"),
        loaded.ref,
        type(loaded.pipe).__name__,
        records,
        steps,
        sampling,
        dict(loaded.pipe.scheduler.config),
    )
