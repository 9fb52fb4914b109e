"""The report's licence section: every model that made the iteration's dataset version and LoRA, with its licence,
and a warning when a non-commercial model (or one whose licence is unknown) contributed."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flenwheel.catalog import Catalog
from flenwheel.core.files import atomic_write
from flenwheel.models.licences import non_commercial
from flenwheel.report.page import Section

COLUMNS = ("model", "role", "licence", "commercial", "source")


def iteration_licences(catalog: Catalog, version_id: str | None, lora_id: str | None) -> list[dict[str, Any]]:
    """The records of the version and of the LoRA (which holds its base model and its training data's)."""
    rows: list[dict[str, Any]] = []
    if version_id:
        rows += [{**r, "role": f"dataset {version_id.split('@')[-1]}: {r['role']}"} for r in
                 catalog.version_licences(version_id) or []]  # fmt: skip
    lora = catalog.lora(lora_id) if lora_id else None
    if lora and lora.get("licences"):
        rows += [{**r, "role": f"LoRA: {r['role']}"} for r in lora["licences"]]
    return rows


def licence_summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Summary lines (trusted HTML): the warning when a non-commercial or unknown licence contributed."""
    if not rows:
        return ["Licences: none recorded (a version or LoRA made before licences were recorded)."]
    forbidden, unknown = non_commercial(rows)
    lines = []
    if forbidden:
        lines.append(
            "<span class='miss'>Warning: non-commercial models contributed</span> — "
            + html.escape("; ".join(forbidden))
            + ". What this iteration made may not be used commercially (docs/models.md)."
        )
    if unknown:
        lines.append(
            "<span class='miss'>Licence unknown</span> for " + html.escape(", ".join(unknown)) + ": check it yourself."
        )
    if not forbidden and not unknown:
        lines.append("<span class='ok'>Licences: every contributing model allows commercial use.</span>")
    return lines


def licence_section(rows: Sequence[dict[str, Any]], out: Path) -> Section:
    """The table of licences, also written as ``licences.json`` beside the page."""
    atomic_write(out / "licences.json", json.dumps(list(rows), indent=1, sort_keys=True).encode())
    table = [
        {
            c: ("yes" if r[c] else "no" if r[c] is False else "unknown") if c == "commercial" else r.get(c)
            for c in COLUMNS
        }
        for r in rows
    ]
    return Section("Licences", ["The models that made this iteration's dataset version and LoRA."], table=table)
