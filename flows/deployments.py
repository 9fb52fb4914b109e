"""The deployments ``flenwheel serve`` serves (and ``prefect.yaml`` describes for ``prefect deploy``).

* ``flywheel`` — run from the Prefect UI with a validated :class:`FlywheelParams` form.
* ``editor-flywheel`` — flywheel 2 (train and evaluate the editor LoRA), also from the UI.
* ``nightly-enrich`` — on the cron of configs/flenwheel.yaml (03:00 UTC by default), concurrency 1 and
  ``CANCEL_NEW``: a night whose run is still going (a long enrichment on a busy GPU) skips rather than queues.

The parameter forms offer the configured characters, profiles and prompt ids as choices: the schema is built
when ``flenwheel serve`` starts, so the UI shows drop-downs and Prefect refuses a run with an unknown value
when it is submitted, not when it fails halfway.
"""

from __future__ import annotations

from typing import Any

from prefect import serve as prefect_serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL

from flenwheel.flows.editor import EditorParams, editor_flywheel
from flenwheel.flows.enrich import NightlyParams, nightly_enrich
from flenwheel.flows.flywheel import FlywheelParams, flywheel
from flenwheel.flows.setup import configure
from flenwheel.flows.watch import EVENT as PHOTOS_LANDED
from flenwheel.store.workspace import Workspace


def choices(ws: Workspace) -> dict[str, list[str]]:
    """What the configs offer: characters, profiles, enrichment and synthetic prompt ids."""
    characters = ws.character_names()
    enrich_ids = sorted({p for c in characters for p in ws.prompt_library(ws.character(c))} | set(ws.prompt_library()))
    return {
        "character": characters,
        "profile": ws.profile_names(),
        "enrich_prompt": enrich_ids,
        "synthetic_prompt": sorted(ws.prompt_library(kind="synthetic")),
    }


# Which parameter of which form takes which kind of choice.
FIELD_CHOICES: dict[str, dict[str, str]] = {
    FlywheelParams.__name__: {"character": "character", "profile": "profile", "enrich_prompts": "enrich_prompt",
                              "synthetic_prompts": "synthetic_prompt"},
    EditorParams.__name__: {"character": "character", "profile": "profile", "eval_prompts": "enrich_prompt"},
    NightlyParams.__name__: {"characters": "character", "profile": "profile", "prompts": "enrich_prompt"},
}  # fmt: skip


def constrain(schema: dict[str, Any], available: dict[str, list[str]]) -> dict[str, Any]:
    """Add ``enum`` choices to the string fields (and string-list items) of the forms in ``schema``."""
    for model, fields in FIELD_CHOICES.items():
        props = schema.get("definitions", {}).get(model, {}).get("properties", {})
        for name, kind in fields.items():
            if name in props and available[kind]:
                _set_enum(props[name], available[kind])
    return schema


def _set_enum(prop: dict[str, Any], values: list[str]) -> None:
    for alternative in prop.get("anyOf", [prop]):
        if alternative.get("type") == "string":
            alternative["enum"] = values
        elif alternative.get("type") == "array":
            alternative.setdefault("items", {})["enum"] = values


def photos_landed_trigger() -> DeploymentEventTrigger:
    """Run the deployment when a watcher emits ``flenwheel.photos.landed`` for any character (flows/watch.py)."""
    return DeploymentEventTrigger(
        name="photos-landed",
        expect={PHOTOS_LANDED},
        match={"prefect.resource.id": "flenwheel.character.*"},
    )


def deployments(ws: Workspace) -> list[RunnerDeployment]:
    """Runner deployments bound to this data root and config folder, with the configs' choices in their forms."""
    where = {"root": str(ws.root), "configs": str(ws.configs_dir)}
    nightly = ws.settings.nightly
    built = [
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
            # also when a watcher reports new photos (`flenwheel watch --emit-only`): the run is the nightly one, so
            # it takes only what is new and a burst during a run is cancelled, not queued (the next event takes it)
            triggers=[photos_landed_trigger()],
            description="Enrich new photos under <root>/inbox/<character>/ and queue them for review.",
            tags=["flenwheel"],
        ),
    ]
    available = choices(ws)
    for deployment in built:
        schema = deployment._parameter_openapi_schema
        schema.definitions = constrain({"definitions": schema.definitions}, available)["definitions"]
    return built


def has_server() -> bool:
    """Whether Prefect is pointed at a server (else it would serve against a temporary one no UI sees)."""
    return bool(PREFECT_API_URL.value())


def serve(ws: Workspace) -> None:
    """Serve the deployments from this process until interrupted (needs a Prefect server: PREFECT_API_URL)."""
    configure()
    prefect_serve(*deployments(ws))
