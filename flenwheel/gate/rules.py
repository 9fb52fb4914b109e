"""The review gate's rules, without the catalog: who decides what, how uncertain a candidate is, and the words of
a reviewer's answer. :class:`flenwheel.gate.Gate` applies them to a gate's candidates.

A gate is per character and stage: ``<character>:enrich`` holds the enrichment candidates (``edit`` and
``augment`` images), ``<character>:synthetic`` the generated ones. **The policy** (:func:`policy_decision`)
approves identity passes at least ``review.auto_margin`` above their threshold whose edit checks all passed and that
carry no quality flag ``review.auto_reject`` lists, and rejects the rest; other flags are shown, never decisive.
**Triage** (:func:`triage`) places each scored candidate between clear and uncertain (identity near its threshold,
failed or borderline edit checks), so people see the hardest first and, with ``review.auto_clear``, the policy
decides the clear cases before anyone is asked.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flenwheel.core.config import ReviewSettings
from flenwheel.core.errors import FlenwheelError
from flenwheel.core.types import REVIEW_STAGES

STAGE_ORIGINS: dict[str, tuple[str, ...]] = {"enrich": ("edit", "augment"), "synthetic": ("generate",)}
DECISION_WORDS = {"approve": "approved", "approved": "approved", "reject": "rejected", "rejected": "rejected"}


class ReviewError(FlenwheelError):
    """A review decision cannot be taken as asked."""


def gate_id(character: str, stage: str) -> str:
    if stage not in REVIEW_STAGES:
        raise ReviewError(f"unknown review stage {stage!r}: use {' or '.join(REVIEW_STAGES)}")
    return f"{character}:{stage}"


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


def rejecting_flags(c: dict[str, Any], auto_reject: Collection[str]) -> list[str]:
    """The candidate's quality flags that ``review.auto_reject`` lists (those reject; the others are only shown)."""
    return [f for f in c.get("flags") or [] if f in auto_reject]


def policy_decision(c: dict[str, Any], margin: float, auto_reject: Collection[str] = ()) -> tuple[str, str]:
    """What the auto policy decides for a scored candidate, and why: approve identity passes at least ``margin``
    above their threshold whose edit checks all passed (or that were not checked) and that carry none of the
    ``auto_reject`` quality flags; reject the rest."""
    failed = c.get("failed_checks") or []
    flagged = rejecting_flags(c, auto_reject)
    ok = c["verdict"] == "pass" and c["similarity"] >= c["threshold"] + margin and not failed and not flagged
    detail = (
        f", similarity {c['similarity']:.3f} vs threshold {c['threshold']:.3f} + {margin}"
        if c["similarity"] is not None
        else ""
    )
    checks = f"; failed checks: {', '.join(failed)}" if failed else ""
    flags = f"; flagged: {', '.join(flagged)} (review.auto_reject)" if flagged else ""
    return ("approved" if ok else "rejected"), f"{c['verdict']}{detail}{checks}{flags}"


@dataclass(frozen=True)
class Triage:
    """How much a candidate needs a person: ``uncertainty`` 0 (clear) .. 1 (on the fence), and why."""

    image_id: str
    uncertainty: float
    clear: str | None  # the policy's decision when the case is clear, else None
    why: str


def triage(c: dict[str, Any], settings: ReviewSettings) -> Triage | None:
    """Place a scored candidate between clear and uncertain (None when it has no identity score yet).

    Identity within ``clear_band`` of its threshold is uncertain, the more the closer; a failed edit check is
    fully uncertain (the verifier may be wrong about an edit that keeps the person), and a check within
    ``check_band`` of its threshold is borderline (``why`` names it with its score and threshold). A clear
    identity failure is a clear rejection whatever the checks say, and so is a quality flag ``review.auto_reject``
    lists; other flags are named in ``why`` and change nothing. A clear case is decided as the policy would
    decide it.
    """
    if c["verdict"] is None:
        return None
    sim, thr = c["similarity"], c["threshold"]
    if c["verdict"] != "pass" and (sim is None or sim <= thr - settings.clear_band):
        why = "no usable face" if sim is None else f"similarity {sim:.3f} far below threshold {thr:.3f}"
        return Triage(c["image_id"], 0.0, "rejected", why)
    flagged = rejecting_flags(c, settings.auto_reject)
    if flagged:  # a flag the settings reject on is the user's own rule: a clear case
        return Triage(c["image_id"], 0.0, "rejected", f"flagged {', '.join(flagged)} (review.auto_reject)")
    shown = [f for f in c.get("flags") or [] if f not in settings.auto_reject]
    u_identity = max(0.0, 1.0 - abs(sim - thr) / settings.clear_band) if sim is not None else 0.0
    failed = c.get("failed_checks") or []
    margin = c.get("check_margin")
    u_checks = 1.0 if failed else (max(0.0, 1.0 - margin / settings.check_band) if margin is not None else 0.0)
    u = round(max(u_identity, u_checks), 4)
    reasons = []
    if u_identity > 0:
        reasons.append(f"similarity {sim:.3f} near threshold {thr:.3f}")
    if failed:
        reasons.append(f"failed checks: {', '.join(failed)}")
    elif u_checks > 0:
        reasons.append(borderline_check(c.get("closest_check"), margin))
    flags = f"; flags: {', '.join(shown)}" if shown else ""  # shown to people, deciding nothing
    if u > 0:
        return Triage(c["image_id"], u, None, "; ".join(reasons) + flags)
    decision, why = policy_decision(c, settings.auto_margin, settings.auto_reject)
    return Triage(c["image_id"], 0.0, decision, f"clear: {why}{flags}")


def borderline_check(closest: dict[str, Any] | None, margin: float) -> str:
    """Why a check is borderline, naming it: ``check preserve_ssim 0.9112 within 1.2% of its threshold 0.9``
    (``closest``: the name, score and threshold of the check ``check_margin`` measured)."""
    if not closest:  # a candidate read without it
        return f"a check within {margin:.1%} of its threshold"
    return (
        f"check {closest['name']} {closest['score']:.4g} within {margin:.1%} of its threshold "
        f"{closest['threshold']:.4g}"
    )


@dataclass(frozen=True)
class ReviewStats:
    """Who decided a gate's candidates and how people's decisions compare with the policy's."""

    gate_id: str
    candidates: int
    by_policy: int  # current decision from the policy (auto review, clear cases, auto on resume)
    by_people: int  # current decision from a person (FiftyOne, CLI, approve on resume)
    pending: int
    compared: int  # people's decisions on scored candidates, compared with what the policy says
    agreed: int
    overridden: int  # policy decisions a person changed afterwards
    confusion: dict[str, int]  # "people/policy" -> count, e.g. "approved/rejected"

    @property
    def auto_share(self) -> float | None:
        decided = self.by_policy + self.by_people
        return self.by_policy / decided if decided else None

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


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


@dataclass(frozen=True)
class Answer:
    """What a reviewer says when letting a waiting run go on."""

    approve_rest: bool = False  # approve every candidate of the round still pending
    auto_decide_rest: bool = False  # let the identity policy decide them (approve_rest wins when both are set)
    reviewer: str = ""
    note: str = ""


@dataclass(frozen=True)
class Round:
    flow_run_id: str
    gate_id: str
    number: int
    pause_key: str
    pending_ids: tuple[str, ...]


def pause_key(gate: str, number: int) -> str:
    """The key a run waits under in round ``number`` of ``gate``: stable across re-executions of the run."""
    return f"review-{hashlib.sha256(gate.encode()).hexdigest()[:12]}-round-{number}"
