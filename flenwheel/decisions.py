"""Review gates in the catalog: which candidates wait, and the decisions from the CLI, a CSV or the auto policy.

A gate is per character and stage: ``<character>:enrich`` holds the enrichment candidates (``edit`` and
``augment`` images), ``<character>:synthetic`` the generated ones. Decisions land in ``reviews`` (history kept,
``review_state`` is the latest); FiftyOne tags arrive through :mod:`flenwheel.review`. Source photos count as
approved unless a review rejects them.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flenwheel.catalog import Catalog
from flenwheel.errors import FlenwheelError

STAGE_ORIGINS: dict[str, tuple[str, ...]] = {"enrich": ("edit", "augment"), "synthetic": ("generate",)}
DECISION_WORDS = {"approve": "approved", "approved": "approved", "reject": "rejected", "rejected": "rejected"}


class ReviewError(FlenwheelError):
    """A review decision cannot be taken as asked."""


def gate_id(character: str, stage: str) -> str:
    if stage not in STAGE_ORIGINS:
        raise ReviewError(f"unknown review stage {stage!r}: use {' or '.join(STAGE_ORIGINS)}")
    return f"{character}:{stage}"


def candidates(catalog: Catalog, character: str, stage: str) -> list[dict[str, Any]]:
    """The stage's candidates with their latest identity score and current decision."""
    origins = list(STAGE_ORIGINS[stage])
    if not catalog.path.exists():
        return []
    return catalog.rows(
        """WITH score AS (
               SELECT * EXCLUDE (rn) FROM (
                   SELECT image_id, verdict, similarity, threshold, matched,
                          row_number() OVER (PARTITION BY image_id ORDER BY scored_at DESC) AS rn
                   FROM identity_scores) WHERE rn = 1)
           SELECT i.image_id, i.origin, i.path, i.created_at, d.parent_id, d.prompt_id, d.seed, d.op,
                  s.verdict, s.similarity, s.threshold, s.matched, r.decision, r.source AS decided_by
           FROM images i
           LEFT JOIN (SELECT DISTINCT ON (child_id) child_id, parent_id, prompt_id, seed, op FROM derivations
                      WHERE parent_rank = 0 ORDER BY child_id, created_at) d ON d.child_id = i.image_id
           LEFT JOIN score s ON s.image_id = i.image_id
           LEFT JOIN review_state r ON r.image_id = i.image_id AND r.gate_id = $gate
           WHERE i.character = $c AND list_contains($origins, i.origin)
           ORDER BY i.created_at, i.image_id""",
        {"c": character, "gate": gate_id(character, stage), "origins": origins},
    )


@dataclass(frozen=True)
class GateStatus:
    gate_id: str
    candidates: int
    approved: int
    rejected: int
    pending: int
    unscored: int  # pending candidates that have no identity score yet

    @property
    def done(self) -> bool:
        return self.pending == 0


def status(catalog: Catalog, character: str, stage: str) -> GateStatus:
    rows = candidates(catalog, character, stage)
    pending = [r for r in rows if r["decision"] is None]
    return GateStatus(
        gate_id(character, stage),
        len(rows),
        sum(r["decision"] == "approved" for r in rows),
        sum(r["decision"] == "rejected" for r in rows),
        len(pending),
        sum(r["verdict"] is None for r in pending),
    )


def auto_review(catalog: Catalog, character: str, stage: str, margin: float, run_id: str | None) -> tuple[int, int]:
    """Approve identity passes at least ``margin`` above their threshold; reject the other scored candidates.

    Only undecided candidates are touched (a human decision is never overridden); unscored ones wait.
    Returns (approved, rejected) counts written now.
    """
    gate = gate_id(character, stage)
    rows = []
    for c in candidates(catalog, character, stage):
        if c["decision"] is not None or c["verdict"] is None:
            continue
        ok = c["verdict"] == "pass" and c["similarity"] >= c["threshold"] + margin
        note = (
            f"auto: pass, similarity {c['similarity']:.3f} >= threshold {c['threshold']:.3f} + {margin}"
            if ok
            else f"auto: {c['verdict']}"
            + (
                f", similarity {c['similarity']:.3f} vs threshold {c['threshold']:.3f} + {margin}"
                if c["similarity"] is not None
                else ""
            )
        )
        rows.append(
            {
                "image_id": c["image_id"],
                "gate_id": gate,
                "decision": "approved" if ok else "rejected",
                "source": "auto",
                "reviewer": "auto",
                "note": note,
            }
        )
    catalog.add_reviews(rows, run_id)
    return sum(r["decision"] == "approved" for r in rows), sum(r["decision"] == "rejected" for r in rows)


def read_decisions_csv(path: Path) -> list[tuple[str, str, str | None]]:
    """``image_id,decision[,note]`` rows (a header row is allowed); decision is approve(d) or reject(ed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ReviewError(f"{path}: cannot read ({e.strerror})") from None
    out = []
    for n, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or (n == 1 and row[0].strip().lower() == "image_id"):
            continue
        if len(row) < 2:
            raise ReviewError(f"{path}: line {n}: expected image_id,decision[,note]")
        decision = DECISION_WORDS.get(row[1].strip().lower())
        if decision is None:
            raise ReviewError(f"{path}: line {n}: decision must be approve or reject (got {row[1]!r})")
        out.append((row[0].strip(), decision, row[2].strip() if len(row) > 2 else None))
    return out


def decide(
    catalog: Catalog,
    character: str,
    stage: str,
    decisions: Sequence[tuple[str, str, str | None]],
    source: str,
    reviewer: str | None,
    run_id: str | None,
) -> int:
    """Record (image id or unique prefix, decision, note) for candidates of the gate; returns how many changed.

    Every id is checked before anything is written: one unknown id and nothing is recorded.
    """
    by_id = {c["image_id"]: c for c in candidates(catalog, character, stage)}
    gate = gate_id(character, stage)
    rows = []
    for ref, decision, note in decisions:
        matches = [i for i in by_id if i.startswith(ref.lower())] if len(ref) >= 6 else []
        if len(matches) != 1:
            why = "is ambiguous" if matches else f"is not a candidate of gate {gate}"
            raise ReviewError(f"image {ref} {why}; nothing was recorded")
        rows.append(
            {
                "image_id": matches[0],
                "gate_id": gate,
                "decision": decision,
                "source": source,
                "reviewer": reviewer,
                "note": note,
            }
        )
    return catalog.add_reviews(rows, run_id)
