"""Train a FLUX LoRA on a frozen dataset version (the latest one by default); resumes from checkpoints."""

from __future__ import annotations

from prefect import flow
from prefect.context import get_run_context
from pydantic import BaseModel, ConfigDict, Field

from flenwheel.core.types import CharacterName, ProfileName
from flenwheel.dataset import versions
from flenwheel.flows.setup import configure
from flenwheel.store.workspace import RunContext, Workspace
from flenwheel.tasks.training import train_lora
from flenwheel.training import TrainingError, TrainResult


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    character: CharacterName
    dataset: str | None = Field(None, description="dataset version, e.g. astronaut@v2; default: the latest")
    profile: ProfileName | None = None
    steps: int | None = Field(None, ge=1, description="override the profile's step count")


@flow(name="train", log_prints=True)
def train(params: TrainParams, root: str | None = None, configs: str | None = None) -> TrainResult:
    """Train (or resume, or find) the FLUX LoRA of a dataset version."""
    configure()
    ws = Workspace(root=root, configs=configs)
    catalog = ws.catalog()
    ws.character(params.character)
    version = params.dataset or versions.latest_version(catalog, params.character)
    if version is None:
        raise TrainingError(f"{params.character} has no frozen dataset version: run `flenwheel dataset freeze` first")
    config = {"params": params.model_dump(), "dataset": version}
    flow_run_id = str(get_run_context().flow_run.id)
    with catalog.run("flow:train", config, prefect_flow_run_id=flow_run_id) as run_id:
        return train_lora(RunContext.of(ws, params.character, params.profile, run_id), version, params.steps)
