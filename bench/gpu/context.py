"""What a measuring process knows (:class:`Ctx`) and the helpers every stage times its calls with."""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gpu.common import Stage
from bench.gpu.meter import Meter, now, sync


@dataclass
class Ctx:
    """What a measuring process knows: the stage, where its models and scratch files are, the run profile."""

    stage: Stage
    size: str
    folder: Path | None  # the pipeline folder of the stage's kind
    folders: dict[str, Path]  # every pipeline folder the stage loads from, by kind
    work: Path  # scratch: images, LoRA files, caches (the parent deletes it)
    steps: int  # measured steps after one warm-up step
    out: Path
    ws: Any
    profile: Any  # gpu-24gb (real) or cpu-tiny (tiny), with the stage models pointed at ``folder``
    meter: Meter

    @property
    def real(self) -> bool:
        return self.size == "real"

    def emit(self, key: str, what: str, px: str | int | None, mem: dict[str, Any] | None, **fields: Any) -> None:
        """Append one row to ``out`` at once, so a stage stopped at its time limit keeps what it measured."""
        import torch

        versions = {"python": sys.version.split()[0], "torch": torch.__version__}
        for name in ("diffusers", "transformers", "peft", "bitsandbytes", "onnxruntime"):
            with contextlib.suppress(Exception):
                versions[name] = __import__(name).__version__
        row = {
            "key": key,
            "stage": self.stage.name,
            "what": what,
            "px": None if px is None else str(px),
            "size": self.size,
            "profile": self.profile.name,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
            "gpu": torch.cuda.is_available(),
            **(mem or {}),
            "s_step": None,
            "s_image": None,
            "load_s": None,
            "settings": "",
            **fields,
            "versions": versions,
            "date": datetime.date.today().isoformat(),
        }
        with self.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def image(px: int, seed: int, path: Path | None = None) -> Any:
    """A smooth random RGB image (content does not change memory or time); saved as PNG when ``path`` is given."""
    import numpy as np
    from PIL import Image

    small = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((px, px), Image.BICUBIC)
    if path is not None:
        img.save(path)
    return img


def timed_call(pipe: Any, **kwargs: Any) -> tuple[float | None, float]:
    """One pipeline call: seconds per denoising step (the first step excluded) and the whole call's seconds."""
    import torch

    marks: list[float] = []

    def on_step(_pipe: Any, _i: int, _t: Any, kw: dict) -> dict:
        sync()
        marks.append(now())
        return kw

    sync()
    t0 = now()
    pipe(**kwargs, callback_on_step_end=on_step, generator=torch.Generator("cpu").manual_seed(0))
    sync()
    wall = now() - t0
    return ((marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else None), wall


def train_steps(trainer: Any, transformer: Any, params: Any, optimizer: Any, item: dict, steps: int) -> float:
    """Seconds per optimizer step of the trainer's own ``train_step`` (one warm-up step excluded)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    marks = []
    for step in range(steps + 1):
        trainer.train_step(transformer, params, optimizer, [item], lambda _k: [0], gen, step)
        sync()
        marks.append(now())
    return (marks[-1] - marks[0]) / steps


def stage_settings(stage: Any) -> str:
    return (
        f"nf4 {'+'.join(stage.quantize) or 'none'}, offload {stage.offload}, "
        f"tiling {'on' if stage.vae_tiling else 'off'}"
    )


def trainer_settings(s: Any) -> str:
    return (
        f"rank {s.rank}, {'nf4 base' if s.qlora else 'full-precision base'}, {s.optimizer}, "
        f"checkpointing {'on' if s.gradient_checkpointing else 'off'}, {len(s.target_modules or [])} targets"
    )
