"""Pydantic models for every YAML file under configs/ (loading and finding them: :mod:`flenwheel.workspace`).

Every file is validated strictly (unknown keys are errors); a failure becomes one :class:`ConfigError` whose
message names the file, the key and what is allowed, so the CLI can print it on one line and exit non-zero.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flenwheel.errors import FlenwheelError
from flenwheel.quality import Check, VerifierSpec
from flenwheel.types import (
    CHARACTER_PATTERN,
    EditorChoice,
    EditorName,
    IdentityBackendName,
    ProfileName,
    PromptId,
    ReviewMode,
)

CHARACTER_NAME = re.compile(CHARACTER_PATTERN)


class ConfigError(FlenwheelError, ValueError):
    """A configuration file or value is wrong; the message is meant for the user as it is."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def validate_character_name(name: str) -> str:
    """Character names become folder names and SQL values: keep them to a safe alphabet."""
    if not CHARACTER_NAME.match(name or ""):
        raise ConfigError(
            f"invalid character name {name!r}: use 1-64 letters, digits, '-' or '_', "
            "starting with a letter or digit (no path separators, quotes or spaces)"
        )
    return name


# --------------------------------------------------------------------------- settings


class StoreSettings(Strict):
    """How source photos are validated and normalised before they enter the store."""

    max_side: int = Field(2048, ge=256, le=16384, description="longest side after ingest (downscaled)")
    min_side: int = Field(128, ge=16, le=4096, description="shortest side below which a photo is rejected")
    max_pixels: int = Field(
        60_000_000, ge=1_000_000, description="width*height above which a file is refused as a bomb"
    )
    alpha_background: tuple[int, int, int] = Field(
        (255, 255, 255), description="RGB that transparent pixels are flattened onto"
    )
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO")

    @field_validator("alpha_background")
    @classmethod
    def _rgb(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in v):
            raise ValueError("each channel must be 0..255")
        return v


class CatalogSettings(Strict):
    lock_timeout_s: float = Field(120.0, gt=0, description="how long a write waits for another writer")


class IdentityBackendSettings(Strict):
    """How faces are found and embedded (per machine, not per character)."""

    detect_max_side: int = Field(640, ge=160, le=4096, description="faces are detected on a copy this size")
    min_face_px: int = Field(64, ge=16, description="faces with a shorter box side are 'small_face'")
    pose_relief: bool = Field(True, description="lower the threshold for turned heads (profiles score lower)")
    workers: int = Field(2, ge=1, le=64, description="processes that score images in parallel (dlib)")
    batch_size: int = Field(32, ge=1, description="images per catalog write and per Prefect task")
    insightface_root: Path = Field(Path("~/.insightface"), description="holds models/<pack>/*.onnx")
    insightface_pack: str = Field("buffalo_l", description="model pack name (folder under models/)")
    dlib_upsample: int = Field(1, ge=0, le=3, description="HOG detector upsampling of the detection copy")


class ReviewSettings(Strict):
    auto_margin: float = Field(0.02, ge=0.0, le=0.5, description="auto review: approve passes this far above")
    clear_band: float = Field(
        0.08, gt=0.0, le=0.5, description="identity similarity this far from the threshold is a clear case"
    )
    check_band: float = Field(
        0.1, gt=0.0, le=1.0, description="a check within this share of its threshold is borderline"
    )
    auto_clear: bool = Field(
        False, description="let the policy decide clear cases before people are asked (fiftyone and cli review)"
    )
    app_address: str = "127.0.0.1"
    app_port: int = Field(5151, ge=1, le=65535)


class NightlySettings(Strict):
    """The scheduled enrichment of new source photos (``flenwheel serve``)."""

    cron: str = Field("0 3 * * *", description="when it runs (cron syntax)")
    timezone: str = Field("UTC", description="IANA time zone of the cron schedule, e.g. Europe/Berlin")
    editor: EditorChoice = Field("configured", description="configured: each character's own editors")
    review: ReviewMode = "fiftyone"

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        # Prefect checks the expression fully when it builds the schedule; catch the common mistakes early.
        if len(v.split()) != 5 or not re.fullmatch(r"[0-9A-Za-z*/,\- ]+", v):
            raise ValueError("not a cron expression (five fields: minute hour day-of-month month day-of-week)")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone (use an IANA name such as UTC or Europe/Berlin)") from None
        return v


class VerifySettings(Strict):
    """Every edit verified before review (docs/verification.md): retries of a failed edit."""

    enabled: bool = Field(True, description="check every edit (masks, preservation, change, face count)")
    retries: int = Field(2, ge=0, le=8, description="attempts after a failed edit, at most")
    seed_retries: int = Field(1, ge=0, le=8, description="of those, how many only change the seed")
    strength_factor: float = Field(
        0.7, gt=0.0, le=1.0, description="later retries scale the prompt's strength by this per attempt"
    )
    critic: str | None = Field(
        None,
        description="VLM critic for yes/no checks: 'editor' (the profile's Qwen-Image-Edit text encoder, "
        "or Qwen/Qwen2.5-VL-7B-Instruct when it lacks its output layer), a folder or hub id; null: none",
    )
    critic_checks: list[Check] = Field(
        default_factory=lambda: [Check(id="one-person", question="Is there exactly one person in the image?")],
        description="questions asked about every edit, beside each prompt's own checks",
    )


DEFAULT_CAPTION_INSTRUCTION = (
    "Describe this photo in one sentence for training an image model: the person's pose and where they look, "
    "their expression, their clothing, the light and the background. Do not name the person and do not describe "
    "their face, hair, skin or age."
)


class CaptionSettings(Strict):
    """Training captions written by a VLM for every dataset member (docs/captions.md)."""

    model: str | None = Field(
        "editor",
        description="the VLM that writes captions: 'editor' (the profile's Qwen-Image-Edit text encoder, "
        "or Qwen/Qwen2.5-VL-7B-Instruct when it lacks its output layer), a folder or hub id; null: template captions",
    )
    instruction: str = Field(DEFAULT_CAPTION_INSTRUCTION, min_length=10, description="what the VLM is asked")
    max_words: int = Field(40, ge=5, le=200, description="a description is cut after this many words")
    max_new_tokens: int = Field(77, ge=8, le=512, description="tokens the VLM may write")
    edit_text: Literal["instruction", "instruction+caption"] = Field(
        "instruction+caption",
        description="the editor LoRA's training text: the instruction, or the instruction and the caption of the "
        "approved result (what the edit actually produced)",
    )


class Settings(Strict):
    """configs/flenwheel.yaml: project-wide settings."""

    root: Path = Field(Path("datasets"), description="data root, relative to the working directory")
    default_profile: ProfileName = "cpu-tiny"
    store: StoreSettings = StoreSettings()
    catalog: CatalogSettings = CatalogSettings()
    identity: IdentityBackendSettings = IdentityBackendSettings()
    review: ReviewSettings = ReviewSettings()
    nightly: NightlySettings = NightlySettings()
    verify: VerifySettings = VerifySettings()
    captions: CaptionSettings = CaptionSettings()


# --------------------------------------------------------------------------- prompt libraries

ENRICH_CATEGORIES = ("angles", "lighting", "background", "expression", "outfit")
SYNTHETIC_CATEGORIES = ("pose", "scene", "outfit", "lighting")


class AugmentSpec(Strict):
    """The CPU transform that stands in for a prompt when the editor is ``augment``."""

    op: Literal["reframe", "mirror", "crop_face", "light", "background", "recolor_body"]
    zoom: float = Field(1.0, gt=0.2, lt=5.0, description="reframe/crop_face: >1 moves closer")
    shift_x: float = Field(0.0, ge=-0.5, le=0.5, description="reframe: shift of the view, in image widths")
    shift_y: float = Field(0.0, ge=-0.5, le=0.5)
    rotate: float = Field(0.0, ge=-30, le=30, description="degrees")
    brightness: float = Field(1.0, gt=0, le=3)
    contrast: float = Field(1.0, gt=0, le=3)
    warmth: float = Field(0.0, ge=-1, le=1)
    color: tuple[int, int, int] = (128, 128, 128)
    hue: float = Field(0.0, ge=0, le=1, description="recolor_body: target hue (0..1)")
    saturation: float = Field(1.0, ge=0, le=3)


class PromptEntry(Strict):
    id: PromptId
    category: str
    prompt: str = Field(..., min_length=1)
    caption: str = ""
    strength: float = Field(1.0, ge=0.0, le=2.0, description="augment: how strongly the transform applies")
    steps: int | None = Field(None, ge=1, description="sampling steps; None = the profile's")
    augment: AugmentSpec | None = None
    verify: VerifierSpec | None = Field(
        None, description="what an edit must keep and change; default: the category's (docs/verification.md)"
    )
    checks: list[Check] = Field(default_factory=list, description="yes/no questions the VLM critic asks of an edit")


class PromptLibrary(Strict):
    prompts: list[PromptEntry]

    @field_validator("prompts")
    @classmethod
    def _unique(cls, v: list[PromptEntry]) -> list[PromptEntry]:
        seen: set[str] = set()
        for p in v:
            if p.id in seen:
                raise ValueError(f"prompt id {p.id!r} appears twice")
            seen.add(p.id)
        return v


# --------------------------------------------------------------------------- characters


class IdentitySettings(Strict):
    backend: IdentityBackendName = "dlib"
    threshold: float | None = Field(
        None, description="similarity needed to pass; None = calibrated value or the backend default"
    )
    decide_by: Literal["max", "mean"] = "max"


class EditorRouting(Strict):
    """Which editor carries out each prompt category for a character (runs with ``--editor configured``).

    E.g. VIBE for lighting, background and expression edits (fast, strongest where the input must be kept) and
    Qwen-Image-Edit with the multiple-angles LoRA for camera angles (docs/editing.md).
    """

    default: EditorName = Field("qwen", description="the editor of every category not named below")
    categories: dict[str, EditorName] = Field(
        default_factory=dict, description="prompt category -> editor, e.g. {lighting: vibe, angles: qwen}"
    )


class Character(Strict):
    """configs/characters/<name>.yaml."""

    name: str
    trigger: str = Field(..., min_length=2, max_length=64, description="trigger word used in captions")
    source_dir: Path | None = Field(None, description="folder of source photos; default <root>/inbox/<name>")
    identity: IdentitySettings = IdentitySettings()
    description: str = ""
    prompts: list[PromptEntry] = Field(
        default_factory=list, description="extra enrichment prompts (an id of the library replaces that entry)"
    )
    editor_lora: str | None = Field(
        None, description="the qwen editor adds this editor LoRA of the catalog (a lora_id, or 'latest')"
    )
    editor_lora_scale: float = Field(1.0, ge=0.0, le=2.0)
    editors: EditorRouting = Field(
        default_factory=EditorRouting, description="editor per prompt category (runs with --editor configured)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return validate_character_name(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None

    @field_validator("trigger")
    @classmethod
    def _trigger(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_]+", v):
            raise ValueError("use letters, digits and '_' only (one token, no spaces)")
        return v


# --------------------------------------------------------------------------- profiles and LoRAs

PipelineKind = Literal["qwen-image-edit", "flux", "vibe"]


class LoraSpec(Strict):
    """One entry of configs/loras.yaml: where a LoRA comes from and how it wants to be run."""

    ref: str = Field(..., description="hub repo id, local file/folder, or catalog:<lora_id>")
    weight_name: str | None = Field(None, description="file inside a hub repo or folder")
    revision: str | None = None
    scale: float = Field(1.0, description="adapter weight (fuse scale when fused)")
    applies_to: PipelineKind
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

    model: str = Field(..., description="hub id[@revision], a local folder, or tiny:<kind> (built offline)")
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
    checkpoint_every: int = Field(250, ge=1, description="checkpoint, sample and identity-score every N steps")
    keep_last: int = Field(3, ge=1, description="checkpoints kept besides the best one")
    sample_prompts: list[str] = Field(
        default_factory=lambda: [
            "photo of {trigger}, portrait, looking at the camera",
            "photo of {trigger} walking in a park, full body",
            "photo of {trigger}, side view, studio lighting",
            "photo of {trigger} smiling, close-up",
        ],
        description="prompts sampled at each checkpoint ({trigger} is replaced)",
    )
    sample_seeds: list[int] = Field(default_factory=lambda: [0, 1])
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
        3.0, ge=0, description="beside the weights: activations, the CUDA context and the allocator's reserve, "
        "counted when two models would sit on the device together",
    )
    vlm: VlmSettings = Field(default_factory=VlmSettings, description="the critic's and captions' VLM")
    editor: StageSettings
    generator: StageSettings
    vibe_editor: StageSettings | None = Field(
        None, description="the vibe editor (VIBE: Sana1.5 + Qwen3-VL, docs/editing.md); None: not available"
    )
    trainer: TrainerSettings = TrainerSettings()
    edit_trainer: TrainerSettings = Field(
        default_factory=lambda: TrainerSettings(rank=16, steps=1000, sample_prompts=[], sample_size=1024),
        description="the Qwen-Image-Edit LoRA recipe (flywheel 2)",
    )


class LoraLibrary(Strict):
    loras: dict[str, LoraSpec] = Field(default_factory=dict)
