"""The review gate: which candidates wait, who decides them (people, the auto policy), and the rounds a run waits.

A gate is per character and stage: ``<character>:enrich`` holds the enrichment candidates (``edit`` and
``augment`` images), ``<character>:synthetic`` the generated ones. Decisions land in ``reviews`` (history kept,
``review_state`` is the latest); FiftyOne tags arrive through :mod:`flenwheel.review`. Source photos count as
approved unless a review rejects them.

**Rounds.** When a flow run stops at a gate it opens a *round*: the candidates pending at that moment and a
pause key derived from the round number. The reviewer then decides some candidates (FiftyOne, the CLI) and
resumes the run with an answer (leave the rest pending, approve the rest, or let the policy decide the rest).
Prefect re-executes a resumed run from the top; the run finds its open round in the catalog, reads the stored
answer under the round's key and applies it to exactly the candidates that round waited on — so deciding some
candidates while the run waits never makes the answer get lost. Only candidates no round of this run has asked
about yet can stop the run again. Orchestration (suspend, pause) is in ``flows/gate.py``.

**Review where it matters.** :func:`triage` places each scored candidate between clear and uncertain
(identity near its threshold, failed or borderline edit checks); people get the queue hardest first
(:func:`review_queue`, the FiftyOne field ``uncertainty``), and with ``review.auto_clear`` the policy decides the
clear cases before anyone is asked. :func:`review_stats` reports the share the policy decided and how people's
decisions agreed with what the policy would have said.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flenwheel.catalog import Catalog
from flenwheel.config import ReviewSettings
from flenwheel.errors import FlenwheelError
from flenwheel.types import REVIEW_STAGES

STAGE_ORIGINS: dict[str, tuple[str, ...]] = {"enrich": ("edit", "augment"), "synthetic": ("generate",)}
DECISION_WORDS = {"approve": "approved", "approved": "approved", "reject": "rejected", "rejected": "rejected"}


class ReviewError(FlenwheelError):
    """A review decision cannot be taken as asked."""


def gate_id(character: str, stage: str) -> str:
    if stage not in REVIEW_STAGES:
        raise ReviewError(f"unknown review stage {stage!r}: use {' or '.join(REVIEW_STAGES)}")
    return f"{character}:{stage}"


def candidates(catalog: Catalog, character: str, stage: str) -> list[dict[str, Any]]:
    """The stage's candidates with their latest identity score and current decision."""
    return catalog.gate_candidates(character, gate_id(character, stage), STAGE_ORIGINS[stage])


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


def pending_ids(catalog: Catalog, character: str, stage: str) -> list[str]:
    return [c["image_id"] for c in candidates(catalog, character, stage) if c["decision"] is None]


def policy_decision(c: dict[str, Any], margin: float) -> tuple[str, str]:
    """What the auto policy decides for a scored candidate, and why: approve identity passes at least ``margin``
    above their threshold whose edit checks all passed (or that were not checked); reject the rest."""
    failed = c.get("failed_checks") or []
    ok = c["verdict"] == "pass" and c["similarity"] >= c["threshold"] + margin and not failed
    detail = (
        f", similarity {c['similarity']:.3f} vs threshold {c['threshold']:.3f} + {margin}"
        if c["similarity"] is not None
        else ""
    )
    checks = f"; failed checks: {', '.join(failed)}" if failed else ""
    return ("approved" if ok else "rejected"), f"{c['verdict']}{detail}{checks}"


def auto_review(
    catalog: Catalog, character: str, stage: str, margin: float, run_id: str | None,
    only: Collection[str] | None = None, context: str = "auto",
) -> tuple[int, int]:  # fmt: skip
    """Let the policy (:func:`policy_decision`) decide the undecided scored candidates.

    Only undecided candidates are touched (a human decision is never overridden), only those in ``only`` when
    given; unscored ones wait. ``context`` starts each note (e.g. who let the policy decide on resume).
    Returns the (approved, rejected) counts written now.
    """
    decided = []
    for c in candidates(catalog, character, stage):
        if c["decision"] is not None or c["verdict"] is None or (only is not None and c["image_id"] not in only):
            continue
        decision, why = policy_decision(c, margin)
        decided.append((c["image_id"], decision, f"{context}: {why}"))
    return _record_policy(catalog, gate_id(character, stage), decided, run_id)


def _record_policy(
    catalog: Catalog, gate: str, decided: Sequence[tuple[str, str, str]], run_id: str | None
) -> tuple[int, int]:
    """Write the policy's (image id, decision, note) as ``auto`` reviews; returns the (approved, rejected) counts."""
    catalog.add_reviews([{"image_id": i, "gate_id": gate, "decision": d, "source": "auto", "reviewer": "auto",
                          "note": note} for i, d, note in decided], run_id)  # fmt: skip
    return sum(d == "approved" for _, d, _ in decided), sum(d == "rejected" for _, d, _ in decided)


# --------------------------------------------------------------------------- review where it matters


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
    identity failure is a clear rejection whatever the checks say; a clear case is decided as the policy would
    decide it.
    """
    if c["verdict"] is None:
        return None
    sim, thr = c["similarity"], c["threshold"]
    if c["verdict"] != "pass" and (sim is None or sim <= thr - settings.clear_band):
        why = "no usable face" if sim is None else f"similarity {sim:.3f} far below threshold {thr:.3f}"
        return Triage(c["image_id"], 0.0, "rejected", why)
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
    if u > 0:
        return Triage(c["image_id"], u, None, "; ".join(reasons))
    decision, why = policy_decision(c, settings.auto_margin)
    return Triage(c["image_id"], 0.0, decision, f"clear: {why}")


def borderline_check(closest: dict[str, Any] | None, margin: float) -> str:
    """Why a check is borderline, naming it: ``check preserve_ssim 0.9112 within 1.2% of its threshold 0.9``
    (``closest``: the name, score and threshold of the check ``check_margin`` measured)."""
    if not closest:  # a candidate read without it
        return f"a check within {margin:.1%} of its threshold"
    return (f"check {closest['name']} {closest['score']:.4g} within {margin:.1%} of its threshold "
            f"{closest['threshold']:.4g}")  # fmt: skip


def review_queue(catalog: Catalog, character: str, stage: str, settings: ReviewSettings) -> list[dict[str, Any]]:
    """Pending candidates in the order people should see them: most uncertain first, unscored last."""
    rows = []
    for c in candidates(catalog, character, stage):
        if c["decision"] is not None:
            continue
        t = triage(c, settings)
        rows.append({**c, "uncertainty": None if t is None else t.uncertainty, "why": "not scored yet" if t is None
                     else t.why})  # fmt: skip
    return sorted(rows, key=lambda r: (r["uncertainty"] is None, -(r["uncertainty"] or 0.0), r["created_at"]))


def auto_decide_clear(
    catalog: Catalog, character: str, stage: str, settings: ReviewSettings, run_id: str | None
) -> tuple[int, int]:
    """The policy decides the clear pending cases (source auto, note ``clear: ...``) so people see only the
    uncertain ones; returns the (approved, rejected) counts written."""
    decided = []
    for c in candidates(catalog, character, stage):
        t = triage(c, settings) if c["decision"] is None else None
        if t is not None and t.clear is not None:
            decided.append((c["image_id"], t.clear, t.why))
    return _record_policy(catalog, gate_id(character, stage), decided, run_id)


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


def review_stats(catalog: Catalog, character: str, stage: str, settings: ReviewSettings) -> ReviewStats:
    rows = candidates(catalog, character, stage)
    history = catalog.decision_history(gate_id(character, stage))
    by_policy = by_people = compared = agreed = overridden = 0
    confusion: dict[str, int] = {}
    for c in rows:
        steps = history.get(c["image_id"], [])
        if not steps:
            continue
        source, decision = steps[-1]
        if source == "auto":
            by_policy += 1
            continue
        by_people += 1
        overridden += any(s == "auto" for s, _ in steps[:-1])
        if c["verdict"] is not None:
            policy, _ = policy_decision(c, settings.auto_margin)
            compared += 1
            agreed += policy == decision
            key = f"{decision}/{policy}"
            confusion[key] = confusion.get(key, 0) + 1
    pending = sum(c["decision"] is None for c in rows)
    return ReviewStats(gate_id(character, stage), len(rows), by_policy, by_people, pending, compared, agreed,
                       overridden, confusion)  # fmt: skip


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
        rows.append({"image_id": matches[0], "gate_id": gate, "decision": decision, "source": source,
                     "reviewer": reviewer, "note": note})  # fmt: skip
    return catalog.add_reviews(rows, run_id)


# --------------------------------------------------------------------------- rounds


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


def open_rounds(catalog: Catalog, flow_run_id: str, character: str, stage: str) -> list[Round]:
    """Rounds of this run at this gate that have no answer yet (the run stopped there and was resumed since)."""
    return [_round(r) for r in catalog.gate_rounds(flow_run_id, gate_id(character, stage)) if r["resumed_at"] is None]


def unasked(catalog: Catalog, flow_run_id: str, character: str, stage: str) -> list[str]:
    """Pending candidates that no answered round of this run has waited on: only these may stop the run."""
    asked = {i for r in catalog.gate_rounds(flow_run_id, gate_id(character, stage)) for i in r["pending_ids"]}
    return [i for i in pending_ids(catalog, character, stage) if i not in asked]


def open_round(
    catalog: Catalog, flow_run_id: str, character: str, stage: str, waiting_on: Sequence[str], run_id: str | None
) -> Round:
    """Record that the run stops at the gate now, waiting on ``waiting_on``."""
    gate = gate_id(character, stage)
    number = len(catalog.gate_rounds(flow_run_id, gate)) + 1
    key = pause_key(gate, number)
    catalog.open_gate_round(flow_run_id, gate, number, key, list(waiting_on), run_id)
    return Round(flow_run_id, gate, number, key, tuple(waiting_on))


def apply_answer(
    catalog: Catalog, character: str, stage: str, rnd: Round, answer: Answer, margin: float, run_id: str | None
) -> dict[str, int]:
    """Apply the reviewer's answer to the round's candidates still pending; record it with the round."""
    still = set(pending_ids(catalog, character, stage)) & set(rnd.pending_ids)
    decided_by_people = len(rnd.pending_ids) - len(still)
    who = answer.reviewer or None
    policy = 0
    if answer.approve_rest and still:
        note = answer.note or "approved when resuming the run"
        rows = [{"image_id": i, "gate_id": rnd.gate_id, "decision": "approved", "source": "prefect",
                 "reviewer": who, "note": note} for i in sorted(still)]  # fmt: skip
        policy = catalog.add_reviews(rows, run_id)
    elif answer.auto_decide_rest and still:
        context = f"auto on resume by {who or 'the reviewer'}" + (f" ({answer.note})" if answer.note else "")
        policy = sum(auto_review(catalog, character, stage, margin, run_id, only=still, context=context))
    catalog.close_gate_round(
        rnd.flow_run_id, rnd.gate_id, rnd.number, reviewer=who, note=answer.note or None,
        auto_decide_rest=answer.auto_decide_rest, approve_rest=answer.approve_rest,
        decided_by_people=decided_by_people, decided_by_policy=policy,
    )  # fmt: skip
    return {"waited_on": len(rnd.pending_ids), "decided_by_people": decided_by_people, "decided_on_resume": policy}


def _round(row: dict[str, Any]) -> Round:
    return Round(row["flow_run_id"], row["gate_id"], row["round"], row["pause_key"], tuple(row["pending_ids"]))
