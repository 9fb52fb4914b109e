"""The report's view of verified enrichment and of the review gates.

*Per prompt*: how often each kind of check passes over every attempt the editor made (identity, preservation
outside the edit region, "did anything change", face count, whether an aimed edit landed in its bin, the VLM
critic's questions), the share of attempts carrying a quality flag, how many jobs ended approved, and how many
retries an approved image cost. *Failure examples*: a grid of attempts per failure kind.
*Review*: per gate, the share of candidates the policy decided and how people's decisions agreed with it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from flenwheel import gate
from flenwheel.catalog import Catalog
from flenwheel.core.config import ReviewSettings
from flenwheel.core.types import FLAG_PREFIX, REVIEW_STAGES
from flenwheel.report.grids import image_grid
from flenwheel.report.page import Section

EXAMPLES_PER_KIND = 8


def check_kind(name: str) -> str:
    """The column a verification row counts in: both preservation measures are one kind, each critic check too."""
    return "preservation" if name.startswith("preserve_") else name


def edit_checks(row: dict[str, Any]) -> list[dict[str, Any]]:
    """An attempt's checks without its quality flags (flags are shown apart: they fail no edit)."""
    return [c for c in row["checks"] or [] if not c["name"].startswith(FLAG_PREFIX)]


def failure_kinds(row: dict[str, Any]) -> list[str]:
    """Why an attempt failed: ``identity`` and the kinds of its failed checks (empty when it passed)."""
    kinds = ["identity"] if row["verdict"] not in (None, "pass") else []
    kinds += sorted({check_kind(c["name"]) for c in edit_checks(row) if not c["passed"]})
    return kinds


def per_prompt(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per prompt: attempts, pass rate per check kind, jobs approved, retries per approved image."""
    by_prompt: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen = set()
    for r in outcomes:
        if r["image_id"] not in seen:
            seen.add(r["image_id"])
            by_prompt[r["prompt_id"] or "-"].append(r)
    kinds = sorted(
        {check_kind(c["name"]) for r in outcomes for c in edit_checks(r)}, key=lambda k: (k.startswith("critic:"), k)
    )
    flagged = any(c["name"].startswith(FLAG_PREFIX) for r in outcomes for c in r["checks"] or [])
    table = []
    for prompt, rows in sorted(by_prompt.items()):
        scored = [r for r in rows if r["verdict"] is not None]
        approved = [r for r in rows if r["decision"] == "approved"]
        entry: dict[str, Any] = {
            "prompt": prompt,
            "category": rows[0]["category"],
            "attempts": len(rows),
            "jobs": len({r["job_key"] or r["image_id"] for r in rows}),
            "identity pass": sum(r["verdict"] == "pass" for r in scored) / len(scored) if scored else None,
        }
        for kind in kinds:
            # an attempt with two preservation measures counts once: passed when both did
            per_image = [
                all(c["passed"] for c in edit_checks(r) if check_kind(c["name"]) == kind)
                for r in rows
                if any(check_kind(c["name"]) == kind for c in edit_checks(r))
            ]
            entry[f"{kind} pass"] = sum(per_image) / len(per_image) if per_image else None
        if flagged:  # shown, deciding nothing unless review.auto_reject lists the flag
            assessed = [r for r in rows if any(c["name"].startswith(FLAG_PREFIX) for c in r["checks"] or [])]
            raised = [r for r in assessed if any(_raised_flag(c) for c in r["checks"])]
            entry["flagged share"] = len(raised) / len(assessed) if assessed else None
        entry["approved"] = len(approved)
        entry["retries per approved"] = sum((r["attempt"] or 0) for r in approved) / len(approved) if approved else None
        table.append(entry)
    return table


def _raised_flag(check: dict[str, Any]) -> bool:
    return check["name"].startswith(FLAG_PREFIX) and not check["passed"]


def failure_examples(root: Path, outcomes: list[dict[str, Any]], out: Path) -> list[tuple[Path, str]]:
    """One grid per failure kind: up to :data:`EXAMPLES_PER_KIND` failed attempts with prompt, seed and attempt."""
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in outcomes:
        for kind in failure_kinds(r):
            by_kind[kind].append(r)
    grids = []
    for kind, rows in sorted(by_kind.items()):
        tiles = [
            (root / r["path"], f"{r['prompt_id']} s{r['seed']} a{r['attempt'] or 0} {r['image_id'][:8]}")
            for r in rows[:EXAMPLES_PER_KIND]
        ]
        name = "".join(ch if ch.isalnum() else "-" for ch in kind)
        grids.append((image_grid(tiles, out / f"failed-{name}.png"), f"failed {kind}: {len(rows)} attempt(s)"))
    return grids


def enrichment_section(root: Path, catalog: Catalog, character: str, out: Path) -> Section | None:
    """Verified enrichment per prompt, with failure examples; None when the character has no edits."""
    outcomes = catalog.edit_outcomes(character)
    if not outcomes:
        return None
    return Section(
        "Enrichment per prompt: checks, retries, failures",
        [
            "Pass rates over every attempt the editor made (a failed attempt is retried with the next seed, then a "
            "lower strength); retries per approved image count the attempts before the one that was approved. "
            "'landed pass' is the share of an aimed prompt's attempts that landed in the bin it aims at; 'flagged "
            "share' the share carrying a quality flag. Check kinds: docs/verification.md, docs/coverage.md."
        ],
        failure_examples(root, outcomes, out),
        per_prompt(outcomes),
    )


def review_section(catalog: Catalog, character: str, settings: ReviewSettings) -> Section | None:
    """Who decided each gate's candidates, and how often people agreed with the policy."""
    table = []
    for stage in REVIEW_STAGES:
        s = gate.Gate(catalog, character, stage, settings).review_stats()
        if not s.candidates:
            continue
        table.append(
            {
                "gate": s.gate_id,
                "candidates": s.candidates,
                "by policy": s.by_policy,
                "by people": s.by_people,
                "pending": s.pending,
                "policy share": s.auto_share,
                "people agree with policy": s.agreement,
                "compared": s.compared,
                "policy overridden": s.overridden,
                "people/policy": ", ".join(f"{k} {v}" for k, v in sorted(s.confusion.items())) or None,
            }
        )
    if not table:
        return None
    return Section(
        "Review: policy and people",
        [
            "The policy approves identity passes at least review.auto_margin above their threshold whose checks all "
            "passed. People see the uncertain candidates first (identity near the threshold, failed or borderline "
            "checks); 'people/policy' counts people's decisions against what the policy would have decided."
        ],
        table=table,
    )
