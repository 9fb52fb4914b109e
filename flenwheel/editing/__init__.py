"""Editors that turn a source photo into a variant (:mod:`.augment` on the CPU, :mod:`.qwen` on a GPU), and the
jobs that make every variant reproducible (:mod:`.jobs`). ``make_editor`` picks one by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flenwheel.config import Character
from flenwheel.editing.augment import AugmentEditor, person_mask
from flenwheel.editing.jobs import (
    Box,
    EditError,
    EditJob,
    Editor,
    EditResult,
    job_key,
    pending_jobs,
    run_edit_batch,
)
from flenwheel.editing.qwen import QwenEditor, character_editor_loras
from flenwheel.workspace import Workspace

EditorFactory = Callable[[Workspace, Any, Any, Any], Editor]
EDITORS: dict[str, EditorFactory] = {
    "augment": lambda ws, manager, catalog, character: AugmentEditor(),
    "qwen": lambda ws, manager, catalog, character: QwenEditor(
        ws, manager, catalog, character_editor_loras(catalog, character)
    ),
}


def make_editor(
    name: str, ws: Workspace, manager: Any | None = None, catalog: Any | None = None, character: Character | None = None
) -> Editor:
    """An editor by name (``EDITORS`` holds the known ones; plug-ins and benchmarks may register more).

    With ``character``, the qwen editor adds the character's own editor LoRA when its config selects one.
    """
    if name not in EDITORS:
        raise EditError(f"unknown editor {name!r}: use {' or '.join(EDITORS)}")
    if name == "qwen" and manager is None:
        raise EditError("the qwen editor needs a model manager")
    return EDITORS[name](ws, manager, catalog, character)


__all__ = [
    "EDITORS", "AugmentEditor", "Box", "EditError", "EditJob", "EditResult", "Editor", "QwenEditor",
    "character_editor_loras", "job_key", "make_editor", "pending_jobs", "person_mask", "run_edit_batch",
]  # fmt: skip
