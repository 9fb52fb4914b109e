"""The review gate, in one place: its rules (:mod:`.rules`: the policy, triage, a reviewer's answer) and the gate of
one character and stage as an object (:class:`Gate`: candidates, decisions, the queue, the figures, the rounds a
run waits in). The flow holds a ``Gate`` and only suspends, resumes and logs (``flows/gate.py``)."""

from flenwheel.core.errors import AwaitingReview
from flenwheel.gate.core import Decision, Gate
from flenwheel.gate.rules import (
    DECISION_WORDS,
    STAGE_ORIGINS,
    Answer,
    GateStatus,
    ReviewError,
    ReviewStats,
    Round,
    Triage,
    borderline_check,
    gate_id,
    pause_key,
    policy_decision,
    read_decisions_csv,
    triage,
)

__all__ = [
    "DECISION_WORDS", "STAGE_ORIGINS", "Answer", "AwaitingReview", "Decision", "Gate", "GateStatus", "ReviewError",
    "ReviewStats", "Round", "Triage", "borderline_check", "gate_id", "pause_key", "policy_decision",
    "read_decisions_csv", "triage",
]  # fmt: skip
