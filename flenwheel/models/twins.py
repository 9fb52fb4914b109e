"""Tiny random-weight twins of the real pipelines, for tests and the offline demo.

No weights can be downloaded here, yet every code path (loading, LoRA, training, sampling) should run on the
very classes production uses. So each model family's folder makes its pipeline from the real
diffusers/transformers classes with tiny configurations and random weights (the ``twin`` its ``family.py`` names:
``flux/twin.py``, ``qwen_image_edit/twin.py``, ``vibe/twin.py``, ``flux2_klein/twin.py``; their ``SIZES["real"]``
are the published architectures, for the GPU bench and memory accounting), and this module saves them with
``save_pretrained``: plain ``FluxPipeline.from_pretrained(dir)`` loads them like any hub snapshot. Builds are
deterministic for a seed, take a few seconds, and produce noise images by design.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from flenwheel.core.files import clear_leftovers, temp_prefix
from flenwheel.models.families import family, load_object

# The twins built by default (``flenwheel models tiny``, the test session): the families of the shipped profiles.
TINY_KINDS = ("flux", "qwen-image-edit", "vibe", "flux2-klein")


def make_pipeline(kind: str, seed: int = 0, size: str = "tiny") -> Any:
    """The random-weight pipeline of the family ``kind`` (tiny, or ``size="real"``), made by the twin its
    ``family.py`` names (imported when asked for: Qwen3-VL and Sana only then); under ``torch.device("meta")`` its
    shapes alone (memory accounting, the GPU bench)."""
    return load_object(family(kind).twin)(seed, size)


def build_model(kind: str, out_dir: Path, seed: int = 0, size: str = "tiny") -> Path:
    """The random-weight pipeline of ``kind`` saved with ``save_pretrained`` to ``out_dir``."""
    make_pipeline(kind, seed, size).save_pretrained(out_dir)
    return Path(out_dir)


def ensure_tiny_models(models_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Build the tiny pipelines that are missing under ``models_dir``; returns their folders."""
    return ensure_models(models_dir, "tiny", TINY_KINDS, seed)


def ensure_models(
    models_dir: Path, size: str = "tiny", kinds: tuple[str, ...] = TINY_KINDS, seed: int = 0
) -> dict[str, Path]:
    """Build the random-weight pipelines of ``size`` that are missing under ``models_dir``; returns their folders.

    Each is built in a temporary sibling folder and renamed into place, so a reader never sees half a model;
    when two processes race, the second rename fails and that copy is discarded. Real-size twins are built in
    bfloat16 (tens of GB: GPU benchmarks only).
    """
    if size not in ("tiny", "real"):
        raise ValueError("size must be tiny or real")
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for kind in kinds:
        target = models_dir / kind
        if not (target / "model_index.json").is_file():
            clear_leftovers(target)
            tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(kind), dir=models_dir))
            try:
                default_dtype = torch.get_default_dtype()
                torch.set_default_dtype(torch.bfloat16 if size == "real" else default_dtype)
                try:
                    build_model(kind, tmp, seed, size)
                finally:
                    torch.set_default_dtype(default_dtype)
                try:
                    os.rename(tmp, target)
                except OSError:
                    if not (target / "model_index.json").is_file():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        out[kind] = target
    return out
