"""Train a FLUX LoRA on a frozen dataset version (the latest one by default); resumes from checkpoints."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from prefect.context import get_run_context
from pydantic import BaseModel, ConfigDict, Field

from flenwheel import versions
from flenwheel.config import Workspace
from flenwheel.tasks.runtime import catalog as open_catalog
from flenwheel.tasks.work import train_lora


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    character: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    dataset: str | None = Field(None, description="dataset version, e.g. astronaut@v2; default: the latest")
    profile: Literal["cpu-tiny", "gpu-24gb", "gpu-80gb"] | None = None
    steps: int | None = Field(None, ge=1, description="override the profile's step count")


@flow(name="train", log_prints=True)
def train(params: TrainParams, root: str | None = None, configs: str | None = None) -> dict[str, Any]:
    ws = Workspace(root=root, configs=configs)
    catalog = open_catalog(ws)
    ws.character(params.character)
    version = params.dataset or versions.latest_version(catalog, params.character)
    if version is None:
        raise ValueError(f"{params.character} has no frozen dataset version: run `flenwheel dataset freeze` first")
    config = {"params": params.model_dump(), "dataset": version}
    flow_run_id = str(get_run_context().flow_run.id)
    with catalog.run("flow:train", config, prefect_flow_run_id=flow_run_id) as run_id:
        result = train_lora(str(ws.root), str(ws.configs_dir), params.character, version, params.profile,
                            params.steps, run_id)  # fmt: skip
    return {**result, "dataset": version, "run_id": run_id}
