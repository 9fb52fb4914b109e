"""FLUX.1-dev LoRA: diffusers' train_dreambooth_lora_flux recipe, with cached latents and text embeddings.

Packing, image ids, the VAE shift and scale, logit-normal timesteps, the flow-matching target and the guidance
embedding follow diffusers' example; sampling goes through ``FluxPipeline`` itself, so checkpoint samples are
what inference produces.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxPipeline
from diffusers.image_processor import VaeImageProcessor
from PIL import Image
from safetensors.torch import load_file

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character, Profile
from flenwheel.evaluation import SampleScorer
from flenwheel.evaluation.scoring import configured_critic
from flenwheel.models import runtime
from flenwheel.models.families import family
from flenwheel.models.loading import check_device
from flenwheel.store.objects import open_rgb
from flenwheel.store.workspace import Workspace
from flenwheel.training.backend import TrainingBackend, backend_class, free_memory
from flenwheel.training.checkpoints import atomic_save_file
from flenwheel.training.data import (
    Example,
    bucket_resolution,
    bucket_size,
    export_version,
    fit_to_bucket,
    version_examples,
)
from flenwheel.training.judging import evaluation_judge, evaluation_samples
from flenwheel.training.lora_formats import flux_to_comfy
from flenwheel.training.trainer import LoraTrainer, ProgressFn, TrainJob, TrainResult

log = logging.getLogger(__name__)


class FluxBackend(TrainingBackend):
    """FLUX.1-dev LoRA (diffusers' train_dreambooth_lora_flux recipe, with cached latents and embeddings)."""

    kind = "flux"
    pipeline_kind = "flux"
    pipeline_class = "FluxPipeline"
    transformer_class = "FluxTransformer2DModel"
    vae_class = "AutoencoderKL"
    base_model_version = "flux1"
    default_targets = family("flux").lora_targets  # flenwheel/models/<family>/family.py says why

    @property
    def vae_scale_factor(self) -> int:
        vae, _ = self._vae_and_scheduler()
        return 2 ** (len(vae.config.block_out_channels) - 1)

    # ---- caching

    def _encode_texts(self, texts: Sequence[str]) -> list[dict[str, torch.Tensor]]:
        pipe = self._pipeline_without_transformer()
        pipe.to(self.device)
        out = []
        with torch.no_grad():
            for text in texts:
                embeds, pooled, _ = pipe.encode_prompt(
                    prompt=text,
                    prompt_2=text,
                    device=self.device,
                    max_sequence_length=self.settings.max_sequence_length,
                )
                out.append({"prompt_embeds": embeds[0].float().cpu(), "pooled": pooled[0].float().cpu()})
        del pipe
        free_memory()
        return out

    def cache(self, examples: Sequence[Example], cache_dir: Path) -> list[dict[str, torch.Tensor]]:
        files = [cache_dir / f"{e.key}.safetensors" for e in examples]
        missing = [i for i, f in enumerate(files) if not f.exists()]
        if missing:
            texts = self._encode_texts([examples[i].text for i in missing])
            vae, _ = self._vae_and_scheduler()
            vae.to(self.device)
            processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
            for i, text in zip(missing, texts, strict=True):
                img = open_rgb(examples[i].images[0])
                resolution = bucket_resolution(examples[i].key, self.settings.resolutions)
                size = bucket_size(img.width, img.height, resolution)
                pixels = processor.preprocess(fit_to_bucket(img, size)).to(self.device, self.dtype)
                with torch.no_grad():
                    latents = vae.encode(pixels).latent_dist.mode()
                latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
                atomic_save_file({"latents": latents[0].float().cpu(), **text}, files[i])
            vae.to("cpu")
        return [load_file(str(f)) for f in files]

    def cache_samples(self, prompts: Sequence[str], cache_dir: Path) -> list[dict[str, torch.Tensor]]:
        files = [cache_dir / f"sample-{hashlib.sha256(p.encode()).hexdigest()[:16]}.safetensors" for p in prompts]
        todo = [i for i, f in enumerate(files) if not f.exists()]
        if todo:
            for i, enc in zip(todo, self._encode_texts([prompts[i] for i in todo]), strict=True):
                atomic_save_file(enc, files[i])
        return [load_file(str(f)) for f in files]

    def loss(
        self, transformer: torch.nn.Module, batch: list[dict[str, torch.Tensor]], gen: torch.Generator
    ) -> torch.Tensor:
        x0 = torch.stack([b["latents"] for b in batch]).to(self.device, self.dtype)
        n, c, h, w = x0.shape
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(self.device, self.dtype)
        timesteps, sigmas = self.sample_timesteps(self._vae_and_scheduler()[1], n, gen)
        s = sigmas.view(n, 1, 1, 1).to(self.device, self.dtype)
        noisy = (1.0 - s) * x0 + s * noise
        packed = FluxPipeline._pack_latents(noisy, n, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, self.device, self.dtype)
        embeds = torch.stack([b["prompt_embeds"] for b in batch]).to(self.device, self.dtype)
        pooled = torch.stack([b["pooled"] for b in batch]).to(self.device, self.dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((n,), self.settings.guidance, device=self.device, dtype=torch.float32)
        pred = transformer(
            hidden_states=packed,
            timestep=(timesteps / 1000).to(self.device, self.dtype),
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        pred = FluxPipeline._unpack_latents(
            pred, h * self.vae_scale_factor, w * self.vae_scale_factor, self.vae_scale_factor
        )
        target = noise - x0
        return torch.mean((pred.float() - target.float()) ** 2)

    def sample(
        self, transformer: torch.nn.Module, conds: list[dict[str, torch.Tensor]], seeds: Sequence[int]
    ) -> list[Image.Image]:
        vae, scheduler = self._vae_and_scheduler()
        vae.to(self.device)
        pipe = FluxPipeline(
            scheduler=type(scheduler).from_config(scheduler.config),
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            transformer=transformer,
        )
        images = self.sample_with(
            pipe, conds, seeds, lambda c: {"prompt_embeds": c["prompt_embeds"], "pooled_prompt_embeds": c["pooled"]}
        )
        vae.to("cpu")
        return images

    def _dims(self, transformer_config: dict[str, Any]) -> tuple[int, int]:
        inner = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
        return inner, int(inner * 4.0)  # FLUX single blocks: mlp_ratio 4

    def comfy_state_dict(self, diffusers_sd: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        config = json.loads((self.model.path / "transformer" / "config.json").read_text())
        return flux_to_comfy(diffusers_sd, alpha, *self._dims(config))


def train_flux(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    version_id: str,
    profile: Profile,
    run_id: str | None,
    steps: int | None = None,
    resume: bool = True,
    on_progress: ProgressFn | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train the character LoRA of ``character`` on a frozen dataset version (exported for other trainers too), with
    the trainer backend of the profile's generator family (FLUX.1 here, FLUX.2 [klein] in :mod:`.flux2_klein`).

    Every checkpoint samples the character's evaluation prompt set (unless the profile names ``sample_prompts``)
    and is scored by the evaluation engine against ``version_id``: the exported checkpoint has the best composite
    of good samples, prompt adherence and copies of training images (docs/training.md).
    """
    check_device(profile)
    settings = profile.trainer if steps is None else profile.trainer.model_copy(update={"steps": steps})
    export_version(ws, catalog, version_id)
    backend_cls = backend_class(profile.family_of("generator"))
    backend = backend_cls(ws, profile, settings, settings.model or profile.generator.model)
    job = TrainJob(
        character.name,
        version_id,
        version_examples(ws, catalog, version_id),
        backend.settings,
        character.trigger,
        base_model_ref=backend.model.ref,
    )
    if settings.sample_prompts is None:
        job.sample_prompts, job.sample_seeds = evaluation_samples(ws, character)
        # which prompts chose the checkpoint is part of the run (its fingerprint, the LoRA's recorded settings)
        job.extra["evaluation_set"] = {"prompts": [p.prompt_id for p in job.sample_prompts], "seeds": job.sample_seeds}
    scorer = SampleScorer(ws, catalog, character, version_id, configured_critic(ws, profile.name))
    leaked = scorer.in_training_captions({p.prompt_id or p.text: p.text for p in job.samples()[0]})
    if leaked:
        log.warning(f"checkpoint sample prompt(s) {', '.join(leaked)} are training captions of {version_id}")
    trainer = LoraTrainer(ws, catalog, backend, run_id)
    try:
        return trainer.train(job, evaluation_judge(scorer), resume, on_progress, stop_after)
    finally:
        runtime.release_vlms()  # the critic, if one answered the checks, leaves the card with the run
