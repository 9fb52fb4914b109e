"""configs/characters/<name>.yaml: who a character is, how their identity is judged, which editors serve them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from flenwheel.core.config.base import ConfigError, Strict, validate_character_name
from flenwheel.core.config.prompts import PromptEntry
from flenwheel.core.types import EditorName, IdentityBackendName


class IdentitySettings(Strict):
    backend: IdentityBackendName | None = Field(
        None,
        description="face backend; None: the run's profile's identity_backend (dlib on cpu-tiny, sface on the "
        "-open profiles, insightface on gpu-24gb)",
    )
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


class CharacterEvaluation(Strict):
    """How a character's LoRAs and checkpoints are evaluated (docs/evaluation.md): which prompt set, with which
    prompts of its own and which seeds."""

    library: str = Field(
        "evaluation", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="configs/prompts/<library>.yaml"
    )
    prompts: list[PromptEntry] = Field(
        default_factory=list, description="extra evaluation prompts (an id of the library replaces that entry)"
    )
    seeds: list[int] | None = Field(None, min_length=1, description="seeds of every prompt; None: the library's")


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
    evaluation: CharacterEvaluation = Field(
        default_factory=CharacterEvaluation, description="the evaluation prompt set of its LoRAs (docs/evaluation.md)"
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
