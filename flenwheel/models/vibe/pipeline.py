"""VIBE's pipeline and model pieces (Sana1.5-1.6B + Qwen3-VL-2B, arXiv 2601.02242); the editor is
:mod:`flenwheel.editing.vibe`. Kept below the model runtime so ``flenwheel.models`` can load it and
``flenwheel.models.twins`` can build its tiny twin (the import layers in pyproject.toml)."""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderDC, DiffusionPipeline, DPMSolverMultistepScheduler, ModelMixin
from diffusers.image_processor import PixArtImageProcessor
from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN
from diffusers.pipelines.sana.pipeline_sana import retrieve_timesteps
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor

from flenwheel.models.vibe.transformer import VibeSanaTransformer
from flenwheel.models.weights import check_pipeline

VIBE_HUB_ID = "iitolstykh/VIBE-Image-Edit"

# The reference's conditioning protocol (vibe_sana_pipeline.py): the query wrapped around an edit instruction, and
# the pixel budget of the image the VLM sees (Qwen3-VL resizes within it, keeping the aspect ratio).
EDIT_QUERY = "what will this image be like if {instruction}"
VLM_MIN_PIXELS = 352 * 352
VLM_MAX_PIXELS = 672 * 672

# What each model is given (VibePipeline.__call__); part of the vibe editor's job keys, so images made under another
# geometry (the black-padded canvas given to both models, before issue 22) are other jobs.
CONDITIONING = "vlm:original vae:stretched-to-bin output:whole-canvas-resized"

# The reference's sampling defaults (README, vibe/editor.py, scripts/inference.py).
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.5
DEFAULT_IMAGE_GUIDANCE = 1.2

# Class names the reference checkpoint declares for components we implement ourselves (model_index.json names
# the reference's module for the transformer; see VibePipeline.from_pretrained).
REFERENCE_CLASS_NAMES = {"VIBESanaEditingModel": "VibeSanaTransformer"}
# Where folders saved by earlier flenwheel versions say our transformer lives (before the models/ package).
LEGACY_LIBRARIES = {"flenwheel.vibe_pipeline"}


# --------------------------------------------------------------------------- multiscale size binning


def _scaled_bins(divisor: int) -> dict[str, tuple[int, int]]:
    return {ratio: (int(h) // divisor, int(w) // divisor) for ratio, (h, w) in ASPECT_RATIO_2048_BIN.items()}


# VIBE bins by area into three aspect-ratio tables of 40 ratios each. Its 2048 table is diffusers' (PixArt-Sigma)
# ASPECT_RATIO_2048_BIN and its 512/1024 tables are that table halved and quartered (checked entry by entry against
# vibe/generative_pipeline/aspects_multiscale.py; diffusers' own 512/1024 bins lack 7 of the extreme ratios).
ASPECT_BINS: dict[int, dict[str, tuple[int, int]]] = {size: _scaled_bins(2048 // size) for size in (512, 1024, 2048)}


def bin_table(height: int, width: int) -> int:
    """Which table an input of this size is binned with: the reference's area thresholds (half a step up)."""
    area = height * width
    if area <= 2 * 512**2 + 256**2:
        return 512
    if area <= 2 * 1024**2 + 512**2:
        return 1024
    return 2048


def closest_size(height: int, width: int) -> tuple[int, int]:
    """The (height, width) bin closest in aspect ratio to the input, from the table its area selects."""
    h, w = PixArtImageProcessor.classify_height_width_bin(height, width, ratios=ASPECT_BINS[bin_table(height, width)])
    return int(h), int(w)


# --------------------------------------------------------------------------- the pipeline


@dataclass
class VibePipelineOutput(BaseOutput):
    """The edited images and the geometry that produced them (recorded per image by the editor)."""

    images: list[Image.Image]
    input_size: tuple[int, int]  # (width, height) of the input
    canvas_size: tuple[int, int]  # (width, height) the model ran at
    content_box: tuple[int, int, int, int]  # the picture inside the canvas: all of it (the input is stretched)


@contextlib.contextmanager
def _reference_modules(index: dict[str, Any]) -> Iterator[None]:
    """Let diffusers resolve components whose model_index.json entry names a reference class.

    diffusers resolves a component's library from ``sys.modules`` only (it never imports a module a repository
    names). For an entry such as ``["vibe.transformer.vibe_sana_editing", "VIBESanaEditingModel"]`` this registers,
    for the duration of the load, a module of that name whose class is our implementation; the same for a folder
    saved before our transformer moved (``LEGACY_LIBRARIES``). Entries of importable libraries are left alone.
    """
    ours = {"VibeSanaTransformer": VibeSanaTransformer}
    added: list[str] = []
    for entry in index.values():
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
            continue
        library, class_name = entry
        ours_name = REFERENCE_CLASS_NAMES.get(class_name, class_name if library in LEGACY_LIBRARIES else None)
        if ours_name not in ours or library in sys.modules:
            continue
        module = types.ModuleType(library)
        setattr(module, class_name, ours[ours_name])
        module.ModelMixin = ModelMixin  # diffusers picks the loading method by base class found in the module
        sys.modules[library] = module
        added.append(library)
    try:
        yield
    finally:
        for library in added:
            sys.modules.pop(library, None)


class VibePipeline(DiffusionPipeline):
    """VIBE's editing pipeline: Qwen3-VL conditioning, channel-concat Sana, text + image guidance.

    Components (and folder names) are the reference's: ``tokenizer`` is a Qwen3-VL *processor* (tokenizer, image
    processor and chat template), ``text_encoder`` the full Qwen3-VL model (vision tower included), ``vae`` the
    DC-AE, ``transformer`` a :class:`VibeSanaTransformer`, ``scheduler`` Sana's flow DPM-Solver. One image and one
    instruction per call: the editor's unit of work, and it keeps the VLM input free of padding.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"

    def __init__(
        self,
        tokenizer: Qwen3VLProcessor,
        text_encoder: Qwen3VLForConditionalGeneration,
        vae: AutoencoderDC,
        transformer: VibeSanaTransformer,
        scheduler: DPMSolverMultistepScheduler,
    ) -> None:
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
        )
        self.image_processor = PixArtImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @property
    def vae_scale_factor(self) -> int:
        vae = getattr(self, "vae", None)
        return 2 ** (len(vae.config.encoder_block_out_channels) - 1) if vae is not None else 32

    # ------------------------------------------------------------------ loading

    @classmethod
    def download(cls, pretrained_model_name: str, **kwargs: Any) -> str:
        """Fetch exactly the five component folders (safetensors) and model_index.json of a hub repo.

        diffusers' own ``download`` refuses a model_index.json that names a module outside diffusers/transformers,
        as the reference checkpoint's does for its transformer, so the file selection is made here.
        """
        from huggingface_hub import snapshot_download

        names = ("scheduler", "text_encoder", "tokenizer", "transformer", "vae")
        keep = {
            k: kwargs[k]
            for k in ("revision", "cache_dir", "local_files_only", "token", "force_download")
            if k in kwargs
        }
        return snapshot_download(
            pretrained_model_name,
            allow_patterns=["model_index.json", *(f"{n}/*" for n in names)],
            ignore_patterns=["*.bin", "*.pt", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "*.onnx"],
            **keep,
        )

    checks_weights = True  # from_pretrained checks the checkpoint's keys itself (flenwheel.models.load_pipeline)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> VibePipeline:
        """diffusers' loader, with the reference checkpoint's class names mapped to ours (see _reference_modules),
        after every component's weights were checked against its class (:func:`flenwheel.models.weights.check_pipeline`:
        diffusers would load a checkpoint of another layout with meta or uninitialised weights, and only warn)."""
        folder = Path(pretrained_model_name_or_path)
        if not folder.is_dir():
            folder = Path(cls.download(str(pretrained_model_name_or_path), **kwargs))
            kwargs = {k: v for k, v in kwargs.items() if k not in ("revision", "force_download")}
        index = json.loads((folder / "model_index.json").read_text())
        with _reference_modules(index):
            check_pipeline(folder, skip=[k for k in kwargs if k in index])  # components passed in are not read
            return super().from_pretrained(str(folder), **kwargs)

    # ------------------------------------------------------------------ conditioning

    def binned_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the model runs at for an input of this size (multiscale binning)."""
        h, w = closest_size(height, width)
        f = self.vae_scale_factor
        return math.ceil(h / f) * f, math.ceil(w / f) * f

    def vlm_inputs(self, image: Image.Image, instruction: str) -> dict[str, torch.Tensor]:
        """Processor outputs for one (image, instruction): the chat template wraps the image and the edit query."""
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": image},
                    {"type": "text", "text": EDIT_QUERY.format(instruction=instruction.strip())},
                ],
            }
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        size = {"shortest_edge": VLM_MIN_PIXELS, "longest_edge": VLM_MAX_PIXELS}
        return dict(self.tokenizer(text=[text], images=[image], size=size, return_tensors="pt"))

    def vlm_hidden_states(self, image: Image.Image, instruction: str) -> torch.Tensor:
        """The VLM's last hidden states over the prompt followed by the meta tokens, (1, tokens + meta, hidden).

        The meta-token embeddings are appended after the last valid token; the VLM is causal, so they attend to the
        whole instruction and image while the prompt's own states are what Qwen3-VL computes without them. They
        take text positions after the prompt in Qwen3-VL's M-RoPE and get no deepstack features (those go to the
        image tokens only).
        """
        vlm, transformer = self.text_encoder, self.transformer
        inputs = self.vlm_inputs(image, instruction)
        device = self._execution_device
        hook = getattr(vlm, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            # entered through its parts, not its forward: move it in as the forward's offload hook would (as
            # diffusers' apply_forward_hook does for VAE.encode/decode)
            hook.pre_forward(vlm)
        input_ids = inputs["input_ids"].to(device)
        grid = inputs["image_grid_thw"].to(device)
        embeds = vlm.get_input_embeddings()(input_ids)
        image_mask = input_ids == vlm.config.image_token_id
        features = vlm.get_image_features(inputs["pixel_values"].to(device), grid)
        image_embeds = torch.cat(list(features.pooler_output), dim=0).to(embeds.dtype)
        if image_embeds.shape[0] != int(image_mask.sum()):
            raise ValueError(f"{int(image_mask.sum())} image tokens but {image_embeds.shape[0]} image features")
        embeds = embeds.masked_scatter(image_mask[..., None].expand_as(embeds), image_embeds)
        deepstack = [torch.cat(list(layer), dim=0).to(embeds.dtype) for layer in features.deepstack_features]

        n = transformer.config.num_meta_queries
        embeds = torch.cat([embeds, transformer.meta_queries.to(embeds)[None]], dim=1)
        visual_pos = torch.cat([image_mask, image_mask.new_zeros(1, n)], dim=1)
        meta_ids = torch.full((1, n), -1, dtype=input_ids.dtype, device=device)  # text positions, never embedded
        token_types = inputs["mm_token_type_ids"].to(device)
        token_types = torch.cat([token_types, token_types.new_zeros(1, n)], dim=1)
        attention = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
        position_ids, _ = vlm.model.get_rope_index(
            torch.cat([input_ids, meta_ids], dim=1), token_types, grid, None, attention_mask=attention
        )
        return vlm.model.language_model(
            inputs_embeds=embeds,
            attention_mask=attention,
            position_ids=position_ids,
            visual_pos_masks=visual_pos,
            deepstack_visual_embeds=deepstack,
            use_cache=False,
        ).last_hidden_state

    def encode_instruction(self, image: Image.Image, instruction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption embeddings (instruction, null instruction), each (1, num_meta_queries, caption_channels): the
        edit head applied to the VLM's hidden states at the meta tokens, and to zeros."""
        transformer = self.transformer
        hidden = self.vlm_hidden_states(image, instruction)[:, -transformer.config.num_meta_queries :]
        return transformer.edit_embeddings(hidden.to(device=self._execution_device, dtype=transformer.dtype))

    def condition_latents(self, image: Image.Image, height: int, width: int) -> torch.Tensor:
        """The condition image's DC-AE latents, scaled as the transformer was trained on them: ``image`` resized to
        (height, width) whatever its aspect ratio, by the image processor, as the reference pipeline does."""
        pixels = self.image_processor.preprocess(image, height=height, width=width)
        pixels = pixels.to(device=self._execution_device, dtype=self.vae.dtype)
        return self.vae.encode(pixels).latent * self.vae.config.scaling_factor

    @staticmethod
    def restore(canvas: Image.Image, size: tuple[int, int] | None) -> Image.Image:
        """A decoded canvas as the output: all of it (the condition filled the canvas), stretched back to ``size``
        (the input's (width, height); Lanczos as the reference's revert_resize) unless ``size`` is None."""
        return canvas if size is None or canvas.size == size else canvas.resize(size, Image.Resampling.LANCZOS)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image,
        prompt: str,
        *,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        image_guidance_scale: float = DEFAULT_IMAGE_GUIDANCE,
        generator: torch.Generator | None = None,
        resolution_binning: bool = True,
        revert_resize: bool = True,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict[str, Any]], dict[str, Any]] | None = None,
    ) -> VibePipelineOutput | tuple:
        """Edit ``image`` as ``prompt`` says.

        What each model sees is what the reference pipeline gives it (``vibe_sana_pipeline.py``): Qwen3-VL reads
        the *original* image (its processor resizes it within the VLM pixel budget, keeping the aspect ratio), and
        the DC-AE encodes the original *stretched* to the size the model runs at. ``resolution_binning`` picks that
        size, the closest of Sana's aspect-ratio bins (as the model was trained); without it, the input's size
        rounded down to the VAE's factor. The output covers the same picture as the condition, so
        ``revert_resize`` stretches the whole of it back to the input's size (Lanczos) and every output pixel lies
        where its input pixel was, which the preservation verifier relies on; without it the output keeps the
        canvas size. (The reference editor instead crops a letterbox box out of the output, which shifts and
        zooms it against the input by up to the padding's width: docs/editing.md.)
        Guidance follows the reference: with ``guidance_scale`` > 1, three branches (instruction + image,
        null + image, null + no image) when ``image_guidance_scale`` >= 1, else two (instruction vs null, both
        with the image); ``guidance_scale`` <= 1 is a single conditional pass. ``callback_on_step_end(pipe, i,
        t, {"latents": ...})`` is called after each step as in diffusers' pipelines (its returned latents are used).
        """
        source = image.convert("RGB")
        in_w, in_h = source.size
        f = self.vae_scale_factor
        if resolution_binning:
            height, width = self.binned_size(in_h, in_w)
        else:
            height, width = max(f, in_h // f * f), max(f, in_w // f * f)
        canvas, box = (width, height), (0, 0, width, height)  # the condition fills the canvas: no padding
        device = self._execution_device

        cond, null = self.encode_instruction(source, prompt)  # the VLM reads the original image
        image_latents = self.condition_latents(source, height, width)  # the DC-AE the original, stretched
        text_cfg = guidance_scale > 1
        image_cfg = text_cfg and image_guidance_scale >= 1
        if image_cfg:
            embeds = torch.cat([cond, null, null])
            image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
        elif text_cfg:
            embeds = torch.cat([cond, null])
            image_latents = torch.cat([image_latents, image_latents])
        else:
            embeds = cond
        branches = embeds.shape[0]

        channels = self.vae.config.latent_channels
        if self.transformer.config.in_channels != 2 * channels:
            raise ValueError(
                f"the transformer takes {self.transformer.config.in_channels} input channels; channel-concat "
                f"conditioning on a {channels}-channel VAE needs {2 * channels}"
            )
        if latents is None:
            shape = (1, channels, height // f, width // f)
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.transformer.dtype)
        latents = latents.to(device=device, dtype=torch.float32)

        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device)
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": generator} if takes_generator else {}
        dtype = self.transformer.dtype
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = torch.cat([torch.cat([latents] * branches), image_latents.to(latents)], dim=1)
            pred = self.transformer(
                hidden_states=model_input.to(dtype),
                encoder_hidden_states=embeds.to(dtype),
                timestep=t.expand(branches) * self.transformer.config.timestep_scale,
                return_dict=False,
            )[0].float()
            if image_cfg:
                text, img, uncond = pred.chunk(3)
                pred = uncond + guidance_scale * (text - img) + image_guidance_scale * (img - uncond)
            elif text_cfg:
                text, uncond = pred.chunk(2)
                pred = uncond + guidance_scale * (text - uncond)
            if self.transformer.config.out_channels // 2 == channels:  # learned sigma: keep the mean
                pred = pred.chunk(2, dim=1)[0]
            latents = self.scheduler.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
            if callback_on_step_end is not None:
                latents = callback_on_step_end(self, i, t, {"latents": latents}).get("latents", latents)

        if output_type == "latent":
            self.maybe_free_model_hooks()
            return VibePipelineOutput([latents], (in_w, in_h), canvas, box) if return_dict else (latents,)
        decoded = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        images = [
            self.restore(img, (in_w, in_h) if revert_resize else None)
            for img in self.image_processor.postprocess(decoded, output_type="pil")
        ]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return VibePipelineOutput(images, (in_w, in_h), canvas, box)
