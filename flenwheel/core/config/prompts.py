"""Prompt libraries (configs/prompts/*.yaml) and what a prompt asks of its outputs: pixel preservation
(:class:`VerifierSpec`, judged by :mod:`flenwheel.editing.verify`), yes/no questions for the VLM critic
(:class:`Check`, answered by :mod:`flenwheel.models.critic`) and the coverage bins it adds (``adds``, aimed at the
set's gaps and checked after the edit: docs/coverage.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from flenwheel.core.config.base import Strict
from flenwheel.core.types import COVERAGE_AXES, VARIETY_AXES, PromptId

Preserve = Literal["outside", "structure", "none"]


class VerifierSpec(Strict):
    """What an edit must keep, and how much it must change (see docs/verification.md for the calibration).

    ``preserve``:
      * ``outside`` - pixels outside the edit region (a background edit: the person; an outfit edit: the face and
        the background) must stay: SSIM and PSNR over that region.
      * ``structure`` - the whole image may change colour, but not geometry (relighting): SSIM's
        contrast-structure term on grey levels (no luminance term), so a brightness, contrast or warmth change
        scores high and a moved, mirrored or flattened image scores low. ``min_psnr`` does not apply.
      * ``none`` - nothing is compared (camera moves change every pixel; identity is judged elsewhere).
    """

    preserve: Preserve = "outside"
    min_ssim: float | None = Field(
        None, ge=-1.0, le=1.0, description="lowest SSIM over the preserved region (None: not checked)"
    )
    min_psnr: float | None = Field(None, ge=0.0, description="lowest PSNR (dB) over the preserved region")
    min_change: float = Field(
        0.0, ge=0.0, le=1.0, description="lowest mean absolute difference (0..1) inside the edit region"
    )
    faces: int | None = Field(1, ge=0, description="faces the edited image must show (None: not checked)")


class Check(Strict):
    """One yes/no question the VLM critic answers about an image (an edit, or a sample of an evaluation prompt)."""

    id: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    question: str = Field(..., min_length=3)
    expect: bool = Field(True, description="the answer a good image gives")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="p(yes) from which the answer counts as yes")


ENRICH_CATEGORIES = ("angles", "lighting", "background", "expression", "outfit")
SYNTHETIC_CATEGORIES = ("pose", "scene", "outfit", "lighting")
# What an evaluation prompt changes from the training photos (docs/evaluation.md).
EVALUATION_CATEGORIES = ("outfit", "scene", "lighting", "angle", "expression")


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
    checks: list[Check] = Field(
        default_factory=list, description="yes/no questions the VLM critic asks of an edit or an evaluation sample"
    )
    adds: dict[str, str] = Field(
        default_factory=dict,
        description="what an edit adds to the set, e.g. {yaw: left_profile} or {outfit: red sweater}: aimed at the "
        "set's gaps (--fill-gaps) and, for measured axes, checked after the edit (docs/coverage.md)",
    )

    @field_validator("adds")
    @classmethod
    def _known_bins(cls, v: dict[str, str]) -> dict[str, str]:
        for axis, value in v.items():
            if axis in COVERAGE_AXES:
                if value not in COVERAGE_AXES[axis]:
                    raise ValueError(f"{axis}: unknown bin {value!r} (bins: {', '.join(COVERAGE_AXES[axis])})")
            elif axis in VARIETY_AXES:
                if not value.strip() or len(value) > 60:
                    raise ValueError(f"{axis}: name what the edit adds in 1-60 characters (e.g. red sweater)")
            else:
                raise ValueError(f"unknown axis {axis!r} (axes: {', '.join([*COVERAGE_AXES, *VARIETY_AXES])})")
        return v

    @property
    def aims(self) -> dict[str, str]:
        """The measured axes of ``adds`` (those the landed check verifies)."""
        return {axis: value for axis, value in self.adds.items() if axis in COVERAGE_AXES}


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


class EvaluationLibrary(PromptLibrary):
    """configs/prompts/evaluation.yaml: the evaluation prompt set, sampled with the same fixed seeds for every
    checkpoint and LoRA so that they are compared on the same jobs (docs/evaluation.md)."""

    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1, description="seeds of every prompt")
