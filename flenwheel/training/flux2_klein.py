"""FLUX.2 [klein] LoRA on klein-base-4B: the FLUX.1 recipe (:mod:`.flux`) on ``Flux2KleinPipeline``'s encoders.

BFL recommends the undistilled ``FLUX.2-klein-base-4B`` for training; the LoRA then runs on it (50 steps, CFG) or on
the step-distilled ``FLUX.2-klein-4B`` (4 steps) at inference. What differs from FLUX.1, all taken from the pipeline
itself so checkpoint samples are what inference produces:

* the caption is embedded by Qwen3 through the pipeline's chat template, hidden states of layers 9/18/27 stacked
  (``encode_prompt``), padded to ``max_sequence_length`` as the pipeline pads them;
* latents are the VAE's, 2x2-patchified and batch-normalised (``_encode_vae_image``): 128 channels, no shift/scale;
* tokens and 4-d position ids come from ``_pack_latents``, ``_prepare_latent_ids``, ``_prepare_text_ids``; there
  is no guidance embedding (``guidance=None``) and CFG runs on an empty-prompt embedding at sampling.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import Flux2KleinPipeline
from PIL import Image
from safetensors.torch import load_file

from flenwheel.models.families import family
from flenwheel.store.objects import open_rgb
from flenwheel.training.backend import TrainingBackend, free_memory
from flenwheel.training.checkpoints import atomic_save_file
from flenwheel.training.data import Example, bucket_resolution, bucket_size, fit_to_bucket
from flenwheel.training.lora_formats import flux2_to_comfy

FAMILY = family("flux2-klein")


class Flux2KleinBackend(TrainingBackend):
    """FLUX.2 [klein] LoRA (cached latents and Qwen3 embeddings; the same generic loop as FLUX.1)."""

    kind = FAMILY.lora_kind or "flux2_klein"
    pipeline_kind = FAMILY.name
    pipeline_class = "Flux2KleinPipeline"
    transformer_class = "Flux2Transformer2DModel"
    vae_class = "AutoencoderKLFlux2"
    base_model_version = "flux2_klein_4b"
    default_targets = FAMILY.lora_targets

    # ---- caching

    def _encode_texts(self, pipe: Any, texts: Sequence[str]) -> list[dict[str, torch.Tensor]]:
        out = []
        with torch.no_grad():
            for text in texts:
                embeds, _ = pipe.encode_prompt(
                    prompt=text, device=self.device, max_sequence_length=self.settings.max_sequence_length
                )
                out.append({"prompt_embeds": embeds[0].float().cpu()})
        return out

    def _encoders(self) -> Any:
        pipe = self._pipeline_without_transformer()
        return pipe.to(self.device)

    def cache(self, examples: Sequence[Example], cache_dir: Path) -> list[dict[str, torch.Tensor]]:
        files = [cache_dir / f"{e.key}.safetensors" for e in examples]
        missing = [i for i, f in enumerate(files) if not f.exists()]
        if missing:
            pipe = self._encoders()
            texts = self._encode_texts(pipe, [examples[i].text for i in missing])
            for i, text in zip(missing, texts, strict=True):
                img = open_rgb(examples[i].images[0])
                size = bucket_size(img.width, img.height, bucket_resolution(examples[i].key, self.settings.resolutions))
                pixels = pipe.image_processor.preprocess(fit_to_bucket(img, size)).to(self.device, self.dtype)
                with torch.no_grad():
                    latents = pipe._encode_vae_image(pixels, None)  # patchified, batch-normalised
                atomic_save_file({"latents": latents[0].float().cpu(), **text}, files[i])
            del pipe
            free_memory()
        return [load_file(str(f)) for f in files]

    def cache_samples(self, prompts: Sequence[str], cache_dir: Path) -> list[dict[str, torch.Tensor]]:
        """Each sample prompt's embedding with the empty prompt's beside it (the pipeline's CFG negative)."""
        key = lambda p: hashlib.sha256(f"{p}|{self.settings.max_sequence_length}".encode()).hexdigest()[:16]  # noqa: E731
        files = [cache_dir / f"sample-{key(p)}.safetensors" for p in prompts]
        todo = [i for i, f in enumerate(files) if not f.exists()]
        if todo:
            pipe = self._encoders()
            (negative,) = self._encode_texts(pipe, [""])
            for i, enc in zip(todo, self._encode_texts(pipe, [prompts[i] for i in todo]), strict=True):
                atomic_save_file({**enc, "negative_embeds": negative["prompt_embeds"]}, files[i])
            del pipe
            free_memory()
        return [load_file(str(f)) for f in files]

    # ---- training

    def loss(
        self, transformer: torch.nn.Module, batch: list[dict[str, torch.Tensor]], gen: torch.Generator
    ) -> torch.Tensor:
        x0 = torch.stack([b["latents"] for b in batch]).to(self.device, self.dtype)
        n = x0.shape[0]
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(self.device, self.dtype)
        timesteps, sigmas = self.sample_timesteps(self._vae_and_scheduler()[1], n, gen)
        s = sigmas.view(n, 1, 1, 1).to(self.device, self.dtype)
        noisy = (1.0 - s) * x0 + s * noise
        embeds = torch.stack([b["prompt_embeds"] for b in batch]).to(self.device, self.dtype)
        pred = transformer(
            hidden_states=Flux2KleinPipeline._pack_latents(noisy),
            encoder_hidden_states=embeds,
            timestep=(timesteps / 1000).to(self.device, self.dtype),
            img_ids=Flux2KleinPipeline._prepare_latent_ids(noisy).to(self.device),
            txt_ids=Flux2KleinPipeline._prepare_text_ids(embeds).to(self.device),
            guidance=None,
            return_dict=False,
        )[0]
        target = Flux2KleinPipeline._pack_latents(noise - x0)
        return torch.mean((pred.float() - target.float()) ** 2)

    def sample(
        self, transformer: torch.nn.Module, conds: list[dict[str, torch.Tensor]], seeds: Sequence[int]
    ) -> list[Image.Image]:
        vae, scheduler = self._vae_and_scheduler()
        vae.to(self.device)
        pipe = Flux2KleinPipeline(
            scheduler=type(scheduler).from_config(scheduler.config),
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            transformer=transformer,
        )
        images = self.sample_with(
            pipe,
            conds,
            seeds,
            lambda c: {"prompt_embeds": c["prompt_embeds"], "negative_prompt_embeds": c["negative_embeds"]},
        )
        vae.to("cpu")
        return images

    def comfy_state_dict(self, diffusers_sd: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        config = json.loads((self.model.path / "transformer" / "config.json").read_text())
        return flux2_to_comfy(diffusers_sd, alpha, config["num_attention_heads"] * config["attention_head_dim"])
