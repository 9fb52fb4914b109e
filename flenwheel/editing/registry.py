"""The editors by name: ``make_editor`` builds one (``EDITORS`` holds the known ones; plug-ins and benchmarks may
register more)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flenwheel.core.config import Character
from flenwheel.editing.augment import AugmentEditor
from flenwheel.editing.jobs import EditError, Editor
from flenwheel.editing.klein import KleinEditor
from flenwheel.editing.qwen import QwenEditor, character_editor_loras
from flenwheel.editing.vibe import VibeEditor
from flenwheel.store.workspace import Workspace

EditorFactory = Callable[[Workspace, Any, Any, Any], Editor]
EDITORS: dict[str, EditorFactory] = {
    "augment": lambda ws, manager, catalog, character: AugmentEditor(),
    "qwen": lambda ws, manager, catalog, character: QwenEditor(
        ws, manager, catalog, character_editor_loras(catalog, character)
    ),
    "vibe": lambda ws, manager, catalog, character: VibeEditor(ws, manager, catalog),
    "klein": lambda ws, manager, catalog, character: KleinEditor(ws, manager, catalog),
}
MODEL_EDITORS = ("qwen", "vibe", "klein")  # editors that load a pipeline through the model manager


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
