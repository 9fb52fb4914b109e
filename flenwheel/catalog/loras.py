"""Trained LoRAs: registration, look-ups, the triplets flywheel 2 trains on, and editor evaluations."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flenwheel.catalog.core import CatalogCore, now


class LorasMixin(CatalogCore):
    """Writer and readers of ``loras``; readers of the ``triplets`` view and of editor evaluation metrics."""

    def register_lora(
        self,
        *,
        lora_id: str,
        character: str,
        kind: str,
        base_model_ref: str,
        dataset_version: str | None,
        hyperparams: dict[str, Any],
        steps: int,
        path: str,
        sha256: str,
        comfy_path: str | None,
        chosen_checkpoint: int,
        run_id: str | None,
        licences: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Record a finished LoRA (paths relative to the data root) with the licences of the models that made it
        (base model and its training data's); registering the same id again is a no-op."""
        self.write(
            lambda con: con.execute(
                "INSERT OR IGNORE INTO loras (lora_id, character, kind, base_model_ref, dataset_version, hyperparams,"
                " steps, path, sha256, comfy_path, chosen_checkpoint, run_id, created_at, licences)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    lora_id,
                    character,
                    kind,
                    base_model_ref,
                    dataset_version,
                    json.dumps(hyperparams, sort_keys=True),
                    steps,
                    path,
                    sha256,
                    comfy_path,
                    chosen_checkpoint,
                    run_id,
                    now(),
                    None if licences is None else json.dumps(list(licences), sort_keys=True),
                ],
            )
        )

    def lora(self, lora_id: str) -> dict[str, Any] | None:
        """The ``loras`` row of ``lora_id`` (``hyperparams`` and ``licences`` decoded), or None."""
        if not self.path.exists():
            return None
        rows = self.rows("SELECT * FROM loras WHERE lora_id = ?", [lora_id])
        if not rows:
            return None
        row = rows[0]
        row["hyperparams"] = json.loads(row["hyperparams"] or "{}")
        row["licences"] = json.loads(row["licences"]) if row.get("licences") else None
        return row

    def loras_of(self, character: str) -> list[dict[str, Any]]:
        """The character's LoRAs, oldest first."""
        return self.rows("SELECT * FROM loras WHERE character = ? ORDER BY created_at, lora_id", [character])

    def latest_lora(self, character: str, kind: str) -> str | None:
        """The id of the character's newest LoRA of ``kind``."""
        rows = self.rows(
            "SELECT lora_id FROM loras WHERE character = ? AND kind = ? ORDER BY created_at DESC LIMIT 1",
            [character, kind],
        )
        return rows[0]["lora_id"] if rows else None

    def approved_triplets(self, character: str, ops: Sequence[str]) -> list[dict[str, Any]]:
        """Approved (before, instruction, after) triplets made by ``ops``, with store paths and the after image's
        current caption, in a stable order."""
        return self.rows(
            """SELECT t.before_id, b.path AS before_path, t.instruction, t.after_id, a.path AS after_path, t.prompt_id,
                      c.caption AS after_caption
               FROM (SELECT DISTINCT before_id, instruction, after_id, prompt_id, character, op FROM triplets) t
               JOIN images b ON b.image_id = t.before_id JOIN images a ON a.image_id = t.after_id
               LEFT JOIN latest_captions c ON c.image_id = t.after_id
               WHERE t.character = ? AND list_contains(?, t.op)
                 AND NOT EXISTS (SELECT 1 FROM review_state r WHERE r.image_id = t.after_id AND r.decision = 'rejected')
               ORDER BY t.after_id, t.before_id""",
            [character, list(ops)],
        )

    def edit_evaluations(self, character: str) -> list[dict[str, Any]]:
        """Metrics of every evaluated editor LoRA of the character: (lora_id, arm, name, value)."""
        return self.rows(
            """SELECT l.lora_id, split_part(m.scope_id, ':', -1) AS arm, m.name, m.value
               FROM loras l JOIN metrics m ON m.scope = 'edit_eval'
                    AND m.scope_id IN (l.lora_id || ':base', l.lora_id || ':lora')
               WHERE l.character = ? AND l.kind = 'qwen_edit' ORDER BY l.created_at, m.recorded_at""",
            [character],
        )

    def lora_file(self, lora_id: str, root: Path) -> tuple[Path, str] | None:
        """The diffusers-format file of a catalog LoRA and its sha256, or None."""
        rows = self.rows("SELECT path, sha256 FROM loras WHERE lora_id = ?", [lora_id]) if self.path.exists() else []
        return (root / rows[0]["path"], rows[0]["sha256"]) if rows else None
