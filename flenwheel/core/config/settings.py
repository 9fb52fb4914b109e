"""configs/flenwheel.yaml: project-wide settings (store, catalog, identity backends, review, nightly runs,
verification, captions, evaluation, quality flags and coverage, cluster mode)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from flenwheel.core.config.base import Strict
from flenwheel.core.config.prompts import Check
from flenwheel.core.types import COVERAGE_AXES, EditorChoice, IdentityBackendName, ProfileName, QualityFlag, ReviewMode


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
    auto_reject: list[QualityFlag] = Field(
        default_factory=list,
        description="quality flags that reject a candidate automatically (the policy and clear cases); flags not "
        "listed are shown to people but decide nothing (docs/coverage.md)",
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


class ClusterSettings(Strict):
    """Cluster mode (docs/scale.md): the GPU-bound batches of every flow on a Dask cluster of GPU workers."""

    address: str | None = Field(
        None, description="the Dask scheduler, e.g. tcp://10.0.0.5:8786; null: everything runs in this process"
    )
    resources: dict[str, float] = Field(
        default_factory=lambda: {"GPU": 1.0},
        description="worker resources each task asks for (dask worker --resources GPU=1: one model per card)",
    )
    connect_timeout_s: float = Field(60.0, gt=0, description="how long to wait for the scheduler and a worker")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and v != "local" and not re.fullmatch(r"(tcp|tls|ws|wss|inproc|ucx)://\S+", v):
            raise ValueError("not a Dask scheduler address (tcp://HOST:PORT) or 'local'")
        return v


class BandSettings(Strict):
    """One identity backend's likeness band for evaluation (docs/evaluation.md); None keeps the calibrated value."""

    likeness_floor: float | None = Field(
        None, ge=-1.0, le=1.0, description="a sample whose face is less like the character than this is 'weak'"
    )
    copy_ceiling: float | None = Field(
        None, ge=0.0, le=1.0, description="a sample this close to a training image (copy score) is a 'copy'"
    )


class EvaluationSettings(Strict):
    """How samples are judged: likeness, copies of training images, prompt adherence (docs/evaluation.md)."""

    critic: str | None = Field(
        "verify",
        description="the VLM that answers the evaluation prompts' yes/no checks: 'verify' (verify.critic's), "
        "'editor', a folder or hub id; null: adherence is not measured",
    )
    bands: dict[IdentityBackendName, BandSettings] = Field(
        default_factory=dict, description="per identity backend: overrides of the calibrated likeness band"
    )

    def critic_ref(self, verify: VerifySettings) -> str | None:
        """The critic the evaluation asks, or None when none is configured."""
        return verify.critic if self.critic == "verify" else self.critic


class QualitySettings(Strict):
    """Thresholds of the quality flags (docs/coverage.md has the calibration: ``bench/calibrate_quality.py``)."""

    blur: float = Field(0.65, gt=0.0, lt=1.0, description="blur: scikit-image's blur_effect of the face above")
    blur_image: float = Field(
        0.52, gt=0.0, lt=1.0, description="blur without a face: blur_effect of the frame (512 px) above"
    )
    underexposed_face: float = Field(32.0, gt=0.0, lt=100.0, description="underexposed: median L* of the face below")
    underexposed_image: float = Field(
        50.0, gt=0.0, lt=100.0, description="underexposed without a face: 95th percentile L* of the frame below"
    )
    overexposed: float = Field(
        0.1, gt=0.0, lt=1.0, description="overexposed: share of the face (the frame without one) at L* > 97 above"
    )
    noise: float = Field(4.2, gt=0.0, description="noise: estimated noise sigma (8-bit grey levels) above")
    blockiness: float = Field(
        2.0, gt=1.0, description="noise (compression): 8x8 block-edge / in-block gradient ratio above"
    )
    letterbox: float = Field(
        0.06, gt=0.0, lt=0.5, description="letterbox: black bars covering this share of the height or width or more"
    )
    small_face: int = Field(
        96, ge=8, description="small_face: face's short side in pixels at the training size (train_side) below"
    )
    train_side: int = Field(1024, ge=64, description="longest side images are trained at (never upscaled)")
    near_duplicate: int = Field(
        35, ge=4, description="near_duplicate: ORB matches consistent with one similarity transform, at least"
    )


def _default_targets() -> dict[str, dict[str, float]]:
    # Shares of a set each bin should hold at least: every turn and framing present, the ordinary bins kept full.
    return {
        "yaw": {"left_profile": 0.05, "left_three_quarter": 0.15, "frontal": 0.2, "right_three_quarter": 0.15,
                "right_profile": 0.05},
        "pitch": {"up": 0.05, "level": 0.3, "down": 0.05},
        "framing": {"close_up": 0.15, "head_and_shoulders": 0.2, "half_body": 0.15, "full_body": 0.1},
        "expression": {"neutral": 0.2, "smiling": 0.15, "mouth_open": 0.05},
        "light": {"low_key": 0.05, "mid_key": 0.3, "high_key": 0.05},
        "warmth": {"warm": 0.05, "neutral": 0.2, "cool": 0.05},
    }  # fmt: skip


class CoverageSettings(Strict):
    """What a character's set should cover (docs/coverage.md): a minimal share of the set per bin."""

    targets: dict[str, dict[str, float]] = Field(
        default_factory=_default_targets,
        description="per axis and bin, the share of the set it should hold at least (0 or missing: no target)",
    )
    min_images: int = Field(1, ge=0, description="a bin with a target holds at least this many images")
    min_distinct: int = Field(3, ge=0, description="distinct outfits and backgrounds the captions should name")
    budget: int | None = Field(
        None, ge=1, description="edit jobs --fill-gaps and the flywheel plan at most (null: until the gaps are full)"
    )

    @field_validator("targets")
    @classmethod
    def _known_bins(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for axis, bins in v.items():
            if axis not in COVERAGE_AXES:
                raise ValueError(f"unknown axis {axis!r} (axes: {', '.join(COVERAGE_AXES)})")
            for name, share in bins.items():
                if name not in COVERAGE_AXES[axis]:
                    raise ValueError(f"{axis}: unknown bin {name!r} (bins: {', '.join(COVERAGE_AXES[axis])})")
                if not 0.0 <= share <= 1.0:
                    raise ValueError(f"{axis}.{name}: a share must be between 0 and 1")
        return v


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
    cluster: ClusterSettings = ClusterSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    quality: QualitySettings = QualitySettings()
    coverage: CoverageSettings = CoverageSettings()
