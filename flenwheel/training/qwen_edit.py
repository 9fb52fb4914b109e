"""Qwen-Image-Edit-2509 LoRA on (before, instruction, after) triplets, for flywheel 2.

There is no official diffusers trainer for the edit model; this backend follows the recipe of musubi-tuner's
Qwen-Image-Edit training and of ``QwenImageEditPlusPipeline`` itself, and plugs into the generic loop:

* the *after* image is the target: its VAE latents are noised with the flow-matching schedule;
* the *before* image is the condition: its clean latents are packed and concatenated after the noisy target
  along the sequence, ``img_shapes`` lists both, and only the target tokens enter the loss;
* the instruction is embedded by the Qwen2.5-VL encoder *given the condition image*, as the pipeline does;
* latents and embeddings are cached on disk per dataset and model; the VL encoder and VAE encoder are freed
  after caching, so training holds only the transformer (nf4 under the gpu-24gb profile).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import CONDITION_IMAGE_SIZE, calculate_dimensions
from PIL import Image
from safetensors.torch import load_file

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character, Profile, TrainerSettings
from flenwheel.models.families import family
from flenwheel.models.loading import check_device
from flenwheel.store.objects import open_rgb
from flenwheel.store.workspace import Workspace
from flenwheel.training.backend import TrainingBackend, backend_class, free_memory
from flenwheel.training.checkpoints import TrainingError, atomic_save_file
from flenwheel.training.data import Example, bucket_resolution, bucket_size, fit_to_bucket
from flenwheel.training.job import ProgressFn, TrainJob, TrainResult
from flenwheel.training.judging import identity_judge, identity_scorer
from flenwheel.training.lora_formats import qwen_to_comfy
from flenwheel.training.trainer import LoraTrainer
from flenwheel.training.triplets import approved_triplets, export_triplets, split_held_out


def condition_inputs(pipe: Any, condition: Image.Image, area: int) -> tuple[Image.Image, torch.Tensor]:
    """The condition exactly as ``QwenImageEditPlusPipeline`` prepares it: a copy of ~384² pixels for the VL
    encoder, and pixels of ``area`` (the pipeline's ~1 MP by default) at the image's aspect, resized the way the
    pipeline resizes them, for the VAE. Training on another condition size would teach the LoRA a condition
    token count it never sees in use."""
    ratio = condition.width / condition.height
    vl_w, vl_h = calculate_dimensions(CONDITION_IMAGE_SIZE, ratio)
    vae_w, vae_h = calculate_dimensions(area, ratio)
    vl_image = pipe.image_processor.resize(condition, vl_h, vl_w)
    return vl_image, pipe.image_processor.preprocess(condition, vae_h, vae_w).unsqueeze(2)


def _pad(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack [L_i, D] prompt embeddings into [B, L, D] with a mask (prompts differ in length)."""
    longest = max(t.shape[0] for t in tensors)
    embeds = torch.zeros(len(tensors), longest, tensors[0].shape[1], dtype=tensors[0].dtype)
    mask = torch.zeros(len(tensors), longest, dtype=torch.long)
    for i, t in enumerate(tensors):
        embeds[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = 1
    return embeds, mask


class QwenEditBackend(TrainingBackend):
    """Qwen-Image-Edit-2509 (``QwenImageEditPlusPipeline``) LoRA on (before, instruction, after) examples."""

    kind = "qwen_edit"
    pipeline_kind = "qwen-image-edit"
    pipeline_class = "QwenImageEditPlusPipeline"
    transformer_class = "QwenImageTransformer2DModel"
    vae_class = "AutoencoderKLQwenImage"
    base_model_version = "qwen_image_edit"
    cache_format = 2  # 2: the condition at the pipeline's size, buckets chosen per example
    default_targets = family("qwen-image-edit").lora_targets  # flenwheel/models/<family>/family.py says why

    def __init__(
        self,
        ws: Workspace,
        profile: Profile,
        settings: TrainerSettings,
        model_spec: str,
        sample_sources: Sequence[Path] = (),
    ) -> None:
        super().__init__(ws, profile, settings, model_spec)
        self.sample_sources = list(sample_sources)

    # ---- caching

    def _encode(self, pipe: Any, items: Sequence[tuple[str, Image.Image, Image.Image | None, str]]) -> list[dict]:
        """(key, condition image, target image or None, instruction) -> cached tensors, with the pipeline's
        encoders: the instruction embedded given the condition as the VL encoder sees it, the condition's VAE
        latents at the size the pipeline gives the transformer, and the target's latents at its bucket."""
        out = []
        with torch.no_grad():
            for key, condition, target, text in items:
                vl_image, pixels = condition_inputs(pipe, condition, self.settings.control_area)
                embeds, mask = pipe.encode_prompt(prompt=[text], image=[vl_image], device=self.device)
                item: dict[str, torch.Tensor] = {"prompt_embeds": embeds[0].float().cpu()}
                if mask is not None:
                    item["prompt_embeds"] = item["prompt_embeds"][: int(mask[0].sum())]
                if target is not None:  # sample conditions need no latents: the pipeline encodes its input itself
                    item["control"] = self._latents(pipe, pixels)
                    size = bucket_size(target.width, target.height, bucket_resolution(key, self.settings.resolutions))
                    item["latents"] = self._latents(pipe, pipe.image_processor.preprocess(fit_to_bucket(target, size)))
                out.append(item)
        return out

    def _latents(self, pipe: Any, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised VAE latents [C, h, w] of preprocessed pixels [1, 3, H, W]."""
        frames = (pixels if pixels.dim() == 5 else pixels.unsqueeze(2)).to(self.device, self.dtype)  # one video frame
        return pipe._encode_vae_image(frames, None)[:, :, 0][0].float().cpu()

    def cache(self, examples: Sequence[Example], cache_dir: Path) -> list[dict[str, torch.Tensor]]:
        files = [cache_dir / f"{e.key}.safetensors" for e in examples]
        missing = [i for i, f in enumerate(files) if not f.exists()]
        if missing:
            pipe = self._pipeline_without_transformer()
            pipe.to(self.device)
            items = []
            for i in missing:
                before, after = (open_rgb(p) for p in examples[i].images)
                items.append((examples[i].key, before, after, examples[i].text))
            for i, item in zip(missing, self._encode(pipe, items), strict=True):
                atomic_save_file(item, files[i])
            del pipe  # the VL encoder leaves memory before training starts
            free_memory()
        return [load_file(str(f)) for f in files]

    def cache_samples(self, prompts: Sequence[str], cache_dir: Path) -> list[dict[str, torch.Tensor]]:
        """One condition per (sample source, instruction); the source image rides along for the pipeline."""
        if not self.sample_sources:
            return []
        combos = [(src, p) for src in self.sample_sources for p in prompts]
        keys = [hashlib.sha256(f"{src.name}|{p}".encode()).hexdigest()[:16] for src, p in combos]
        files = [cache_dir / f"sample-{k}.safetensors" for k in keys]
        todo = [i for i, f in enumerate(files) if not f.exists()]
        if todo:
            pipe = self._pipeline_without_transformer()
            pipe.to(self.device)
            encoded = self._encode(pipe, [(keys[i], open_rgb(combos[i][0]), None, combos[i][1]) for i in todo])
            for i, item in zip(todo, encoded, strict=True):
                atomic_save_file(item, files[i])
            del pipe
            free_memory()
        return [{**load_file(str(f)), "source": str(src)} for f, (src, _) in zip(files, combos, strict=True)]

    # ---- training

    def batch_key(self, item: dict[str, torch.Tensor]) -> tuple:
        """The target's bucket and the condition's size (conditions keep their own aspect)."""
        return tuple(item["latents"].shape), tuple(item["control"].shape)

    def loss(
        self, transformer: torch.nn.Module, batch: list[dict[str, torch.Tensor]], gen: torch.Generator
    ) -> torch.Tensor:
        x0 = torch.stack([b["latents"] for b in batch]).to(self.device, self.dtype)
        control = torch.stack([b["control"] for b in batch]).to(self.device, self.dtype)
        n, c, h, w = x0.shape
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(self.device, self.dtype)
        timesteps, sigmas = self.sample_timesteps(self._vae_and_scheduler()[1], n, gen)
        s = sigmas.view(n, 1, 1, 1).to(self.device, self.dtype)
        noisy = QwenImageEditPlusPipeline._pack_latents((1.0 - s) * x0 + s * noise, n, c, h, w)
        packed_control = QwenImageEditPlusPipeline._pack_latents(control, n, c, control.shape[2], control.shape[3])
        embeds, mask = _pad([b["prompt_embeds"] for b in batch])
        img_shapes = [[(1, h // 2, w // 2), (1, control.shape[2] // 2, control.shape[3] // 2)]] * n
        pred = transformer(
            hidden_states=torch.cat([noisy, packed_control], dim=1),
            timestep=(timesteps / 1000).to(self.device, self.dtype),
            encoder_hidden_states=embeds.to(self.device, self.dtype),
            encoder_hidden_states_mask=mask.to(self.device),
            img_shapes=img_shapes,
            return_dict=False,
        )[0][:, : noisy.shape[1]]  # the target tokens only: the condition is given, not learned
        target = QwenImageEditPlusPipeline._pack_latents(noise - x0, n, c, h, w)
        return torch.mean((pred.float() - target.float()) ** 2)

    def sample(
        self, transformer: torch.nn.Module, conds: list[dict[str, Any]], seeds: Sequence[int]
    ) -> list[Image.Image]:
        vae, scheduler = self._vae_and_scheduler()
        vae.to(self.device)
        pipe = QwenImageEditPlusPipeline(
            scheduler=type(scheduler).from_config(scheduler.config),
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            processor=None,
            transformer=transformer,
        )
        pipe.set_progress_bar_config(disable=True)
        images = []
        with torch.no_grad():
            for cond in conds:
                source = open_rgb(Path(cond["source"]))
                w, h = bucket_size(source.width, source.height, self.settings.sample_size)
                for seed in seeds:
                    # the pipeline prepares the condition from the source itself, as in use
                    out = pipe(
                        image=[source],
                        prompt_embeds=cond["prompt_embeds"][None].to(self.device, self.dtype),
                        prompt_embeds_mask=torch.ones(1, cond["prompt_embeds"].shape[0], dtype=torch.long),
                        true_cfg_scale=1.0,
                        height=h,
                        width=w,
                        num_inference_steps=self.settings.sample_steps,
                        generator=torch.Generator("cpu").manual_seed(seed),
                    )
                    images.append(out.images[0])
        vae.to("cpu")
        return images

    def comfy_state_dict(self, diffusers_sd: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        return qwen_to_comfy(diffusers_sd, alpha)


def train_edit_lora(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    profile: Profile,
    run_id: str | None,
    steps: int | None = None,
    ops: Sequence[str] = ("edit",),
    resume: bool = True,
    on_progress: ProgressFn | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train the character's editor LoRA on its approved triplets (held-out sources excluded)."""
    check_device(profile)
    settings = profile.edit_trainer if steps is None else profile.edit_trainer.model_copy(update={"steps": steps})
    sources = [r["image_id"] for r in catalog.source_images(character.name)]
    _, held_out = split_held_out(sources)
    triplets = [t for t in approved_triplets(catalog, character.name, ops) if t.before_id not in held_out]
    if not triplets:
        raise TrainingError(
            f"no approved triplets of {character.name} made by {', '.join(ops)} outside the held-out sources: "
            "enrich with the qwen editor and approve results first (or include --ops augment)"
        )
    texts = [t.text(ws.settings.captions.edit_text) for t in triplets]
    # a text other than the bare instruction is part of the set's name (an export is kept by name)
    pairs = zip(triplets, texts, strict=True)
    key = "".join(t.after_id + t.before_id + ("" if text == t.instruction else text) for t, text in pairs)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    export_triplets(ws, triplets, f"{character.name}_triplets_{digest}")
    held_paths = [ws.root / r["path"] for r in catalog.source_images(character.name) if r["image_id"] in held_out]
    sample_sources = held_paths[:1] or [ws.root / triplets[0].before_path]
    backend_cls = backend_class(profile.family_of("editor"))  # the editor family's trainer (QwenEditBackend)
    backend = backend_cls(ws, profile, settings, settings.model or profile.editor.model, sample_sources)
    examples = [
        Example(f"{t.before_id[:16]}-{t.after_id[:16]}", (ws.root / t.before_path, ws.root / t.after_path), text)
        for t, text in zip(triplets, texts, strict=True)
    ]
    job = TrainJob(
        character.name,
        f"{character.name}@triplets-{digest}",
        examples,
        backend.settings,
        character.trigger,
        base_model_ref=backend.model.ref,
        extra={"held_out_sources": held_out, "ops": list(ops)},
    )
    trainer = LoraTrainer(ws, catalog, backend, run_id)
    return trainer.train(job, identity_judge(identity_scorer(ws, catalog, character)), resume, on_progress, stop_after)
