"""The deployments ``flenwheel serve`` serves (and ``prefect.yaml`` describes for ``prefect deploy``).

* ``flywheel`` — run from the Prefect UI with a validated :class:`FlywheelParams` form.
* ``editor-flywheel`` — flywheel 2 (train and evaluate the editor LoRA), also from the UI.
* ``nightly-enrich`` — on the cron of configs/flenwheel.yaml (03:00 UTC by default), concurrency 1 and
  ``CANCEL_NEW``: a night whose run is still going (a long enrichment on a busy GPU) skips rather than queues.
"""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from flenwheel.config import Workspace
from flenwheel.flows.editor import editor_flywheel
from flenwheel.flows.enrich import NightlyParams, nightly_enrich
from flenwheel.flows.flywheel import flywheel


def deployments(ws: Workspace) -> list[Any]:
    """Runner deployments bound to this data root and config folder."""
    where = {"root": str(ws.root), "configs": str(ws.configs_dir)}
    nightly = ws.settings.nightly
    return [
        flywheel.to_deployment(
            name="flywheel",
            parameters=where,
            description="Flywheel 1 for one character: enrich, review, freeze, train, generate, review, retrain.",
            tags=["flenwheel"],
        ),
        editor_flywheel.to_deployment(
            name="editor-flywheel",
            parameters=where,
            description="Flywheel 2: train the character's Qwen-Image-Edit LoRA on approved triplets and evaluate it.",
            tags=["flenwheel"],
        ),
        nightly_enrich.to_deployment(
            name="nightly-enrich",
            schedules=[Cron(nightly.cron, timezone=nightly.timezone)],
            parameters={**where, "params": NightlyParams(editor=nightly.editor, review=nightly.review).model_dump()},
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
            description="Enrich new photos under <root>/inbox/<character>/ and queue them for review.",
            tags=["flenwheel"],
        ),
    ]


def has_server() -> bool:
    """Whether Prefect is pointed at a server (else it would serve against a temporary one no UI sees)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def serve(ws: Workspace) -> None:
    """Serve both deployments from this process until interrupted (needs a Prefect server: PREFECT_API_URL)."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(ws))
