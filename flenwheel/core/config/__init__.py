"""Pydantic models for every YAML file under configs/ (finding and loading them: :mod:`flenwheel.store.workspace`).

Every file is validated strictly (unknown keys are errors); a failure becomes one :class:`ConfigError` whose
message names the file, the key and what is allowed, so the CLI can print it on one line and exit non-zero.
One module per kind of file; this package hands their models on, so ``from flenwheel.core.config import Profile``
is the one way in.
"""

from flenwheel.core.config.base import CHARACTER_NAME, ConfigError, Strict, validate_character_name
from flenwheel.core.config.characters import Character, CharacterEvaluation, EditorRouting, IdentitySettings
from flenwheel.core.config.profiles import (
    LoraLibrary,
    LoraSpec,
    LoraUse,
    PipelineKind,
    Profile,
    StageSettings,
    TrainerSettings,
    VlmSettings,
)
from flenwheel.core.config.prompts import (
    ENRICH_CATEGORIES,
    EVALUATION_CATEGORIES,
    SYNTHETIC_CATEGORIES,
    AugmentSpec,
    Check,
    EvaluationLibrary,
    Preserve,
    PromptEntry,
    PromptLibrary,
    VerifierSpec,
)
from flenwheel.core.config.settings import (
    DEFAULT_CAPTION_INSTRUCTION,
    BandSettings,
    CaptionSettings,
    CatalogSettings,
    CoverageSettings,
    EvaluationSettings,
    IdentityBackendSettings,
    NightlySettings,
    QualitySettings,
    ReviewSettings,
    Settings,
    StoreSettings,
    VerifySettings,
)

__all__ = [
    "CHARACTER_NAME",
    "DEFAULT_CAPTION_INSTRUCTION",
    "ENRICH_CATEGORIES",
    "EVALUATION_CATEGORIES",
    "SYNTHETIC_CATEGORIES",
    "AugmentSpec",
    "BandSettings",
    "CaptionSettings",
    "CatalogSettings",
    "Character",
    "CharacterEvaluation",
    "Check",
    "ConfigError",
    "CoverageSettings",
    "EditorRouting",
    "EvaluationLibrary",
    "EvaluationSettings",
    "IdentityBackendSettings",
    "IdentitySettings",
    "LoraLibrary",
    "LoraSpec",
    "LoraUse",
    "NightlySettings",
    "PipelineKind",
    "Preserve",
    "Profile",
    "PromptEntry",
    "PromptLibrary",
    "QualitySettings",
    "ReviewSettings",
    "Settings",
    "StageSettings",
    "StoreSettings",
    "Strict",
    "TrainerSettings",
    "VerifierSpec",
    "VerifySettings",
    "VlmSettings",
    "validate_character_name",
]
