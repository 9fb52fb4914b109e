"""The review gate inside a flow: wait for people without holding a process, and keep their answer.

* ``auto`` — the identity policy decides now (``source=auto``).
* ``fiftyone`` — candidates are pushed to the character's FiftyOne dataset and tags are pulled back.
* ``cli`` — decisions come from ``flenwheel review decide``.

With ``review.auto_clear`` the policy first decides the clear cases of the last two (:func:`flenwheel.gate.triage`).

The gate's rules, candidates and rounds are the engine's :class:`flenwheel.gate.Gate`; this module only suspends,
resumes and logs.

When candidates are still undecided: a deployment run **suspends** (no process, no GPU held) under the pause
key of a new round recorded in the catalog (:mod:`flenwheel.gate`), and is resumed from the Prefect UI; a
local run with ``wait`` **pauses** in-process; any other local run stops with "awaiting review" and carries on
when run again, because everything before the gate is already in the catalog. A resumed run re-executes from
the top: at the gate it reads the stored answer of its open round and applies it to that round's candidates.
"""

from __future__ import annotations

import logging

from prefect.context import get_run_context
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput

from flenwheel.core.errors import AwaitingReview
from flenwheel.core.types import ReviewMode
from flenwheel.gate import Answer, Gate, GateStatus, Round
from flenwheel.review.service import app_url
from flenwheel.store.workspace import RunContext, Workspace
from flenwheel.tasks.review import sync_review

log = logging.getLogger("flenwheel.flows.gate")


class GateInput(RunInput):
    """What the reviewer says when resuming the run from the Prefect UI."""

    approve_rest: bool = False
    auto_decide_rest: bool = False
    reviewer: str = ""
    note: str = ""

    def answer(self) -> Answer:
        return Answer(self.approve_rest, self.auto_decide_rest, self.reviewer.strip(), self.note.strip())


def gate_description(ws: Workspace, status: GateStatus, waiting_on: int, character: str, stage: str) -> str:
    return (
        f"## Review needed: {status.gate_id}\n\n"
        f"| candidates | approved | rejected | pending | this run waits on |\n|---|---|---|---|---|\n"
        f"| {status.candidates} | {status.approved} | {status.rejected} | {status.pending} | {waiting_on} |\n\n"
        f"Open the FiftyOne App at {app_url(ws, character)} (`flenwheel review serve {character}`), tag samples "
        f"`approved` or `rejected`, then resume this run. Or decide from a shell: "
        f"`flenwheel review decide {character} --stage {stage} --approve ID... --reject ID...`.\n\n"
        "When resuming, *approve_rest* approves whatever this run waits on that is still pending, "
        "*auto_decide_rest* lets the identity policy decide it, and neither leaves it pending (left out of the "
        "dataset until decided). *reviewer* and *note* are recorded with the decisions."
    )


def run_gate(
    ctx: RunContext, stage: str, mode: ReviewMode, wait: bool = False, timeout_s: int = 24 * 3600
) -> GateStatus:
    """Bring the gate to a decision; raises :class:`AwaitingReview` when a local run must stop and wait."""
    ws = ctx.ws
    the_gate = Gate(ctx.catalog(), ctx.character, stage, ws.settings.review)
    if mode == "auto":
        the_gate.auto_review(ctx.run_id)
        return _passed(the_gate)
    if ws.settings.review.auto_clear:  # people get only the uncertain cases
        approved, rejected = the_gate.auto_decide_clear(ctx.run_id)
        if approved or rejected:
            log.info(f"gate {the_gate.id}: clear cases decided by the policy: {approved} approved, {rejected} rejected")
    if mode == "fiftyone":
        sync_review(ctx)
    run = get_run_context()
    flow_run_id = str(run.flow_run.id)
    suspend = run.flow_run.deployment_id is not None
    for rnd in the_gate.open_rounds(flow_run_id):
        # This run stopped here before and was resumed: the stored answer comes back at once under the round's key.
        answer = _wait(ctx, the_gate, rnd.pause_key, suspend, timeout_s, len(rnd.pending_ids))
        _apply(ctx, the_gate, mode, rnd, answer)
    waiting_on = the_gate.unasked(flow_run_id)
    if not waiting_on:
        return _passed(the_gate)
    status = the_gate.status()
    where = f"review them in FiftyOne at {app_url(ws, ctx.character)} or with `flenwheel review decide {ctx.character}`"
    if not suspend and not wait:
        raise AwaitingReview(
            f"awaiting review: {status.pending} candidate(s) in gate {status.gate_id}; {where}, then run again"
        )
    rnd = the_gate.open_round(flow_run_id, waiting_on, ctx.run_id)
    log.info(f"gate {status.gate_id} waits on {len(waiting_on)} candidate(s); {where}, then resume this run")
    answer = _wait(ctx, the_gate, rnd.pause_key, suspend, timeout_s, len(waiting_on))
    _apply(ctx, the_gate, mode, rnd, answer)
    return _passed(the_gate)


def _wait(ctx: RunContext, the_gate: Gate, key: str, suspend: bool, timeout_s: int, waiting_on: int) -> Answer:
    """Suspend (deployment runs: the process exits and the run re-executes on resume) or pause in-process."""
    description = gate_description(ctx.ws, the_gate.status(), waiting_on, ctx.character, the_gate.stage)
    form = GateInput.with_initial_data(description=description)
    if suspend:
        answer = suspend_flow_run(wait_for_input=form, key=key, timeout=timeout_s)
    else:
        answer = pause_flow_run(wait_for_input=form, key=key, timeout=timeout_s, poll_interval=2)
    return answer.answer()


def _apply(ctx: RunContext, the_gate: Gate, mode: ReviewMode, rnd: Round, answer: Answer) -> None:
    if mode == "fiftyone":  # tags set while the run waited count as people's decisions
        sync_review(ctx)
    counts = the_gate.apply_answer(rnd, answer, ctx.run_id)
    who = answer.reviewer or "the reviewer"
    how = "approved" if answer.approve_rest else "by the policy" if answer.auto_decide_rest else "more"
    log.info(
        f"gate {rnd.gate_id} resumed by {who}: of {counts['waited_on']} candidate(s) waited on, "
        f"{counts['decided_by_people']} were decided by people meanwhile and {counts['decided_on_resume']} {how} "
        "on resume"
    )


def _passed(the_gate: Gate) -> GateStatus:
    status = the_gate.status()
    log.info(
        f"gate {status.gate_id}: {status.approved} approved, {status.rejected} rejected, {status.pending} pending "
        f"of {status.candidates} candidate(s)"
    )
    return status
