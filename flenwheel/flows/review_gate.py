"""The review gate inside a flow: auto policy, FiftyOne sync, and waiting for people without holding a process.

* ``auto`` — identity passes above a margin are approved, the rest rejected (``source=auto``).
* ``fiftyone`` — candidates are pushed to the character's FiftyOne dataset and tags are pulled back.
* ``cli`` — decisions come from ``flenwheel review decide``.

When candidates are still undecided: a deployment run **suspends** (no process, no GPU held) with a
deterministic key and a Markdown description, and is resumed from the Prefect UI; a local run with
``wait`` **pauses** in-process; any other local run stops with "awaiting review" and carries on when run
again, because everything before the gate is already in the catalog.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from prefect.context import get_run_context
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput

from flenwheel import decisions
from flenwheel.catalog import AwaitingReview, Catalog
from flenwheel.config import Workspace
from flenwheel.tasks.work import sync_review

ReviewMode = Literal["auto", "fiftyone", "cli"]


class GateInput(RunInput):
    """What the reviewer says when resuming the run from the Prefect UI."""

    auto_decide_rest: bool = False
    note: str = ""


def gate_key(gate: str, pending: list[str]) -> str:
    """Deterministic per set of pending candidates: a resumed run that re-executes from the top passes the same
    gate without stopping, while new or still-undecided candidates after a decision round make a new key."""
    return f"review-{hashlib.sha256((gate + ''.join(sorted(pending))).encode()).hexdigest()[:16]}"


def gate_description(ws: Workspace, status: decisions.GateStatus, character: str, stage: str) -> str:
    from flenwheel.review.service import app_url

    return (
        f"## Review needed: {status.gate_id}\n\n"
        f"| candidates | approved | rejected | pending |\n|---|---|---|---|\n"
        f"| {status.candidates} | {status.approved} | {status.rejected} | {status.pending} |\n\n"
        f"Open the FiftyOne App at {app_url(ws, character)} (`flenwheel review serve {character}`), tag samples "
        f"`approved` or `rejected`, then resume this run. Or decide from a shell: "
        f"`flenwheel review decide {character} --stage {stage} --approve ID... --reject ID...`.\n\n"
        "Resume with *auto_decide_rest* to let the identity policy decide whatever is still pending."
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
) -> decisions.GateStatus:
    """Bring the gate to a decision; raises :class:`AwaitingReview` when a local run must stop and wait."""
    root, configs = str(ws.root), str(ws.configs_dir)
    margin = ws.settings.review.auto_margin
    if mode == "auto":
        decisions.auto_review(catalog, character, stage, margin, run_id)
        return decisions.status(catalog, character, stage)
    if mode == "fiftyone":
        sync_review(root, configs, character, run_id)
    status = decisions.status(catalog, character, stage)
    if status.done:
        return status
    pending = [c["image_id"] for c in decisions.candidates(catalog, character, stage) if c["decision"] is None]
    form = GateInput.with_initial_data(description=gate_description(ws, status, character, stage))
    key = gate_key(status.gate_id, pending)
    ctx = get_run_context()
    if ctx.flow_run.deployment_id is not None:
        answer = suspend_flow_run(wait_for_input=form, key=key, timeout=timeout_s)
    elif wait:
        answer = pause_flow_run(wait_for_input=form, key=key, timeout=timeout_s, poll_interval=2)
    else:
        raise AwaitingReview(
            f"awaiting review: {status.pending} candidate(s) in gate {status.gate_id}; review them "
            f"(flenwheel review serve {character} / flenwheel review decide {character}) and run again"
        )
    if mode == "fiftyone":
        sync_review(root, configs, character, run_id)
    if answer.auto_decide_rest:
        decisions.auto_review(catalog, character, stage, margin, run_id)
    return decisions.status(catalog, character, stage)
