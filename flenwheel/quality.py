"""What a prompt asks of its outputs: pixel preservation (:class:`VerifierSpec`) and critic questions (:class:`Check`).

Plain configuration models, the engines that use them live in :mod:`flenwheel.verify` and
:mod:`flenwheel.critic`. They sit in a module of their own, beside :mod:`flenwheel.config`, so that a prompt
entry can carry them (``PromptEntry.verify``, ``PromptEntry.checks``) without the config layer importing
OpenCV, scikit-image or transformers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Preserve = Literal["outside", "structure", "none"]


class _Strict(BaseModel):
    # Same rules as flenwheel.config.Strict (unknown keys are errors, values frozen). Not imported from there:
    # config imports this module for PromptEntry, and the reverse import would be a cycle.
    model_config = ConfigDict(extra="forbid", frozen=True)


class VerifierSpec(_Strict):
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


class Check(_Strict):
    """One yes/no question the VLM critic answers about an edited image."""

    id: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    question: str = Field(..., min_length=3)
    expect: bool = Field(True, description="the answer a good image gives")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="p(yes) from which the answer counts as yes")
