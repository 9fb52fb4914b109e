"""Synthetic generation: the profile's generator (FLUX.1-dev, FLUX.2 [klein], ...) with a character LoRA from the
catalog, prompts from a library, seeds.

Each output is stored with a ``derivations`` row (op ``generate``, no parent image) holding every parameter
that made it: model ref, the LoRA stack with pinned refs (the character LoRA as ``catalog:<lora_id>@sha256``),
prompt as sent, prompt id, seed, steps, guidance, size, scheduler config and ``params.lora_id``. Lineage runs
from a generated image through ``params.lora_id`` to ``loras.dataset_version`` and its members.

Like enrichment, work is planned from the catalog: a job (prompt x seed under one LoRA and sampling setup) is
done when a derivation with its ``job_key`` exists, so re-runs and resumed runs add nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from flenwheel.catalog import Catalog, DerivationRecord, sha256_json
from flenwheel.core.config import Character, LoraSpec, PromptEntry
from flenwheel.core.errors import FlenwheelError
from flenwheel.models.families import family
from flenwheel.models.generate import text_to_image
from flenwheel.models.loading import ModelManager
from flenwheel.models.loras import Sampling, StackEntry, lora_stack
from flenwheel.store.objects import EncodedImage
from flenwheel.store.outputs import store_outputs
from flenwheel.store.workspace import Workspace


class GenerationError(FlenwheelError):
    """Synthetic images cannot be generated as asked."""


@dataclass(frozen=True)
class GenerationJob:
    prompt: PromptEntry
    seed: int


def synthetic_prompts(ws: Workspace, ids: Sequence[str] | None = None) -> list[PromptEntry]:
    """The synthetic library (configs/prompts/synthetic.yaml), or the entries named by ``ids`` in that order."""
    library = ws.prompt_library(kind="synthetic")
    if not ids:
        return list(library.values())
    unknown = [i for i in ids if i not in library]
    if unknown:
        raise GenerationError(f"unknown synthetic prompt id(s) {', '.join(unknown)}; known: {', '.join(library)}")
    return [library[i] for i in ids]


def lora_row(catalog: Catalog, lora_id: str) -> dict[str, Any]:
    row = catalog.lora(lora_id)
    if row is None:
        raise GenerationError(f"no LoRA {lora_id!r} in the catalog (flenwheel sql 'SELECT lora_id FROM loras')")
    return row


class SyntheticGenerator:
    """The profile's generator through the model runtime, with its stack plus the character LoRA (of the LoRA kind
    the generator's family trains)."""

    op = "generate"

    def __init__(
        self,
        ws: Workspace,
        manager: ModelManager,
        catalog: Catalog,
        character: Character,
        lora_id: str,
        scale: float = 1.0,
    ) -> None:
        row = lora_row(catalog, lora_id)
        self.family = family(manager.profile.family_of("generator"))
        if row["kind"] != self.family.lora_kind or row["character"] != character.name:
            raise GenerationError(
                f"LoRA {lora_id} is a {row['kind']} LoRA of {row['character']}, not a {self.family.lora_kind} LoRA "
                f"of {character.name} (the generator of profile {manager.profile.name} is {self.family.name})"
            )
        self.ws, self.manager, self.catalog, self.character = ws, manager, catalog, character
        self.lora_id, self.scale = lora_id, scale
        self.stage = manager.profile.generator
        self.lora_sha256 = row["sha256"]

    def prompt_text(self, prompt: PromptEntry) -> str:
        return prompt.prompt.replace("{trigger}", self.character.trigger)

    def _stack(self, prompt: PromptEntry) -> list[StackEntry]:
        own = LoraSpec(ref=f"catalog:{self.lora_id}", applies_to=self.family.name, scale=self.scale)
        return lora_stack(self.ws, self.stage, prompt.category, [StackEntry(self.lora_id, own, self.scale)])

    def fingerprint(self, prompt: PromptEntry) -> dict[str, Any]:
        stack = self._stack(prompt)
        return {
            "generator": self.family.name,
            "model": self.stage.model,
            "profile": self.manager.profile.name,
            "loras": [(e.name, e.spec.ref, e.spec.weight_name, e.scale) for e in stack],
            "lora_sha256": self.lora_sha256,
            "sampling": Sampling.for_stack(self.stage, stack).__dict__,
        }

    def key(self, job: GenerationJob) -> str:
        return sha256_json(
            {
                **self.fingerprint(job.prompt),
                "prompt": self.prompt_text(job.prompt),
                "steps": job.prompt.steps,
                "seed": job.seed,
            }
        )

    def generate(self, job: GenerationJob) -> tuple[Image.Image, DerivationRecord]:
        """One image and its derivation (``child_id`` left empty: the store names the image)."""
        text = self.prompt_text(job.prompt)
        made = text_to_image(self.manager, self._stack(job.prompt), text, job.prompt.steps, job.seed, self.catalog)
        image = made.image
        derivation = DerivationRecord(
            child_id="",
            parent_id=None,
            op=self.op,
            model_ref=made.model_ref,
            loras=made.loras,
            prompt=text,
            prompt_id=job.prompt.id,
            seed=job.seed,
            steps=made.steps,
            guidance=made.sampling.guidance,
            params={
                "pipeline": made.pipeline,
                "profile": self.manager.profile.name,
                "lora_id": self.lora_id,
                "category": job.prompt.category,
                "width": image.width,
                "height": image.height,
                "scheduler": made.scheduler,
                "generator": "torch.Generator('cpu').manual_seed(seed)",
            },
            job_key=self.key(job),
        )
        return image, derivation


def pending_generation(
    catalog: Catalog,
    character: str,
    generator: SyntheticGenerator,
    prompts: Sequence[PromptEntry],
    seeds: Sequence[int],
) -> list[GenerationJob]:
    """Prompt x seed jobs of this generator that have no derivation yet, in a stable order."""
    jobs = [GenerationJob(p, s) for p in prompts for s in seeds]
    done = catalog.done_job_keys(character, "generate")
    return [j for j in jobs if generator.key(j) not in done]


def plan_generation(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    lora_id: str,
    profile: str | None,
    prompt_ids: Sequence[str] | None,
    seeds: int,
) -> list[GenerationJob]:
    """The synthetic jobs (prompt x seed 0..seeds-1) still to generate with ``lora_id``. Job keys depend on the
    profile's settings and the LoRA, not on a loaded model, so nothing is loaded to plan."""
    planner = SyntheticGenerator(ws, ModelManager(ws, ws.profile(profile)), catalog, character, lora_id)
    return pending_generation(catalog, character.name, planner, synthetic_prompts(ws, prompt_ids), list(range(seeds)))


def run_generation_batch(
    ws: Workspace,
    catalog: Catalog,
    character: str,
    generator: SyntheticGenerator,
    jobs: Sequence[GenerationJob],
    run_id: str | None,
) -> list[str]:
    """Generate, store and record ``jobs`` in one catalog transaction; returns the new image ids in job order.
    In cluster mode a worker runs :func:`generate_outputs` and the flow stores and records them the same way."""
    return store_outputs(ws, catalog, character, "generate", (generator.generate(j) for j in jobs), run_id)


def generate_outputs(
    generator: SyntheticGenerator, jobs: Sequence[GenerationJob]
) -> list[tuple[EncodedImage, DerivationRecord]]:
    """Generate ``jobs`` without touching the store or the catalog: encoded images and their derivations."""
    return [(EncodedImage.of(image), derivation) for image, derivation in (generator.generate(j) for j in jobs)]
