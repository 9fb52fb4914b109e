"""What a training run is about (its job) and what it gives back (its result)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from flenwheel.core.config import Check, TrainerSettings
from flenwheel.training.checkpoints import CheckpointScore
from flenwheel.training.data import Example

ScoreFn = Callable[[list[Image.Image]], list[Any]]  # images -> identity Scores
ProgressFn = Callable[[int, int, float, float], None]  # step, total, loss, seconds per step


@dataclass(frozen=True)
class SamplePrompt:
    """A prompt every checkpoint is sampled with: its text as sent, and the checks its samples are asked."""

    text: str
    prompt_id: str | None = None
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class SampleSpec:
    """One checkpoint sample: the prompt and seed that made it."""

    prompt: SamplePrompt
    seed: int


# What a trainer asks of a checkpoint's samples: (step, samples, their specs) -> its score and a label per sample
CheckpointJudge = Callable[[int, Sequence[Image.Image], Sequence[SampleSpec]], tuple[CheckpointScore, list[str]]]


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
    choice: str = ""  # why the exported checkpoint was chosen, in words


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
    # what every checkpoint is sampled with; empty: the settings' sample_prompts with their sample_seeds
    sample_prompts: list[SamplePrompt] = field(default_factory=list)
    sample_seeds: list[int] = field(default_factory=list)

    def samples(self) -> tuple[list[SamplePrompt], list[int]]:
        """The checkpoint sample prompts ({trigger} replaced) and seeds."""
        if self.sample_prompts:
            return self.sample_prompts, self.sample_seeds
        texts = self.settings.sample_prompts or []
        return [SamplePrompt(t.replace("{trigger}", self.trigger)) for t in texts], list(self.settings.sample_seeds)

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
