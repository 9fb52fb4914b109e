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
IdentityBackendName = Literal["dlib", "insightface", "yunet", "sface"]

EDITORS: tuple[str, ...] = get_args(EditorName)
EDITOR_CHOICES: tuple[str, ...] = get_args(EditorChoice)
EDIT_OPS: tuple[str, ...] = get_args(EditOp)
REVIEW_MODES: tuple[str, ...] = get_args(ReviewMode)
REVIEW_STAGES: tuple[str, ...] = get_args(ReviewStage)
VERDICTS: tuple[str, ...] = get_args(Verdict)
ORIGINS: tuple[str, ...] = get_args(Origin)

# Coverage (docs/coverage.md): what a photo shows of its subject, binned per axis. Yaw is from the subject's point
# of view (``left_*``: the head turned to the subject's own left, the nose toward the image's right), so a photo and
# its mirror land in mirrored bins. Measured by :mod:`flenwheel.identity.attributes`; a prompt entry's ``adds``
# names the bins it aims at.
COVERAGE_AXES: dict[str, tuple[str, ...]] = {
    "yaw": ("left_profile", "left_three_quarter", "frontal", "right_three_quarter", "right_profile"),
    "pitch": ("up", "level", "down"),
    "framing": ("close_up", "head_and_shoulders", "half_body", "full_body"),
    "expression": ("neutral", "smiling", "mouth_open"),
    "light": ("low_key", "mid_key", "high_key"),
    "warmth": ("warm", "neutral", "cool"),
}
# Axes read from the captions: what an image adds there is a name ("red sweater"), and coverage counts distinct ones.
VARIETY_AXES: tuple[str, ...] = ("outfit", "background")
MIRRORED_YAW: dict[str, str] = dict(zip(COVERAGE_AXES["yaw"], reversed(COVERAGE_AXES["yaw"]), strict=True))

# Quality flags (docs/coverage.md): shown on every image; a flag rejects automatically only when
# ``review.auto_reject`` lists it. Stored as ``verifications`` rows named ``flag:<name>``.
QualityFlag = Literal["blur", "underexposed", "overexposed", "noise", "letterbox", "small_face", "near_duplicate"]
QUALITY_FLAGS: tuple[str, ...] = get_args(QualityFlag)
FLAG_PREFIX = "flag:"
