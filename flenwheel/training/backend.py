"""The model-specific half of a LoRA trainer: encode and cache, the loss of a batch, sampling, file names.

The generic loop (:mod:`.trainer`) drives a backend; :mod:`.flux` and :mod:`.qwen_edit` are the two backends.
"""

from __future__ import annotations

import gc
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers.training_utils import compute_density_for_timestep_sampling
from PIL import Image

from flenwheel.config import PipelineKind, Profile, TrainerSettings
from flenwheel.models import resolve_model, torch_dtype
from flenwheel.training.checkpoints import TrainingError
from flenwheel.training.data import Example
from flenwheel.workspace import Workspace


class TrainingBackend(ABC):
    """The model-specific half of a trainer."""

    kind: str  # 'flux' or 'qwen_edit' (the loras.kind column)
    pipeline_kind: PipelineKind  # which model runtime pipeline the base model is
    pipeline_class: str  # diffusers class whose save_lora_weights writes the diffusers format
    transformer_class: str  # diffusers class of the denoiser
    vae_class: str  # diffusers class of the VAE
    base_model_version: str  # kohya's ss_base_model_version in the saved file's metadata

    def __init__(self, ws: Workspace, profile: Profile, settings: TrainerSettings, model_spec: str) -> None:
        self.ws, self.profile, self.settings = ws, profile, settings
        self.device = torch.device("cuda" if profile.device == "cuda" else "cpu")
        self.dtype = torch_dtype(profile)
        self.model = resolve_model(model_spec, self.pipeline_kind, ws)
        self._vae: Any = None
        self._scheduler: Any = None

    # ---- components (loaded from the model folder on demand)

    def _pipeline_without_transformer(self) -> Any:
        """The pipeline's encoders, for caching; the transformer is loaded separately as the profile says."""
        cls = getattr(diffusers, self.pipeline_class)
        return cls.from_pretrained(str(self.model.path), transformer=None, dtype=self.dtype)

    def _vae_and_scheduler(self) -> tuple[Any, Any]:
        if self._vae is None:
            vae_cls = getattr(diffusers, self.vae_class)
            self._vae = vae_cls.from_pretrained(str(self.model.path), subfolder="vae", dtype=self.dtype)
            self._vae.requires_grad_(False).eval()
            self._scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(
                str(self.model.path), subfolder="scheduler"
            )
        return self._vae, self._scheduler

    @abstractmethod
    def cache(self, examples: Sequence[Example], cache_dir: Path) -> list[dict[str, torch.Tensor]]:
        """Encode every example once (latents, embeddings) into ``cache_dir``; frees the encoders after."""

    @abstractmethod
    def cache_samples(self, prompts: Sequence[str], cache_dir: Path) -> list[dict[str, torch.Tensor]]:
        """Embeddings of the sample prompts (or sample inputs), cached like the examples."""

    def load_transformer(self) -> torch.nn.Module:
        """The base transformer as the profile says (nf4 base for QLoRA), on the training device."""
        kwargs: dict[str, Any] = {"subfolder": "transformer", "dtype": self.dtype}
        if self.settings.qlora:
            if self.device.type != "cuda":
                raise TrainingError("QLoRA (nf4 base) needs a CUDA GPU: use a cpu profile without qlora")
            from diffusers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=self.dtype
            )
        cls = getattr(diffusers, self.transformer_class)
        transformer = cls.from_pretrained(str(self.model.path), **kwargs)
        if self.settings.qlora:
            from peft import prepare_model_for_kbit_training

            transformer = prepare_model_for_kbit_training(transformer, use_gradient_checkpointing=False)
        else:
            transformer.to(self.device)
        return transformer

    def sample_timesteps(self, scheduler: Any, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps and sigmas of a batch, drawn as diffusers' flow-matching examples do (logit-normal)."""
        u = compute_density_for_timestep_sampling(
            weighting_scheme="logit_normal" if self.settings.weighting_scheme == "logit_normal" else "none",
            batch_size=n, logit_mean=0.0, logit_std=1.0, generator=gen,
        )  # fmt: skip
        indices = (u * scheduler.config.num_train_timesteps).long().clamp(max=scheduler.config.num_train_timesteps - 1)
        return scheduler.timesteps[indices], scheduler.sigmas[indices]

    @abstractmethod
    def loss(
        self, transformer: torch.nn.Module, batch: list[dict[str, torch.Tensor]], gen: torch.Generator
    ) -> torch.Tensor:
        """The flow-matching loss of one batch (all items share a bucket)."""

    @abstractmethod
    def sample(
        self, transformer: torch.nn.Module, conds: list[dict[str, torch.Tensor]], seeds: Sequence[int]
    ) -> list[Image.Image]:
        """Images from the current weights, one per (condition, seed)."""

    @abstractmethod
    def comfy_state_dict(self, diffusers_sd: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        """The same LoRA with ComfyUI's key names."""

    def release(self) -> None:
        """Free the VAE and caches held for sampling."""
        self._vae = None
        free_memory()


def free_memory() -> None:
    """Give freed tensors back (to the OS, and to the GPU's caching allocator when there is one)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
