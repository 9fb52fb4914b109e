"""Editors that turn a source photo into a variant (:mod:`.augment` on the CPU, :mod:`.qwen` and :mod:`.vibe` on
a GPU; docs/editing.md says which when), the jobs that make every variant reproducible (:mod:`.jobs`), which editor
carries out which prompt (:mod:`.planning`), every edit checked (:mod:`.checks`: :mod:`.masks`, :mod:`.verify` and
the critic) and editors compared (:mod:`.compare`). ``make_editor`` (:mod:`.registry`) picks one by name."""

from __future__ import annotations

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
from flenwheel.editing.planning import editor_plan, plan_enrichment
from flenwheel.editing.qwen import QwenEditor, character_editor_loras
from flenwheel.editing.registry import EDITORS, MODEL_EDITORS, make_editor
from flenwheel.editing.vibe import VibeEditor

__all__ = [
    "EDITORS", "MODEL_EDITORS", "AugmentEditor", "Box", "EditError", "EditJob", "EditResult", "Editor", "QwenEditor",
    "VibeEditor", "character_editor_loras", "editor_plan", "job_key", "make_editor", "pending_jobs",
    "plan_enrichment", "retry_jobs", "run_edit_batch",
]  # fmt: skip
