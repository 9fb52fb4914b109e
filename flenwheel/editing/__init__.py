"""Editors that turn a source photo into a variant (:mod:`.augment` on the CPU, :mod:`.qwen` and :mod:`.vibe` on
a GPU; docs/editing.md says which when), and the jobs that make every variant reproducible (:mod:`.jobs`).
``make_editor`` picks one by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flenwheel.config import Character, ConfigError, PromptEntry
from flenwheel.editing.augment import AugmentEditor
from flenwheel.editing.jobs import (
    Box,
    EditError,
    EditJob,
    Editor,
    EditResult,
    job_key,
    pending_jobs,
    retry_jobs,
    run_edit_batch,
)
from flenwheel.editing.qwen import QwenEditor, character_editor_loras
from flenwheel.editing.vibe import VibeEditor
from flenwheel.workspace import Workspace

EditorFactory = Callable[[Workspace, Any, Any, Any], Editor]
EDITORS: dict[str, EditorFactory] = {
    "augment": lambda ws, manager, catalog, character: AugmentEditor(),
    "qwen": lambda ws, manager, catalog, character: QwenEditor(
        ws, manager, catalog, character_editor_loras(catalog, character)
    ),
    "vibe": lambda ws, manager, catalog, character: VibeEditor(ws, manager, catalog),
}
MODEL_EDITORS = ("qwen", "vibe")  # editors that load a pipeline through the model manager


def make_editor(
    name: str, ws: Workspace, manager: Any | None = None, catalog: Any | None = None, character: Character | None = None
) -> Editor:
    """An editor by name (``EDITORS`` holds the known ones; plug-ins and benchmarks may register more).

    With ``character``, the qwen editor adds the character's own editor LoRA when its config selects one.
    """
    if name not in EDITORS:
        raise EditError(f"unknown editor {name!r}: use {' or '.join(EDITORS)}")
    if name in MODEL_EDITORS and manager is None:
        raise EditError(f"the {name} editor needs a model manager")
    return EDITORS[name](ws, manager, catalog, character)


def editor_plan(
    choice: str, character: Character, prompts: Sequence[PromptEntry], library: Sequence[PromptEntry]
) -> dict[str, list[PromptEntry]]:
    """Which editor carries out which of ``prompts``: all of them for a named editor; for ``configured``, each
    prompt category's editor from the character's ``editors`` (``default`` for the categories it does not name).

    A routed category that no prompt of the ``library`` has is a typo that would silently fall back to the
    default editor, so it is an error naming the key.
    """
    if choice != "configured":
        return {choice: list(prompts)}
    routing = character.editors
    known = {p.category for p in library}
    for category in routing.categories:
        if category not in known:
            raise ConfigError(
                f"characters/{character.name}.yaml: editors.categories.{category}: no prompt has this category "
                f"(categories: {', '.join(sorted(known))})"
            )
    plan: dict[str, list[PromptEntry]] = {}
    for prompt in prompts:
        plan.setdefault(routing.categories.get(prompt.category, routing.default), []).append(prompt)
    return plan


__all__ = [
    "EDITORS", "MODEL_EDITORS", "AugmentEditor", "Box", "EditError", "EditJob", "EditResult", "Editor", "QwenEditor",
    "VibeEditor",
    "character_editor_loras", "editor_plan", "job_key", "make_editor", "pending_jobs", "retry_jobs", "run_edit_batch",
]  # fmt: skip
