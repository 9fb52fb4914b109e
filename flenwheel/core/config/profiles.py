"""configs/profiles/<name>.yaml and configs/loras.yaml: where and how models run, and the LoRAs they may stack."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from flenwheel.core.config.base import Strict
from flenwheel.core.types import IdentityBackendName, ProfileName

# A model family's name (flenwheel/models/<family>/family.py declares it; the registry checks it where models load).
PipelineKind = str
# The stages a profile may configure, and the family each one uses unless it names another.
DEFAULT_FAMILIES: dict[str, str] = {
    "editor": "qwen-image-edit",
    "generator": "flux",
    "vibe_editor": "vibe",
    "ref_editor": "flux2-klein",
}
STAGE_NAMES: tuple[str, ...] = tuple(DEFAULT_FAMILIES)


class LoraSpec(Strict):
    """One entry of configs/loras.yaml: where a LoRA comes from and how it wants to be run."""

    ref: str = Field(..., description="hub repo id, local file/folder, or catalog:<lora_id>")
    weight_name: str | None = Field(None, description="file inside a hub repo or folder")
    revision: str | None = None
    scale: float = Field(1.0, description="adapter weight (fuse scale when fused)")
    applies_to: PipelineKind = Field(..., description="the model family it loads into (e.g. qwen-image-edit)")
    base: str | None = Field(None, description="the hub id it was trained for (e.g. Qwen/Qwen-Image-Edit-2511)")
    licence: str | None = Field(None, description="SPDX id or licence name, recorded with what it makes")
    commercial: bool | None = Field(None, description="whether its licence allows commercial use; None: unknown")
    steps: int | None = Field(None, ge=1, description="sampling steps this LoRA is made for")
    true_cfg_scale: float | None = Field(None, ge=1.0)
    guidance: float | None = Field(None, ge=0.0)
    scheduler: dict[str, Any] = Field(default_factory=dict, description="scheduler config overrides")
    description: str = ""


class LoraUse(Strict):
    """A LoRA in a stage's stack, by its name in configs/loras.yaml."""

    name: str
    scale: float | None = Field(None, description="overrides the library scale")


class StageSettings(Strict):
    """How one pipeline (editor or generator) is loaded and sampled under a profile."""

    model: str = Field(..., description="hub id[@revision], a local folder, or tiny:<family> (built offline)")
    family: PipelineKind | None = Field(
        None, description="the model family (flenwheel/models/<family>/); None: the stage's default family"
    )
    twin_of: str | None = Field(
        None, description="tiny:<family> only: the hub id the twin stands in for (its licence is recorded)"
    )
    quantize: list[str] = Field(default_factory=list, description="components loaded 4-bit nf4 (bitsandbytes)")
    offload: Literal["none", "model", "sequential"] = "none"
    vae_tiling: bool = False
    steps: int = Field(..., ge=1)
    width: int | None = Field(None, ge=16, le=4096, description="output width; None: the pipeline's own choice")
    height: int | None = Field(None, ge=16, le=4096, description="output height; None: the pipeline's own choice")
    true_cfg_scale: float | None = Field(None, ge=1.0, description="editor: classifier-free guidance")
    guidance: float | None = Field(None, ge=0.0, description="generator: FLUX distilled guidance")
    image_guidance_scale: float | None = Field(
        None, ge=0.0, description="vibe editor: image guidance (>= 1: three-branch CFG); None = VIBE's 1.2"
    )
    resolution_binning: bool = Field(True, description="vibe editor: fit the input into Sana's closest size bin")
    revert_resize: bool = Field(True, description="vibe editor: resize the output back to the input's size")
    negative_prompt: str = " "
    fuse_loras: bool = Field(
        False, description="fuse the stack into the weights (faster sampling); only for an unquantized base"
    )
    loras: dict[str, list[LoraUse]] = Field(
        default_factory=dict, description="stacks by prompt category; 'default' applies to every category"
    )

    @model_validator(mode="after")
    def _fuse_only_full_precision(self) -> StageSettings:
        # Merging a LoRA into 4-bit weights re-quantises them: outputs drift with what ran before, and under CPU
        # offload the merge runs on the CPU (docs/training.md).
        if self.fuse_loras and self.quantize:
            raise ValueError(
                f"fuse_loras needs an unquantized base, and this stage quantizes {', '.join(self.quantize)}: "
                "set fuse_loras: false (the LoRAs then run as adapters)"
            )
        return self

    @property
    def fuses(self) -> bool:
        """Whether LoRA stacks are fused into the weights (only ever an unquantized base)."""
        return self.fuse_loras and not self.quantize


class VlmSettings(Strict):
    """How the VLM of the critic and the captions (Qwen2.5-VL) is loaded when it is not the resident editor's own
    text encoder (docs/verification.md: memory)."""

    quantize: bool = Field(
        False, description="nf4 weights (bitsandbytes), vision tower included; the output layer stays in the dtype"
    )


class TrainerSettings(Strict):
    """A LoRA training recipe. The defaults are a sound FLUX.1-dev character LoRA (see docs/training.md)."""

    model: str | None = Field(None, description="base model ref; default: the profile's generator/editor model")
    rank: int = Field(16, ge=1, le=256)
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; default = rank (scale 1)")
    learning_rate: float = Field(1e-4, gt=0, le=1)
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(1, ge=1, le=64)
    grad_accum: int = Field(1, ge=1, le=64)
    target_modules: list[str] | None = Field(
        None,
        description="modules that get a LoRA (peft name suffixes); None: the model's default from the reference "
        "trainers (docs/training.md): FLUX - diffusers' example set, attention and feed-forward of every block; "
        "Qwen-Image-Edit - musubi-tuner's, every Linear of the transformer blocks except the modulation",
    )
    resolutions: list[int] = Field(default_factory=lambda: [512], description="bucket base sizes (never upscaled)")
    checkpoint_every: int = Field(250, ge=1, description="checkpoint, sample and score the samples every N steps")
    keep_last: int = Field(3, ge=1, description="checkpoints kept besides the best one")
    sample_prompts: list[str] | None = Field(
        None,
        description="prompts sampled at each checkpoint ({trigger} is replaced), with sample_seeds; None: the "
        "character's evaluation prompt set with its checks and seeds (docs/evaluation.md), so checkpoints are "
        "chosen on the jobs LoRAs are compared on",
    )
    sample_seeds: list[int] = Field(default_factory=lambda: [0, 1], description="seeds of sample_prompts")
    sample_steps: int = Field(20, ge=1)
    sample_size: int = Field(768, ge=16, le=2048)
    guidance: float = Field(1.0, ge=0, description="FLUX guidance embedding value during training")
    sample_guidance: float = Field(3.5, ge=0)
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    weighting_scheme: Literal["logit_normal", "uniform"] = "logit_normal"
    qlora: bool = Field(False, description="nf4 base (bitsandbytes, GPU only)")
    gradient_checkpointing: bool = False
    max_sequence_length: int = Field(512, ge=16, le=512, description="T5 tokens kept for captions")
    control_area: int = Field(
        1024 * 1024,
        ge=64 * 64,
        le=2048 * 2048,
        description="edit trainer: pixels of the condition image the transformer sees; the default is what "
        "QwenImageEditPlusPipeline gives it at inference (about 1 MP whatever the output size)",
    )
    seed: int = 0


class Profile(Strict):
    """configs/profiles/<name>.yaml: where and how models run."""

    name: ProfileName
    description: str = ""
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    identity_backend: IdentityBackendName = "dlib"
    min_gpu_memory_gib: float | None = Field(None, gt=0, description="refuse cards with less memory")
    peak_budget_gib: float | None = Field(None, gt=0, description="the stage peak this profile is built to stay under")
    headroom_gib: float = Field(
        3.0,
        ge=0,
        description="beside the weights: activations, the CUDA context and the allocator's reserve, "
        "counted when two models would sit on the device together",
    )
    vlm: VlmSettings = Field(default_factory=VlmSettings, description="the critic's and captions' VLM")
    editor: StageSettings
    generator: StageSettings
    vibe_editor: StageSettings | None = Field(
        None, description="the vibe editor (VIBE: Sana1.5 + Qwen3-VL, docs/editing.md); None: not available"
    )
    ref_editor: StageSettings | None = Field(
        None, description="the reference-image editor (FLUX.2 [klein], docs/models.md); None: not available"
    )
    trainer: TrainerSettings = TrainerSettings()
    edit_trainer: TrainerSettings = Field(
        default_factory=lambda: TrainerSettings(rank=16, steps=1000, sample_prompts=[], sample_size=1024),
        description="the Qwen-Image-Edit LoRA recipe (flywheel 2)",
    )

    @model_validator(mode="before")
    @classmethod
    def _stage_families(cls, data: Any) -> Any:
        # each configured stage names its family: the default of its stage unless the YAML names another
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, default in DEFAULT_FAMILIES.items():
            stage = data.get(name)
            if isinstance(stage, dict) and stage.get("family") is None:
                data[name] = {**stage, "family": default}
            elif isinstance(stage, StageSettings) and stage.family is None:
                data[name] = stage.model_copy(update={"family": default})
        return data

    def stages(self) -> dict[str, StageSettings]:
        """The configured stages by name (editor, generator, and the optional ones this profile has)."""
        return {name: getattr(self, name) for name in STAGE_NAMES if getattr(self, name) is not None}

    def stage_for(self, name: str) -> tuple[str, StageSettings]:
        """A stage by its name, or the first configured stage of a family (``flux`` -> the generator)."""
        stages = self.stages()
        if name in stages:
            return name, stages[name]
        for stage_name, stage in stages.items():
            if self.family_of(stage_name) == name:
                return stage_name, stage
        raise KeyError(f"profile {self.name} has no stage {name!r} and no stage of that family")

    def family_of(self, stage_name: str) -> str:
        """The model family of a stage (a stage set with ``model_copy`` skips validation: the default then)."""
        stage = getattr(self, stage_name)
        return (stage.family if stage is not None else None) or DEFAULT_FAMILIES[stage_name]


class LoraLibrary(Strict):
    loras: dict[str, LoraSpec] = Field(default_factory=dict)
