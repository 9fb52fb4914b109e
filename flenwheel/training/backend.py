"""The model-specific half of a LoRA trainer: encode and cache, the loss of a batch, sampling, file names.

The generic loop (:mod:`.trainer`) drives a backend; :mod:`.flux`, :mod:`.flux2_klein` and :mod:`.qwen_edit` are the
backends, each named by its model family (``flenwheel/models/<family>/family.py``) and found by :func:`backend_class`.
"""

from __future__ import annotations

import contextlib
import gc
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import BitsAndBytesConfig
from diffusers.training_utils import compute_density_for_timestep_sampling
from PIL import Image

from flenwheel.core.config import PipelineKind, Profile, TrainerSettings
from flenwheel.models.families import family, load_object
from flenwheel.models.loading import torch_dtype
from flenwheel.models.refs import resolve_model
from flenwheel.models.weights import check_component, check_pipeline
from flenwheel.store.workspace import Workspace
from flenwheel.training.checkpoints import TrainingError
from flenwheel.training.data import LATENT_MULTIPLE, Example


class TrainingBackend(ABC):
    """The model-specific half of a trainer."""

    kind: str  # 'flux' or 'qwen_edit' (the loras.kind column)
    pipeline_kind: PipelineKind  # which model runtime pipeline the base model is
    pipeline_class: str  # diffusers class whose save_lora_weights writes the diffusers format
    transformer_class: str  # diffusers class of the denoiser
    vae_class: str  # diffusers class of the VAE
    base_model_version: str  # kohya's ss_base_model_version in the saved file's metadata
    cache_format: int = 1  # bumped when what a cached item holds changes, so old caches are not reused
    default_targets: tuple[str, ...]  # LoRA target modules when the profile names none (docs/training.md)

    def __init__(self, ws: Workspace, profile: Profile, settings: TrainerSettings, model_spec: str) -> None:
        self.ws, self.profile = ws, profile
        self.settings = self.with_targets(settings)
        self.device = torch.device("cuda" if profile.device == "cuda" else "cpu")
        self.dtype = torch_dtype(profile)
        self.model = resolve_model(model_spec, self.pipeline_kind, ws)
        self._vae: Any = None
        self._scheduler: Any = None

    # ---- components (loaded from the model folder on demand)

    # Every component is checked against its class before it loads (flenwheel.models.weights): diffusers and
    # transformers only warn about missing keys and train on with meta or made-up weights.

    def _pipeline_without_transformer(self) -> Any:
        """The pipeline's encoders, for caching; the transformer is loaded separately as the profile says."""
        cls = getattr(diffusers, self.pipeline_class)
        check_pipeline(self.model.path, skip=["transformer"])
        return cls.from_pretrained(str(self.model.path), transformer=None, dtype=self.dtype)

    def _vae_and_scheduler(self) -> tuple[Any, Any]:
        if self._vae is None:
            vae_cls = getattr(diffusers, self.vae_class)
            check_component(vae_cls, self.model.path / "vae", self.model.path, "vae")
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

    def sample_with(
        self,
        pipe: Any,
        conds: Sequence[dict[str, torch.Tensor]],
        seeds: Sequence[int],
        embeds: Any,
    ) -> list[Image.Image]:
        """Checkpoint samples through ``pipe`` (a text-encoder-less pipeline on the training transformer): every
        cached conditioning x every seed (CPU generator) at the sample size, steps and guidance of the settings;
        ``embeds(cond)`` names a conditioning's tensors as the pipeline's keyword arguments."""
        pipe.set_progress_bar_config(disable=True)
        size = self.settings.sample_size // LATENT_MULTIPLE * LATENT_MULTIPLE
        images = []
        with torch.no_grad():
            for cond in conds:
                kwargs = {name: t[None].to(self.device, self.dtype) for name, t in embeds(cond).items()}
                for seed in seeds:
                    out = pipe(
                        **kwargs,
                        height=size,
                        width=size,
                        num_inference_steps=self.settings.sample_steps,
                        guidance_scale=self.settings.sample_guidance,
                        generator=torch.Generator("cpu").manual_seed(seed),
                    )
                    images.append(out.images[0])
        return images

    @classmethod
    def with_targets(cls, settings: TrainerSettings) -> TrainerSettings:
        """``settings`` with the target modules spelled out (the backend's default when none are set), so they
        enter the run's fingerprint and the saved file's metadata."""
        if settings.target_modules:
            return settings
        return settings.model_copy(update={"target_modules": list(cls.default_targets)})

    def load_transformer(self) -> torch.nn.Module:
        """The frozen base transformer as the profile says (an nf4 base for QLoRA), on the training device.

        The base stays in the profile's compute dtype. peft's ``prepare_model_for_kbit_training``, which the
        QLoRA recipe used to call, upcasts every weight that is not 4-bit to fp32; diffusers' RMSNorm then
        returns fp32 activations and Qwen-Image's joint attention runs in fp32 from the first block: about twice
        the activation memory and no bf16 attention kernel. Only the LoRA weights are fp32
        (:meth:`LoraTrainer.prepare_model`); the forward runs under :meth:`autocast`, as the reference trainers'
        mixed precision does.
        """
        kwargs: dict[str, Any] = {"subfolder": "transformer", "dtype": self.dtype}
        if self.settings.qlora:
            if self.device.type != "cuda":
                raise TrainingError("QLoRA (nf4 base) needs a CUDA GPU: use a cpu profile without qlora")
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=self.dtype
            )
        cls = getattr(diffusers, self.transformer_class)
        check_component(cls, self.model.path / "transformer", self.model.path, "transformer")
        transformer = cls.from_pretrained(str(self.model.path), **kwargs)
        return self.prepare_base(transformer)

    def prepare_base(self, transformer: torch.nn.Module) -> torch.nn.Module:
        """Freeze the loaded base and keep it in its compute dtype (see :meth:`load_transformer`)."""
        transformer.requires_grad_(False)
        if not self.settings.qlora:  # a quantized model is placed on the GPU by its loader
            transformer.to(self.device)
        return transformer

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for forward passes: half-precision matmuls and attention when the profile computes in
        bf16/fp16 (LoRA weights stay fp32), nothing in an fp32 profile."""
        half = self.dtype in (torch.bfloat16, torch.float16)
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=half)

    def batch_key(self, item: dict[str, torch.Tensor]) -> tuple:
        """Items with equal keys can share a batch (their tensors stack): the bucket of the target."""
        return tuple(item["latents"].shape)

    def sample_timesteps(self, scheduler: Any, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps and sigmas of a batch, drawn as diffusers' flow-matching examples do (logit-normal)."""
        u = compute_density_for_timestep_sampling(
            weighting_scheme="logit_normal" if self.settings.weighting_scheme == "logit_normal" else "none",
            batch_size=n,
            logit_mean=0.0,
            logit_std=1.0,
            generator=gen,
        )
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

    def check_targets(self, transformer: torch.nn.Module) -> None:
        """Refuse, before training, target modules the ComfyUI/kohya export could not name (a dry run of it)."""
        adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in transformer.named_parameters() if ".lora_A." in n}
        dry = {}
        for module in adapted:
            layer = transformer.get_submodule(module).base_layer
            dry[f"transformer.{module}.lora_A.weight"] = torch.zeros(1, layer.in_features)
            dry[f"transformer.{module}.lora_B.weight"] = torch.zeros(layer.out_features, 1)
        try:
            self.comfy_state_dict(dry, 1.0)
        except TrainingError as e:
            raise TrainingError(f"target_modules {list(self.settings.target_modules or [])}: {e}") from None

    @abstractmethod
    def comfy_state_dict(self, diffusers_sd: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        """The same LoRA with ComfyUI's key names."""

    def release(self) -> None:
        """Free the VAE and caches held for sampling."""
        self._vae = None
        free_memory()


def backend_class(family_name: str) -> type[TrainingBackend]:
    """The trainer backend a model family names (its ``family.py``: ``trainer_backend``, by import path)."""
    fam = family(family_name)
    if not fam.trainer_backend:
        raise TrainingError(f"model family {fam.name} has no trainer backend: its LoRAs cannot be trained here")
    cls = load_object(fam.trainer_backend)
    if not (isinstance(cls, type) and issubclass(cls, TrainingBackend)):
        raise TrainingError(f"model family {fam.name}: {fam.trainer_backend} is not a TrainingBackend")
    return cls


def free_memory() -> None:
    """Give freed tensors back (to the OS, and to the GPU's caching allocator when there is one)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
