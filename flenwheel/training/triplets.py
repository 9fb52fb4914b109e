"""Flywheel 2's training data: approved (before, instruction, after) triplets, held-out sources, exports.

The export follows musubi-tuner's JSONL layout and the folder pairing most edit trainers expect, so the same
set can train elsewhere.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flenwheel.catalog import Catalog
from flenwheel.dataset.captions import edit_training_text
from flenwheel.store.workspace import Workspace
from flenwheel.training.checkpoints import atomic_dir, commit_dir
from flenwheel.training.data import link_or_copy


@dataclass(frozen=True)
class Triplet:
    before_id: str
    before_path: str
    instruction: str
    after_id: str
    after_path: str
    prompt_id: str | None
    after_caption: str | None = None  # the approved result's caption (flenwheel.dataset.captions)

    def text(self, mode: str) -> str:
        """What the editor LoRA is trained on for this triplet (``captions.edit_text``)."""
        return edit_training_text(self.instruction, self.after_caption, mode)


def approved_triplets(catalog: Catalog, character: str, ops: Sequence[str] = ("edit",)) -> list[Triplet]:
    """Approved (before, instruction, after) triplets of ``character`` made by ``ops``, in a stable order."""
    return [Triplet(**r) for r in catalog.approved_triplets(character, ops)]


def split_held_out(source_ids: Sequence[str], every: int = 5) -> tuple[list[str], list[str]]:
    """(training sources, held-out sources): every ``every``-th source by id is held out, at least one when there
    are two or more, so the evaluation edits photos the LoRA never saw."""
    ids = sorted(source_ids)
    if len(ids) < 2:
        return ids, []
    held = ids[::every] if len(ids) >= every else ids[:1]
    return [i for i in ids if i not in held], held


def export_triplets(ws: Workspace, triplets: Sequence[Triplet], name: str) -> Path:
    """Write triplets for other trainers under ``<root>/exports/<name>/``:

    * ``musubi.jsonl`` — musubi-tuner's layout: ``image_path`` (after), ``control_path_0`` (before), ``caption``
      (the training text, :meth:`Triplet.text`);
    * ``images/<after>.png`` + ``images/<after>.txt`` and ``control/<after>.png`` (the before image under the
      after image's name, the pairing most folder-based edit trainers expect).

    Files are hard links to the store where possible. Idempotent: a complete export is left as it is.
    """
    out = ws.root / "exports" / name
    if (out / "musubi.jsonl").exists():
        return out
    tmp = atomic_dir(out)
    try:
        (tmp / "images").mkdir()
        (tmp / "control").mkdir()
        lines = []
        mode = ws.settings.captions.edit_text
        for t in triplets:
            after, before = tmp / "images" / f"{t.after_id}.png", tmp / "control" / f"{t.after_id}.png"
            link_or_copy(ws.root / t.after_path, after)
            link_or_copy(ws.root / t.before_path, before)
            (tmp / "images" / f"{t.after_id}.txt").write_text(t.text(mode) + "\n", encoding="utf-8")
            final_after, final_before = out / "images" / after.name, out / "control" / before.name
            lines.append(
                json.dumps(
                    {"image_path": str(final_after), "control_path_0": str(final_before), "caption": t.text(mode)},
                    ensure_ascii=False,
                )
            )
        (tmp / "musubi.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        commit_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
