"""LoRA trainers on diffusers + peft that pick their checkpoint by identity, not by loss.

One generic loop (:class:`LoraTrainer`) does what every good trainer does — cached latents and embeddings,
aspect-ratio buckets that never upscale, gradient accumulation, atomic checkpoints every N steps (keep the
last K and the best), resume with optimizer and RNG state, a progress callback — and adds what none of them
do: at each checkpoint it samples fixed prompts and seeds, identity-scores the samples against the
character's reference set, writes pass rate and mean similarity to ``metrics``, and finally exports the
**checkpoint with the best identity pass rate** (ties: higher mean similarity, then the later step).

Model-specific work lives in a backend: :class:`FluxBackend` here (FLUX.1-dev, flow-matching loss of
diffusers' example); the Qwen-Image-Edit backend of flywheel 2 (:mod:`flenwheel.edit_training`) plugs into
the same loop. Outputs: ``pytorch_lora_weights.safetensors`` in diffusers format (``transformer.<module>``
keys) and a ComfyUI/kohya copy, both with metadata, a loss curve and a sample grid per checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flenwheel.catalog import Catalog, now
from flenwheel.config import Profile, TrainerSettings, Workspace
from flenwheel.errors import FlenwheelError
from flenwheel.models import check_device, file_sha256, resolve_model, torch_dtype

LATENT_MULTIPLE = 16  # VAE x8 and 2x2 latent packing: image sides must be multiples of 16


class TrainingError(FlenwheelError):
    """Training cannot run as asked."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Example:
    """One training item: ``key`` names it in the cache; ``images`` are store paths; ``text`` the caption."""

    key: str
    images: tuple[Path, ...]
    text: str


def bucket_size(width: int, height: int, resolution: int, multiple: int = LATENT_MULTIPLE) -> tuple[int, int]:
    """The bucket for an image: about ``resolution**2`` pixels at the image's aspect, never larger than the image."""
    aspect = width / height
    bw = math.sqrt(resolution * resolution * aspect)
    bh = bw / aspect
    shrink = min(1.0, width / bw, height / bh)  # never upscale
    bw, bh = bw * shrink, bh * shrink
    return max(multiple, int(bw // multiple) * multiple), max(multiple, int(bh // multiple) * multiple)


def fit_to_bucket(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to cover ``size`` and centre-crop (aspect kept, no upscaling beyond the bucket rule)."""
    w, h = size
    scale = max(w / img.width, h / img.height)
    resized = img.resize(
        (max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.Resampling.LANCZOS
    )
    left, top = (resized.width - w) // 2, (resized.height - h) // 2
    return resized.crop((left, top, left + w, top + h))


def export_version(ws: Workspace, catalog: Catalog, version_id: str) -> Path:
    """The version in the common trainer layout: ``<image_id>.png`` + ``<image_id>.txt`` (trigger in the caption).

    Also writes ``metadata.jsonl`` (``file_name``, ``text``) so kohya, ai-toolkit and diffusers' scripts can
    train on the same folder. Idempotent: an existing complete export is left as it is.
    """
    from flenwheel.versions import version_members

    members = version_members(catalog, version_id)
    out = ws.root / "exports" / version_id.replace("@", "_")
    if (out / "metadata.jsonl").exists():
        return out
    tmp = atomic_dir(out)
    try:
        lines = []
        for m in members:
            src = ws.root / m["path"]
            dst = tmp / f"{m['image_id']}.png"
            try:
                os.link(src, dst)  # same bytes as the store, no copy
            except OSError:
                shutil.copyfile(src, dst)
            (tmp / f"{m['image_id']}.txt").write_text(m["caption"] + "\n", encoding="utf-8")
            lines.append(json.dumps({"file_name": dst.name, "text": m["caption"]}, ensure_ascii=False))
        (tmp / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        commit_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- checkpoints


def atomic_dir(final: Path) -> Path:
    """A temporary sibling of ``final``; :func:`commit_dir` renames it into place (a crash leaves no half dir)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def commit_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class CheckpointScore:
    step: int
    pass_rate: float | None
    mean_similarity: float | None
    n_samples: int


def choose_checkpoint(scores: Sequence[CheckpointScore]) -> CheckpointScore:
    """Best identity pass rate; ties by mean similarity, then the later step (never by loss)."""
    if not scores:
        raise TrainingError("no checkpoint to choose from")
    return max(
        scores,
        key=lambda s: (
            -1.0 if s.pass_rate is None else s.pass_rate,
            -2.0 if s.mean_similarity is None else s.mean_similarity,
            s.step,
        ),
    )


# --------------------------------------------------------------------------- backends


class TrainingBackend(ABC):
    """The model-specific half of a trainer."""

    kind: str  # 'flux' or 'qwen_edit' (the loras.kind column)
    pipeline_class: str  # diffusers class whose save_lora_weights writes the diffusers format

    vae_class: str  # diffusers class of the VAE

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
        import diffusers

        cls = getattr(diffusers, self.pipeline_class)
        return cls.from_pretrained(str(self.model.path), transformer=None, dtype=self.dtype)

    def _vae_and_scheduler(self) -> tuple[Any, Any]:
        if self._vae is None:
            import diffusers

            vae_cls = getattr(diffusers, self.vae_class)
            self._vae = vae_cls.from_pretrained(str(self.model.path), subfolder="vae", dtype=self.dtype)
            self._vae.requires_grad_(False).eval()
            self._scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(
                str(self.model.path), subfolder="scheduler"
            )
        return self._vae, self._scheduler

    @property
    @abstractmethod
    def pipeline_kind(self) -> str: ...

    @abstractmethod
    def cache(self, examples: Sequence[Example], cache_dir: Path) -> list[dict[str, torch.Tensor]]:
        """Encode every example once (latents, embeddings) into ``cache_dir``; frees the encoders after."""

    @abstractmethod
    def cache_samples(self, prompts: Sequence[str], cache_dir: Path) -> list[dict[str, torch.Tensor]]:
        """Embeddings of the sample prompts (or sample inputs), cached like the examples."""

    transformer_class: str  # diffusers class of the denoiser

    def load_transformer(self) -> torch.nn.Module:
        """The base transformer as the profile says (nf4 base for QLoRA), on the training device."""
        import diffusers

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
        from diffusers.training_utils import compute_density_for_timestep_sampling

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
        _free()


# --------------------------------------------------------------------------- FLUX


def _lora_pairs(
    sd: dict[str, torch.Tensor], prefix: str = "transformer."
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (lora_A, lora_B)} from a diffusers-format state dict."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in sd.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")].removeprefix(prefix)
            out[module] = (a, sd[key.replace(".lora_A.", ".lora_B.")])
    return out


def _fused(
    parts: list[tuple[torch.Tensor, torch.Tensor] | None], out_dims: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LoRA for a fused linear (e.g. qkv) from per-part LoRAs: stacked downs, block-diagonal up.

    Missing parts get zero blocks, so the fused module computes exactly the sum of the parts.
    """
    rank = next(p[0].shape[0] for p in parts if p is not None)
    in_dim = next(p[0].shape[1] for p in parts if p is not None)
    downs, up = [], torch.zeros(sum(out_dims), rank * len(parts))
    row = 0
    for i, (part, dim) in enumerate(zip(parts, out_dims, strict=True)):
        a, b = part if part is not None else (torch.zeros(rank, in_dim), torch.zeros(dim, rank))
        downs.append(a.float())
        up[row : row + dim, i * rank : (i + 1) * rank] = b.float()
        row += dim
    return torch.cat(downs), up


FLUX_SINGLE = {"attn.to_q": 0, "attn.to_k": 1, "attn.to_v": 2, "proj_mlp": 3}
FLUX_DOUBLE_FUSED = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
FLUX_DOUBLE_PLAIN = {
    "attn.to_out.0": "img_attn_proj",
    "attn.to_add_out": "txt_attn_proj",
    "ff.net.0.proj": "img_mlp_0",
    "ff.net.2": "img_mlp_2",
    "ff_context.net.0.proj": "txt_mlp_0",
    "ff_context.net.2": "txt_mlp_2",
    "norm1.linear": "img_mod_lin",
    "norm1_context.linear": "txt_mod_lin",
}
FLUX_SINGLE_PLAIN = {"proj_out": "linear2", "norm.linear": "modulation_lin"}


def flux_to_comfy(sd: dict[str, torch.Tensor], alpha: float, inner_dim: int, mlp_dim: int) -> dict[str, torch.Tensor]:
    """diffusers FLUX LoRA -> ComfyUI/kohya ``lora_unet_<BFL module>`` keys (lora_down/lora_up/alpha).

    The reference FLUX weights fuse q, k, v (and, in single blocks, the MLP input) into one linear; their LoRA
    is the block-diagonal union of the per-projection LoRAs, with rank n*r and alpha n*alpha so that the scale
    alpha/rank is unchanged.
    """
    pairs = _lora_pairs(sd)
    out: dict[str, torch.Tensor] = {}

    def put(name: str, down: torch.Tensor, up: torch.Tensor, a: float) -> None:
        out[f"lora_unet_{name}.lora_down.weight"] = down.contiguous()
        out[f"lora_unet_{name}.lora_up.weight"] = up.contiguous()
        out[f"lora_unet_{name}.alpha"] = torch.tensor(float(a))

    blocks = sorted({int(m.split(".")[1]) for m in pairs if m.startswith("transformer_blocks.")})
    for i in blocks:
        base = f"transformer_blocks.{i}."
        for fused, members in FLUX_DOUBLE_FUSED.items():
            parts = [pairs.get(base + m) for m in members]
            if any(parts):
                down, up = _fused(parts, [inner_dim] * 3)
                put(f"double_blocks_{i}_{fused}", down, up, alpha * 3)
        for module, name in FLUX_DOUBLE_PLAIN.items():
            if base + module in pairs:
                a, b = pairs[base + module]
                put(f"double_blocks_{i}_{name}", a.float(), b.float(), alpha)
    singles = sorted({int(m.split(".")[1]) for m in pairs if m.startswith("single_transformer_blocks.")})
    for i in singles:
        base = f"single_transformer_blocks.{i}."
        parts = [pairs.get(base + m) for m in FLUX_SINGLE]
        if any(parts):
            down, up = _fused(parts, [inner_dim] * 3 + [mlp_dim])
            put(f"single_blocks_{i}_linear1", down, up, alpha * 4)
        for module, name in FLUX_SINGLE_PLAIN.items():
            if base + module in pairs:
                a, b = pairs[base + module]
                put(f"single_blocks_{i}_{name}", a.float(), b.float(), alpha)
    unknown = [m for m in pairs if not m.startswith(("transformer_blocks.", "single_transformer_blocks."))]
    if unknown:
        raise TrainingError(f"no ComfyUI name for LoRA module(s) {', '.join(sorted(unknown)[:3])}")
    return out


def comfy_to_flux(sd: dict[str, torch.Tensor], inner_dim: int, mlp_dim: int) -> tuple[dict[str, torch.Tensor], float]:
    """The inverse of :func:`flux_to_comfy`: diffusers keys and the per-module alpha (zero blocks dropped)."""
    out: dict[str, torch.Tensor] = {}
    alphas: set[float] = set()
    names = {k[len("lora_unet_") : -len(".lora_down.weight")] for k in sd if k.endswith(".lora_down.weight")}
    for name in sorted(names):
        down = sd[f"lora_unet_{name}.lora_down.weight"]
        up = sd[f"lora_unet_{name}.lora_up.weight"]
        alpha = float(sd[f"lora_unet_{name}.alpha"])
        m = re.fullmatch(r"(double|single)_blocks_(\d+)_(.+)", name)
        if not m:
            raise TrainingError(f"unexpected ComfyUI LoRA key {name}")
        kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "double" and rest in FLUX_DOUBLE_FUSED:
            members, dims = [f"transformer_blocks.{i}.{x}" for x in FLUX_DOUBLE_FUSED[rest]], [inner_dim] * 3
        elif kind == "single" and rest == "linear1":
            members, dims = [f"single_transformer_blocks.{i}.{x}" for x in FLUX_SINGLE], [inner_dim] * 3 + [mlp_dim]
        else:
            table = FLUX_DOUBLE_PLAIN if kind == "double" else FLUX_SINGLE_PLAIN
            module = next(k for k, v in table.items() if v == rest)
            prefix = "transformer_blocks" if kind == "double" else "single_transformer_blocks"
            out[f"transformer.{prefix}.{i}.{module}.lora_A.weight"] = down
            out[f"transformer.{prefix}.{i}.{module}.lora_B.weight"] = up
            alphas.add(alpha)
            continue
        rank = down.shape[0] // len(members)
        alphas.add(alpha / len(members))
        row = 0
        for j, (member, dim) in enumerate(zip(members, dims, strict=True)):
            a = down[j * rank : (j + 1) * rank]
            b = up[row : row + dim, j * rank : (j + 1) * rank]
            row += dim
            if a.abs().sum() == 0 and b.abs().sum() == 0:
                continue  # a part that had no LoRA
            out[f"transformer.{member}.lora_A.weight"] = a.contiguous()
            out[f"transformer.{member}.lora_B.weight"] = b.contiguous()
    if len(alphas) > 1:
        raise TrainingError(f"ComfyUI LoRA has mixed alphas {sorted(alphas)}")
    return out, alphas.pop() if alphas else 1.0


class FluxBackend(TrainingBackend):
    """FLUX.1-dev LoRA (diffusers' train_dreambooth_lora_flux recipe, with cached latents and embeddings)."""

    kind = "flux"
    pipeline_class = "FluxPipeline"
    transformer_class = "FluxTransformer2DModel"
    vae_class = "AutoencoderKL"

    @property
    def pipeline_kind(self) -> str:
        return "flux"

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
        _free()
        return out

    def cache(self, examples: Sequence[Example], cache_dir: Path) -> list[dict[str, torch.Tensor]]:
        files = [cache_dir / f"{e.key}.safetensors" for e in examples]
        missing = [i for i, f in enumerate(files) if not f.exists()]
        if missing:
            texts = self._encode_texts([examples[i].text for i in missing])
            vae, _ = self._vae_and_scheduler()
            vae.to(self.device)
            from diffusers.image_processor import VaeImageProcessor

            processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
            for i, text in zip(missing, texts, strict=True):
                with Image.open(examples[i].images[0]) as im:
                    img = im.convert("RGB")
                resolution = self.settings.resolutions[i % len(self.settings.resolutions)]
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
        from diffusers import FluxPipeline

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
            hidden_states=packed, timestep=(timesteps / 1000).to(self.device, self.dtype), guidance=guidance,
            pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=txt_ids, img_ids=img_ids,
            return_dict=False,
        )[0]  # fmt: skip
        pred = FluxPipeline._unpack_latents(
            pred, h * self.vae_scale_factor, w * self.vae_scale_factor, self.vae_scale_factor
        )
        target = noise - x0
        return torch.mean((pred.float() - target.float()) ** 2)

    def sample(
        self, transformer: torch.nn.Module, conds: list[dict[str, torch.Tensor]], seeds: Sequence[int]
    ) -> list[Image.Image]:
        from diffusers import FluxPipeline

        vae, scheduler = self._vae_and_scheduler()
        vae.to(self.device)
        pipe = FluxPipeline(
            scheduler=type(scheduler).from_config(scheduler.config), vae=vae, text_encoder=None, tokenizer=None,
            text_encoder_2=None, tokenizer_2=None, transformer=transformer,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        size = self.settings.sample_size // LATENT_MULTIPLE * LATENT_MULTIPLE
        images = []
        with torch.no_grad():
            for cond in conds:
                for seed in seeds:
                    out = pipe(
                        prompt_embeds=cond["prompt_embeds"][None].to(self.device, self.dtype),
                        pooled_prompt_embeds=cond["pooled"][None].to(self.device, self.dtype),
                        height=size, width=size, num_inference_steps=self.settings.sample_steps,
                        guidance_scale=self.settings.sample_guidance,
                        generator=torch.Generator("cpu").manual_seed(seed),
                    )  # fmt: skip
                    images.append(out.images[0])
        vae.to("cpu")
        return images

    def _dims(self, transformer_config: dict[str, Any]) -> tuple[int, int]:
        inner = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
        return inner, int(inner * 4.0)  # FLUX single blocks: mlp_ratio 4

    def comfy_state_dict(self, diffusers_sd: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        config = json.loads((self.model.path / "transformer" / "config.json").read_text())
        return flux_to_comfy(diffusers_sd, alpha, *self._dims(config))


def _free() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    lora_id: str
    run_dir: Path
    weights: Path
    comfy_weights: Path
    chosen_step: int
    scores: list[CheckpointScore]
    losses: list[tuple[int, float]]
    sha256: str
    resumed_from: int | None = None
    trained: bool = True  # False when a finished LoRA was found and returned as it is


@dataclass
class TrainJob:
    """What to train: the identity of the run is derived from these, so a re-run finds its checkpoints."""

    character: str
    dataset_version: str | None
    examples: list[Example]
    settings: TrainerSettings
    trigger: str
    base_model_ref: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self, kind: str) -> str:
        payload = {
            "kind": kind, "character": self.character, "version": self.dataset_version, "model": self.base_model_ref,
            "settings": self.settings.model_dump(mode="json"), "examples": [(e.key, e.text) for e in self.examples],
            "extra": self.extra,
        }  # fmt: skip
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


ScoreFn = Callable[[list[Image.Image]], list[Any]]  # images -> identity Scores
ProgressFn = Callable[[int, int, float, float], None]  # step, total, loss, seconds per step


class LoraTrainer:
    """The generic LoRA loop shared by the FLUX and Qwen-Image-Edit trainers (see the module docstring)."""

    def __init__(self, ws: Workspace, catalog: Catalog, backend: TrainingBackend, run_id: str | None = None) -> None:
        self.ws, self.catalog, self.backend, self.run_id = ws, catalog, backend, run_id

    def lora_id(self, job: TrainJob) -> str:
        version = (job.dataset_version or "adhoc").split("@")[-1]
        return f"{job.character}-{version}-{self.backend.kind}-{job.fingerprint(self.backend.kind)[:10]}"

    # ---- checkpoints on disk

    @staticmethod
    def _checkpoints(run_dir: Path) -> list[Path]:
        return sorted(p for p in (run_dir / "checkpoints").glob("step-*") if (p / "state.pt").is_file())

    def _save_checkpoint(
        self, run_dir: Path, step: int, transformer: torch.nn.Module, optimizer: Any, gen: torch.Generator,
        losses: list[tuple[int, float]], samples: list[Image.Image], labels: list[str], score: CheckpointScore,
    ) -> Path:  # fmt: skip
        from peft.utils import get_peft_model_state_dict

        from flenwheel.report import image_grid, training_curves

        final = run_dir / "checkpoints" / f"step-{step:06d}"
        tmp = atomic_dir(final)
        try:
            state = {k: v.float() for k, v in get_peft_model_state_dict(transformer).items()}
            save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp / "adapter.safetensors"))
            torch.save(
                {"step": step, "optimizer": optimizer.state_dict(), "generator": gen.get_state(), "losses": losses},
                tmp / "state.pt",
            )
            for i, img in enumerate(samples):
                img.save(tmp / f"sample-{i:02d}.png")
            if samples:
                image_grid(list(zip(samples, labels, strict=True)), tmp / "samples.png", tile=160, columns=4)
            training_curves({"loss": losses}, {}, tmp / "loss.png")
            (tmp / "score.json").write_text(json.dumps(score.__dict__))
            commit_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _prune(self, run_dir: Path, keep_last: int, best_step: int | None) -> None:
        ckpts = self._checkpoints(run_dir)
        keep = {p for p in ckpts[-keep_last:]}
        keep |= {p for p in ckpts if best_step is not None and p.name == f"step-{best_step:06d}"}
        for p in ckpts:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)

    # ---- scoring

    def _score(
        self, step: int, lora_id: str, samples: list[Image.Image], score_fn: ScoreFn | None
    ) -> tuple[CheckpointScore, list[str]]:
        """The checkpoint's identity score and a label per sample (verdict and similarity)."""
        if score_fn is None or not samples:
            return CheckpointScore(step, None, None, len(samples)), [f"sample {i}" for i in range(len(samples))]
        scores = score_fn(samples)
        passed = sum(s.verdict == "pass" for s in scores)
        sims = [s.similarity for s in scores if s.similarity is not None]
        result = CheckpointScore(step, passed / len(scores), float(np.mean(sims)) if sims else None, len(scores))
        labels = [s.verdict if s.similarity is None else f"{s.verdict} {s.similarity:.2f}" for s in scores]
        values = {"pass_rate": result.pass_rate, "n_samples": float(len(scores))}
        if result.mean_similarity is not None:
            values["mean_similarity"] = result.mean_similarity
        if self.run_id:
            self.catalog.add_metrics(self.run_id, "checkpoint", lora_id, values, step=step)
        return result, labels

    def _scores_from_disk(self, run_dir: Path) -> list[CheckpointScore]:
        out = []
        for p in self._checkpoints(run_dir):
            raw = json.loads((p / "score.json").read_text()) if (p / "score.json").exists() else None
            if raw:
                out.append(CheckpointScore(raw["step"], raw["pass_rate"], raw["mean_similarity"], raw["n_samples"]))
        return out

    # ---- main

    def train(
        self,
        job: TrainJob,
        score_fn: ScoreFn | None = None,
        resume: bool = True,
        on_progress: ProgressFn | None = None,
        stop_after: int | None = None,
    ) -> TrainResult:
        """Train (or resume, or return the finished LoRA of) ``job``.

        ``stop_after`` ends the run after that many steps as if the process had been killed there (used to
        show that a resumed run reaches the same weights).
        """
        s = job.settings
        lora_id = self.lora_id(job)
        run_dir = self.ws.root / "loras" / lora_id
        finished = run_dir / "pytorch_lora_weights.safetensors"
        if finished.exists() and (run_dir / "result.json").exists():
            return self._result_from_disk(lora_id, run_dir)
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        if not job.examples:
            raise TrainingError("nothing to train on: the dataset version has no images")
        key = hashlib.sha256(f"{self.backend.model.ref}|{job.fingerprint(self.backend.kind)}".encode()).hexdigest()[:16]
        cache_dir = self.ws.root / "cache" / self.backend.kind / key
        data = self.backend.cache(job.examples, cache_dir)
        prompts = [p.replace("{trigger}", job.trigger) for p in s.sample_prompts]
        sample_conds = self.backend.cache_samples(prompts, cache_dir) if prompts else []

        transformer, params, alpha = self.prepare_model(s)
        optimizer = self._optimizer(params)
        gen = torch.Generator("cpu").manual_seed(s.seed)
        step, losses, resumed_from = 0, [], None
        ckpts = self._checkpoints(run_dir)
        if resume and ckpts:
            last = ckpts[-1]
            state = torch.load(last / "state.pt", weights_only=False)
            from peft.utils import set_peft_model_state_dict

            set_peft_model_state_dict(transformer, load_file(str(last / "adapter.safetensors")))
            for p in params:
                p.data = p.data.float()
            optimizer.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            step, losses, resumed_from = state["step"], list(state["losses"]), state["step"]
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

        order = self._order(data, s)
        scores = self._scores_from_disk(run_dir)
        started, done_here = time.perf_counter(), 0
        transformer.train()
        while step < s.steps:
            accumulated = self.train_step(transformer, params, optimizer, data, order, gen, step)
            step += 1
            done_here += 1
            losses.append((step, accumulated))
            if on_progress:
                on_progress(step, s.steps, accumulated, (time.perf_counter() - started) / done_here)
            if step % s.checkpoint_every == 0 or step == s.steps:
                transformer.eval()
                samples = self.backend.sample(transformer, sample_conds, s.sample_seeds) if sample_conds else []
                transformer.train()
                score, labels = self._score(step, lora_id, samples, score_fn)
                scores = [*(x for x in scores if x.step != step), score]
                self._save_checkpoint(run_dir, step, transformer, optimizer, gen, losses, samples, labels, score)
                self._prune(run_dir, s.keep_last, choose_checkpoint(scores).step)
                if self.run_id:
                    self.catalog.add_metrics(self.run_id, "lora_loss", lora_id,
                                             {"loss": float(np.mean([v for _, v in losses[-s.checkpoint_every:]]))},
                                             step=step)  # fmt: skip
            if stop_after is not None and done_here >= stop_after:
                self.backend.release()
                raise TrainingInterrupted(step)
        del transformer, optimizer
        self.backend.release()
        return self._finish(job, lora_id, run_dir, scores, losses, alpha, resumed_from)

    def prepare_model(self, s: TrainerSettings) -> tuple[torch.nn.Module, list[torch.nn.Parameter], float]:
        """The frozen base with a fresh LoRA adapter; only the adapter's (fp32) parameters train."""
        from peft import LoraConfig

        torch.manual_seed(s.seed)  # the adapter's initialisation is part of what a seed reproduces
        transformer = self.backend.load_transformer()
        transformer.requires_grad_(False)
        alpha = s.alpha or float(s.rank)
        transformer.add_adapter(
            LoraConfig(r=s.rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(s.target_modules))
        )
        if s.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        params = [p for p in transformer.parameters() if p.requires_grad]
        for p in params:
            p.data = p.data.float()
        return transformer, params, alpha

    def train_step(
        self, transformer: torch.nn.Module, params: list[torch.nn.Parameter], optimizer: Any,
        data: list[dict[str, torch.Tensor]], order: Callable[[int], list[int]], gen: torch.Generator, step: int,
    ) -> float:  # fmt: skip
        """One optimizer step (with gradient accumulation); returns the step's loss."""
        s = self.backend.settings
        accumulated = 0.0
        for micro in range(s.grad_accum):
            batch_idx = order(step * s.grad_accum + micro)
            loss = self.backend.loss(transformer, [data[i] for i in batch_idx], gen) / s.grad_accum
            loss.backward()
            accumulated += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return accumulated

    def _optimizer(self, params: list[torch.nn.Parameter]) -> Any:
        s = self.backend.settings
        if s.optimizer == "adamw8bit":
            if self.backend.device.type != "cuda":
                raise TrainingError("adamw8bit (bitsandbytes) needs a CUDA GPU; use optimizer: adamw on the CPU")
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=s.learning_rate, weight_decay=s.weight_decay)
        return torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.weight_decay)

    @staticmethod
    def _order(data: list[dict[str, torch.Tensor]], s: TrainerSettings) -> Callable[[int], list[int]]:
        """Batch ``k`` of the run: examples shuffled per epoch (seeded), grouped by bucket shape."""
        shapes: dict[tuple, list[int]] = {}
        for i, d in enumerate(data):
            shapes.setdefault(tuple(d["latents"].shape), []).append(i)
        cache: dict[int, list[list[int]]] = {}

        def epoch_batches(epoch: int) -> list[list[int]]:
            if epoch not in cache:
                rng = np.random.default_rng([s.seed, epoch])
                batches = []
                for members in shapes.values():
                    perm = [members[j] for j in rng.permutation(len(members))]
                    batches += [perm[k : k + s.batch_size] for k in range(0, len(perm), s.batch_size)]
                cache.clear()
                cache[epoch] = [batches[j] for j in rng.permutation(len(batches))]
            return cache[epoch]

        per_epoch = len(epoch_batches(0))

        def batch(k: int) -> list[int]:
            return epoch_batches(k // per_epoch)[k % per_epoch]

        return batch

    # ---- output

    def _finish(
        self, job: TrainJob, lora_id: str, run_dir: Path, scores: list[CheckpointScore],
        losses: list[tuple[int, float]], alpha: float, resumed_from: int | None,
    ) -> TrainResult:  # fmt: skip
        best = choose_checkpoint(scores) if scores else CheckpointScore(job.settings.steps, None, None, 0)
        return self.export(job, lora_id, run_dir, best.step, scores, losses, alpha, resumed_from)

    def export(
        self, job: TrainJob, lora_id: str, run_dir: Path, step: int, scores: list[CheckpointScore],
        losses: list[tuple[int, float]], alpha: float, resumed_from: int | None = None,
    ) -> TrainResult:  # fmt: skip
        """Write the chosen checkpoint in both formats, register it, and return the result."""
        import diffusers

        ckpt = run_dir / "checkpoints" / f"step-{step:06d}"
        adapter = load_file(str(ckpt / "adapter.safetensors"))
        diffusers_sd = {f"transformer.{k}": v for k, v in adapter.items()}
        s = job.settings
        meta = {
            "flenwheel.base_model": self.backend.model.ref, "flenwheel.dataset_version": job.dataset_version or "",
            "flenwheel.trigger": job.trigger, "flenwheel.steps": str(step), "flenwheel.lora_id": lora_id,
            "flenwheel.kind": self.backend.kind, "ss_network_dim": str(s.rank), "ss_network_alpha": str(alpha),
            "ss_base_model_version": "flux1" if self.backend.kind == "flux" else "qwen_image_edit",
        }  # fmt: skip
        with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
            cls = getattr(diffusers, self.backend.pipeline_class)
            from peft import LoraConfig

            adapter_meta = LoraConfig(r=s.rank, lora_alpha=alpha, target_modules=list(s.target_modules)).to_dict()
            cls.save_lora_weights(tmp, transformer_lora_layers=adapter,
                                  transformer_lora_adapter_metadata=adapter_meta)  # fmt: skip
            written = Path(tmp) / "pytorch_lora_weights.safetensors"
            with safe_open(str(written), "pt") as f:
                base_meta = f.metadata() or {}
            atomic_save_file(load_file(str(written)), run_dir / "pytorch_lora_weights.safetensors",
                             {**base_meta, **meta})  # fmt: skip
        comfy = self.backend.comfy_state_dict(diffusers_sd, alpha)
        comfy_path = run_dir / f"{lora_id}_comfyui.safetensors"
        atomic_save_file(comfy, comfy_path, {"format": "pt", **meta})
        weights = run_dir / "pytorch_lora_weights.safetensors"
        sha = file_sha256(weights)
        from flenwheel.report import training_curves

        by_step = sorted(scores, key=lambda x: x.step)
        training_curves({lora_id: losses}, {lora_id: [(x.step, x.pass_rate or 0.0) for x in by_step]},
                        run_dir / "training.png")  # fmt: skip
        result = TrainResult(lora_id, run_dir, weights, comfy_path, step, scores, losses, sha, resumed_from)
        summary = {"lora_id": lora_id, "chosen_step": step, "sha256": sha, "losses": losses,
                   "scores": [x.__dict__ for x in scores]}  # fmt: skip
        (run_dir / "result.json").write_text(json.dumps(summary))
        self._register(job, result, alpha)
        return result

    def _result_from_disk(self, lora_id: str, run_dir: Path) -> TrainResult:
        raw = json.loads((run_dir / "result.json").read_text())
        scores = [CheckpointScore(**x) for x in raw["scores"]]
        comfy = run_dir / f"{lora_id}_comfyui.safetensors"
        return TrainResult(lora_id, run_dir, run_dir / "pytorch_lora_weights.safetensors", comfy, raw["chosen_step"],
                           scores, [tuple(x) for x in raw["losses"]], raw["sha256"], trained=False)  # fmt: skip

    def _register(self, job: TrainJob, result: TrainResult, alpha: float) -> None:
        rel = lambda p: p.relative_to(self.ws.root).as_posix()  # noqa: E731
        hyper = {**job.settings.model_dump(mode="json"), "alpha": alpha, **job.extra}
        self.catalog.write(
            lambda con: con.execute(
                "INSERT OR IGNORE INTO loras (lora_id, character, kind, base_model_ref, dataset_version, hyperparams,"
                " steps, path, sha256, comfy_path, chosen_checkpoint, run_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [result.lora_id, job.character, self.backend.kind, self.backend.model.ref, job.dataset_version,
                 json.dumps(hyper, sort_keys=True), job.settings.steps, rel(result.weights), result.sha256,
                 rel(result.comfy_weights), result.chosen_step, self.run_id, now()],
            )
        )  # fmt: skip


class TrainingInterrupted(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(f"training stopped after step {step}")
        self.step = step


# --------------------------------------------------------------------------- FLUX entry point


def version_examples(ws: Workspace, catalog: Catalog, version_id: str) -> list[Example]:
    from flenwheel.versions import version_members

    return [Example(m["image_id"], (ws.root / m["path"],), m["caption"]) for m in version_members(catalog, version_id)]


def identity_scorer(ws: Workspace, catalog: Catalog, character: Any) -> ScoreFn:
    """Score sample images against the character's reference set, in this process."""
    from flenwheel.identity import judge_for, judge_image, load_backend, reference_set_for

    refset = reference_set_for(ws, catalog, character)
    judge = judge_for(ws, character, refset)
    backend = load_backend(refset.backend, ws.settings.identity)
    return lambda images: [judge_image(backend, judge, np.asarray(img.convert("RGB"))) for img in images]


def train_flux(
    ws: Workspace,
    catalog: Catalog,
    character: Any,
    version_id: str,
    profile: Profile,
    run_id: str | None,
    steps: int | None = None,
    resume: bool = True,
    on_progress: ProgressFn | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train a FLUX LoRA of ``character`` on a frozen dataset version (exported for other trainers too)."""
    check_device(profile)
    settings = profile.trainer if steps is None else profile.trainer.model_copy(update={"steps": steps})
    export_version(ws, catalog, version_id)
    backend = FluxBackend(ws, profile, settings, settings.model or profile.generator.model)
    job = TrainJob(character.name, version_id, version_examples(ws, catalog, version_id), settings, character.trigger,
                   base_model_ref=backend.model.ref)  # fmt: skip
    trainer = LoraTrainer(ws, catalog, backend, run_id)
    return trainer.train(job, identity_scorer(ws, catalog, character), resume, on_progress, stop_after)
