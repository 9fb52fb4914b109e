"""Names and choices shared by configs, the catalog, flow parameters and the CLI, each defined once.

Profiles and characters are discovered from the config folder (``Workspace.profile_names()``,
``Workspace.character_names()``); the types here only fix the alphabet of their names, so a new profile YAML
needs no code change.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, StringConstraints

CHARACTER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
PROFILE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
PROMPT_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
HUB_ID_PATTERN = r"^[A-Za-z0-9][\w.-]*/[\w.-]+$"  # a Hugging Face repo id, org/name

CharacterName = Annotated[
    str, StringConstraints(pattern=CHARACTER_PATTERN), Field(description="a character of configs/characters/")
]
ProfileName = Annotated[str, StringConstraints(pattern=PROFILE_PATTERN), Field(description="configs/profiles/<name>")]
PromptId = Annotated[str, StringConstraints(pattern=PROMPT_ID_PATTERN)]

EditorName = Literal["augment", "qwen", "vibe", "klein"]
# What a run is told to use: one editor for every prompt, or "configured": each prompt category's editor from the
# character's ``editors`` (configs/characters/<name>.yaml).
EditorChoice = Literal["configured", "augment", "qwen", "vibe", "klein"]
EditOp = Literal["edit", "augment"]  # the derivation op: qwen edits record "edit", the CPU editor "augment"
ReviewMode = Literal["auto", "fiftyone", "cli"]
ReviewStage = Literal["enrich", "synthetic"]
Verdict = Literal["pass", "fail", "no_face", "multi_face", "small_face", "low_confidence"]
Origin = Literal["source", "edit", "augment", "generate"]
IdentityBackendName = Literal["dlib", "insightface", "yunet"]

EDITORS: tuple[str, ...] = get_args(EditorName)
EDITOR_CHOICES: tuple[str, ...] = get_args(EditorChoice)
EDIT_OPS: tuple[str, ...] = get_args(EditOp)
REVIEW_MODES: tuple[str, ...] = get_args(ReviewMode)
REVIEW_STAGES: tuple[str, ...] = get_args(ReviewStage)
VERDICTS: tuple[str, ...] = get_args(Verdict)
ORIGINS: tuple[str, ...] = get_args(Origin)
