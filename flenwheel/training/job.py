"""What a training run is about (its job) and what it gives back (its result)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from flenwheel.core.config import TrainerSettings
from flenwheel.training.checkpoints import CheckpointScore
from flenwheel.training.data import Example

ScoreFn = Callable[[list[Image.Image]], list[Any]]  # images -> identity Scores
ProgressFn = Callable[[int, int, float, float], None]  # step, total, loss, seconds per step


@dataclass
class TrainResult:
    lora_id: str
    run_dir: Path
    weights: Path
    comfy_weights: Path
    chosen_step: int
    scores: list[CheckpointScore]
    losses: list[tuple[int, float]]
    sha256: str
    resumed_from: int | None = None
    trained: bool = True  # False when a finished LoRA was found and returned as it is


@dataclass
class TrainJob:
    """What to train: the identity of the run is derived from these, so a re-run finds its checkpoints."""

    character: str
    dataset_version: str | None
    examples: list[Example]
    settings: TrainerSettings
    trigger: str
    base_model_ref: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self, kind: str) -> str:
        payload = {
            "kind": kind,
            "character": self.character,
            "version": self.dataset_version,
            "model": self.base_model_ref,
            "settings": self.settings.model_dump(mode="json"),
            "examples": [(e.key, e.text) for e in self.examples],
            "extra": self.extra,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class TrainingInterrupted(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(f"training stopped after step {step}")
        self.step = step
