"""The review gate inside a flow: wait for people without holding a process, and keep their answer.

* ``auto`` — the identity policy decides now (``source=auto``).
* ``fiftyone`` — candidates are pushed to the character's FiftyOne dataset and tags are pulled back.
* ``cli`` — decisions come from ``flenwheel review decide``.

With ``review.auto_clear`` the policy first decides the clear cases of the last two (:func:`flenwheel.gate.triage`).

When candidates are still undecided: a deployment run **suspends** (no process, no GPU held) under the pause
key of a new round recorded in the catalog (:mod:`flenwheel.gate`), and is resumed from the Prefect UI; a
local run with ``wait`` **pauses** in-process; any other local run stops with "awaiting review" and carries on
when run again, because everything before the gate is already in the catalog. A resumed run re-executes from
the top: at the gate it reads the stored answer of its open round and applies it to that round's candidates.
"""

from __future__ import annotations

import logging

from flenwheel.review.service import app_url
from flenwheel.tasks.review import sync_review
from prefect.context import get_run_context
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput

from flenwheel import gate
from flenwheel.catalog import AwaitingReview, Catalog
from flenwheel.types import ReviewMode
from flenwheel.workspace import Workspace

log = logging.getLogger("flenwheel.flows.gate")


class GateInput(RunInput):
    """What the reviewer says when resuming the run from the Prefect UI."""

    approve_rest: bool = False
    auto_decide_rest: bool = False
    reviewer: str = ""
    note: str = ""

    def answer(self) -> gate.Answer:
        return gate.Answer(self.approve_rest, self.auto_decide_rest, self.reviewer.strip(), self.note.strip())


def gate_description(ws: Workspace, status: gate.GateStatus, waiting_on: int, character: str, stage: str) -> str:
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
    ws: Workspace,
    catalog: Catalog,
    character: str,
    stage: str,
    mode: ReviewMode,
    run_id: str,
    wait: bool = False,
    timeout_s: int = 24 * 3600,
) -> gate.GateStatus:
    """Bring the gate to a decision; raises :class:`AwaitingReview` when a local run must stop and wait."""
    root, configs = str(ws.root), str(ws.configs_dir)
    margin = ws.settings.review.auto_margin
    if mode == "auto":
        gate.auto_review(catalog, character, stage, margin, run_id)
        return _passed(catalog, character, stage)
    if ws.settings.review.auto_clear:  # people get only the uncertain cases
        approved, rejected = gate.auto_decide_clear(catalog, character, stage, ws.settings.review, run_id)
        if approved or rejected:
            log.info(f"gate {character}:{stage}: clear cases decided by the policy: {approved} approved, "
                     f"{rejected} rejected")  # fmt: skip
    if mode == "fiftyone":
        sync_review(root, configs, character, run_id)
    ctx = get_run_context()
    flow_run_id = str(ctx.flow_run.id)
    suspend = ctx.flow_run.deployment_id is not None
    for rnd in gate.open_rounds(catalog, flow_run_id, character, stage):
        # This run stopped here before and was resumed: the stored answer comes back at once under the round's key.
        answer = _wait(rnd.pause_key, ws, catalog, character, stage, suspend, timeout_s, len(rnd.pending_ids))
        _apply(ws, catalog, character, stage, mode, rnd, answer, margin, run_id)
    waiting_on = gate.unasked(catalog, flow_run_id, character, stage)
    if not waiting_on:
        return _passed(catalog, character, stage)
    status = gate.status(catalog, character, stage)
    where = f"review them in FiftyOne at {app_url(ws, character)} or with `flenwheel review decide {character}`"
    if not suspend and not wait:
        raise AwaitingReview(
            f"awaiting review: {status.pending} candidate(s) in gate {status.gate_id}; {where}, then run again"
        )
    rnd = gate.open_round(catalog, flow_run_id, character, stage, waiting_on, run_id)
    log.info(f"gate {status.gate_id} waits on {len(waiting_on)} candidate(s); {where}, then resume this run")
    answer = _wait(rnd.pause_key, ws, catalog, character, stage, suspend, timeout_s, len(waiting_on))
    _apply(ws, catalog, character, stage, mode, rnd, answer, margin, run_id)
    return _passed(catalog, character, stage)


def _wait(
    key: str, ws: Workspace, catalog: Catalog, character: str, stage: str, suspend: bool, timeout_s: int,
    waiting_on: int,
) -> gate.Answer:  # fmt: skip
    """Suspend (deployment runs: the process exits and the run re-executes on resume) or pause in-process."""
    status = gate.status(catalog, character, stage)
    form = GateInput.with_initial_data(description=gate_description(ws, status, waiting_on, character, stage))
    if suspend:
        answer = suspend_flow_run(wait_for_input=form, key=key, timeout=timeout_s)
    else:
        answer = pause_flow_run(wait_for_input=form, key=key, timeout=timeout_s, poll_interval=2)
    return answer.answer()


def _apply(
    ws: Workspace, catalog: Catalog, character: str, stage: str, mode: ReviewMode, rnd: gate.Round,
    answer: gate.Answer, margin: float, run_id: str,
) -> None:  # fmt: skip
    if mode == "fiftyone":  # tags set while the run waited count as people's decisions
        sync_review(str(ws.root), str(ws.configs_dir), character, run_id)
    counts = gate.apply_answer(catalog, character, stage, rnd, answer, margin, run_id)
    who = answer.reviewer or "the reviewer"
    log.info(
        f"gate {rnd.gate_id} resumed by {who}: of {counts['waited_on']} candidate(s) waited on, "
        f"{counts['decided_by_people']} were decided by people meanwhile and {counts['decided_on_resume']} "
        f"{'approved' if answer.approve_rest else 'by the policy' if answer.auto_decide_rest else 'more'} on resume"
    )


def _passed(catalog: Catalog, character: str, stage: str) -> gate.GateStatus:
    status = gate.status(catalog, character, stage)
    log.info(
        f"gate {status.gate_id}: {status.approved} approved, {status.rejected} rejected, {status.pending} pending "
        f"of {status.candidates} candidate(s)"
    )
    return status
