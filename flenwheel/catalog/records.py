"""Rows the engine hands to the catalog, and what the lineage query returns."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    character: str
    origin: str
    path: str
    width: int
    height: int
    source_name: str | None = None


@dataclass(frozen=True)
class DerivationRecord:
    """One parent -> child step, with every parameter needed to reproduce the child."""

    child_id: str
    parent_id: str | None
    op: str
    model_ref: str | None = None
    loras: list[dict[str, Any]] = field(default_factory=list)
    prompt: str | None = None
    prompt_id: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    parent_rank: int = 0
    job_key: str = ""


@dataclass
class Lineage:
    image: dict[str, Any]
    ancestors: list[dict[str, Any]]  # nearest first: depth 1 = the parent step
    descendants: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "ancestors": self.ancestors, "descendants": self.descendants}


def decode_json(row: dict[str, Any], keys: Sequence[str] = ("loras", "params")) -> dict[str, Any]:
    """JSON columns come back from DuckDB as text: decode the named ones in place."""
    for key in keys:
        if isinstance(row.get(key), str):
            row[key] = json.loads(row[key])
    return row
