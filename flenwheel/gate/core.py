"""One review gate of one character and stage, held as an object: its candidates, their decisions, the queue
people see, the figures of who decided what, and the rounds a flow run waits in.

Decisions land in ``reviews`` (history kept, ``review_state`` is the latest); FiftyOne tags arrive through
:mod:`flenwheel.review`. Source photos count as approved unless a review rejects them.

**Rounds.** When a flow run stops at a gate it opens a *round*: the candidates pending at that moment and a
pause key derived from the round number. The reviewer then decides some candidates (FiftyOne, the CLI) and
resumes the run with an answer (leave the rest pending, approve the rest, or let the policy decide the rest).
Prefect re-executes a resumed run from the top; the run finds its open round in the catalog, reads the stored
answer under the round's key and applies it to exactly the candidates that round waited on, so deciding some
candidates while the run waits never makes the answer get lost. Only candidates no round of this run has asked
about yet can stop the run again. Suspending and resuming are the flow's (``flows/gate.py``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from flenwheel.catalog import Catalog
from flenwheel.core.config import ReviewSettings
from flenwheel.gate.rules import (
    STAGE_ORIGINS,
    Answer,
    GateStatus,
    ReviewError,
    ReviewStats,
    Round,
    gate_id,
    pause_key,
    policy_decision,
    triage,
)

Decision = tuple[str, str, str | None]  # (image id or a unique prefix of it, approved | rejected, note)


@dataclass(frozen=True)
class Gate:
    """The gate ``<character>:<stage>`` under the project's review settings."""

    catalog: Catalog
    character: str
    stage: str
    review: ReviewSettings = field(default_factory=ReviewSettings)

    @property
    def id(self) -> str:
        return gate_id(self.character, self.stage)

    # ------------------------------------------------------------------ candidates and decisions

    def candidates(self) -> list[dict[str, Any]]:
        """The stage's candidates with their latest identity score, checks and current decision."""
        return self.catalog.gate_candidates(self.character, self.id, STAGE_ORIGINS[self.stage])

    def status(self) -> GateStatus:
        rows = self.candidates()
        pending = [r for r in rows if r["decision"] is None]
        approved = sum(r["decision"] == "approved" for r in rows)
        rejected = sum(r["decision"] == "rejected" for r in rows)
        unscored = sum(r["verdict"] is None for r in pending)
        return GateStatus(self.id, len(rows), approved, rejected, len(pending), unscored)

    def pending_ids(self) -> list[str]:
        return [c["image_id"] for c in self.candidates() if c["decision"] is None]

    def decide(self, decisions: Sequence[Decision], source: str, reviewer: str | None, run_id: str | None) -> int:
        """Record decisions for candidates of the gate; returns how many changed.

        Every id is checked before anything is written: one unknown id and nothing is recorded.
        """
        by_id = {c["image_id"]: c for c in self.candidates()}
        rows = []
        for ref, decision, note in decisions:
            matches = [i for i in by_id if i.startswith(ref.lower())] if len(ref) >= 6 else []
            if len(matches) != 1:
                why = "is ambiguous" if matches else f"is not a candidate of gate {self.id}"
                raise ReviewError(f"image {ref} {why}; nothing was recorded")
            rows.append(
                {
                    "image_id": matches[0],
                    "gate_id": self.id,
                    "decision": decision,
                    "source": source,
                    "reviewer": reviewer,
                    "note": note,
                }
            )
        return self.catalog.add_reviews(rows, run_id)

    # ------------------------------------------------------------------ the policy

    def auto_review(
        self, run_id: str | None, only: Collection[str] | None = None, context: str = "auto"
    ) -> tuple[int, int]:
        """Let the policy (:func:`~flenwheel.gate.rules.policy_decision`) decide the undecided scored candidates.

        Only undecided candidates are touched (a human decision is never overridden), only those in ``only`` when
        given; unscored ones wait. ``context`` starts each note (e.g. who let the policy decide on resume).
        Returns the (approved, rejected) counts written now.
        """
        decided = []
        for c in self.candidates():
            if c["decision"] is not None or c["verdict"] is None or (only is not None and c["image_id"] not in only):
                continue
            decision, why = policy_decision(c, self.review.auto_margin, self.review.auto_reject)
            decided.append((c["image_id"], decision, f"{context}: {why}"))
        return self._record_policy(decided, run_id)

    def auto_decide_clear(self, run_id: str | None) -> tuple[int, int]:
        """The policy decides the clear pending cases (source auto, note ``clear: ...``) so people see only the
        uncertain ones; returns the (approved, rejected) counts written."""
        decided = []
        for c in self.candidates():
            t = triage(c, self.review) if c["decision"] is None else None
            if t is not None and t.clear is not None:
                decided.append((c["image_id"], t.clear, t.why))
        return self._record_policy(decided, run_id)

    def _record_policy(self, decided: Sequence[tuple[str, str, str]], run_id: str | None) -> tuple[int, int]:
        """Write the policy's (image id, decision, note) as ``auto`` reviews; the (approved, rejected) counts."""
        rows = [
            {"image_id": i, "gate_id": self.id, "decision": d, "source": "auto", "reviewer": "auto", "note": note}
            for i, d, note in decided
        ]
        self.catalog.add_reviews(rows, run_id)
        return sum(d == "approved" for _, d, _ in decided), sum(d == "rejected" for _, d, _ in decided)

    # ------------------------------------------------------------------ review where it matters

    def review_queue(self) -> list[dict[str, Any]]:
        """Pending candidates in the order people should see them: most uncertain first, unscored last."""
        rows = []
        for c in self.candidates():
            if c["decision"] is not None:
                continue
            t = triage(c, self.review)
            why = "not scored yet" if t is None else t.why
            rows.append({**c, "uncertainty": None if t is None else t.uncertainty, "why": why})
        return sorted(rows, key=lambda r: (r["uncertainty"] is None, -(r["uncertainty"] or 0.0), r["created_at"]))

    def review_stats(self) -> ReviewStats:
        """Who decided the candidates, and how people's decisions agree with what the policy would have said."""
        rows = self.candidates()
        history = self.catalog.decision_history(self.id)
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
                policy, _ = policy_decision(c, self.review.auto_margin, self.review.auto_reject)
                compared += 1
                agreed += policy == decision
                key = f"{decision}/{policy}"
                confusion[key] = confusion.get(key, 0) + 1
        pending = sum(c["decision"] is None for c in rows)
        return ReviewStats(self.id, len(rows), by_policy, by_people, pending, compared, agreed, overridden, confusion)

    # ------------------------------------------------------------------ rounds

    def open_rounds(self, flow_run_id: str) -> list[Round]:
        """Rounds of this run at this gate that have no answer yet (the run stopped there and was resumed since)."""
        rows = self.catalog.gate_rounds(flow_run_id, self.id)
        return [_round(r) for r in rows if r["resumed_at"] is None]

    def unasked(self, flow_run_id: str) -> list[str]:
        """Pending candidates that no answered round of this run has waited on: only these may stop the run."""
        asked = {i for r in self.catalog.gate_rounds(flow_run_id, self.id) for i in r["pending_ids"]}
        return [i for i in self.pending_ids() if i not in asked]

    def open_round(self, flow_run_id: str, waiting_on: Sequence[str], run_id: str | None) -> Round:
        """Record that the run stops at the gate now, waiting on ``waiting_on``."""
        number = len(self.catalog.gate_rounds(flow_run_id, self.id)) + 1
        key = pause_key(self.id, number)
        self.catalog.open_gate_round(flow_run_id, self.id, number, key, list(waiting_on), run_id)
        return Round(flow_run_id, self.id, number, key, tuple(waiting_on))

    def apply_answer(self, rnd: Round, answer: Answer, run_id: str | None) -> dict[str, int]:
        """Apply the reviewer's answer to the round's candidates still pending; record it with the round."""
        still = set(self.pending_ids()) & set(rnd.pending_ids)
        decided_by_people = len(rnd.pending_ids) - len(still)
        who = answer.reviewer or None
        policy = 0
        if answer.approve_rest and still:
            note = answer.note or "approved when resuming the run"
            rows = [
                {
                    "image_id": i,
                    "gate_id": rnd.gate_id,
                    "decision": "approved",
                    "source": "prefect",
                    "reviewer": who,
                    "note": note,
                }
                for i in sorted(still)
            ]
            policy = self.catalog.add_reviews(rows, run_id)
        elif answer.auto_decide_rest and still:
            context = f"auto on resume by {who or 'the reviewer'}" + (f" ({answer.note})" if answer.note else "")
            policy = sum(self.auto_review(run_id, only=still, context=context))
        self.catalog.close_gate_round(
            rnd.flow_run_id,
            rnd.gate_id,
            rnd.number,
            reviewer=who,
            note=answer.note or None,
            auto_decide_rest=answer.auto_decide_rest,
            approve_rest=answer.approve_rest,
            decided_by_people=decided_by_people,
            decided_by_policy=policy,
        )
        return {"waited_on": len(rnd.pending_ids), "decided_by_people": decided_by_people, "decided_on_resume": policy}


def _round(row: dict[str, Any]) -> Round:
    return Round(row["flow_run_id"], row["gate_id"], row["round"], row["pause_key"], tuple(row["pending_ids"]))
