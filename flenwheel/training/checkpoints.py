"""Checkpoints on disk: written atomically, scored, chosen by what their samples say, pruned.

A checkpoint is a folder ``checkpoints/step-NNNNNN/`` holding the adapter weights, the optimizer and RNG state,
the samples with their grid, the loss curve so far and the identity score. It is written into a temporary
sibling and renamed into place, so a kill or a full disk mid-save leaves the previous checkpoints intact and
no half folder that a resume could pick up.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import save, save_file

from flenwheel.core.errors import FlenwheelError, writing
from flenwheel.core.files import atomic_write, clear_leftovers, temp_prefix
from flenwheel.report.grids import image_grid
from flenwheel.report.plots import training_curves


class TrainingError(FlenwheelError):
    """Training cannot run as asked."""


def atomic_dir(final: Path) -> Path:
    """A temporary sibling of ``final``; :func:`commit_dir` renames it into place (a crash leaves no half dir)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(final)
    return Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), dir=final.parent))


def commit_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save safetensors atomically, with a canonical header: the same tensors and metadata give the same bytes,
    so the sha256 recorded in the catalog repeats across runs (the library's header order varies per process)."""
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write(path, canonical_safetensors(data))


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted (tensor data and offsets unchanged)."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8 : 8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format keeps the data 8-byte aligned
    return struct.pack("<Q", len(header)) + header + data[8 + length :]


def atomic_write_text(path: Path, text: str) -> None:
    """A small text record (JSON) written atomically (:func:`flenwheel.store.atomic_write`)."""
    atomic_write(path, text.encode("utf-8"))


@dataclass
class CheckpointScore:
    """What a checkpoint's samples say. The character LoRA's are scored by the evaluation engine (verdict rates,
    likeness, adherence and the composite it is chosen by, docs/evaluation.md); the editor LoRA's by identity only
    (``pass_rate``, ``mean_similarity``), its samples being edits of a training photo by design."""

    step: int
    pass_rate: float | None  # identity filter passes among the samples
    mean_similarity: float | None
    n_samples: int
    good_rate: float | None = None
    copy_rate: float | None = None
    weak_rate: float | None = None
    mean_likeness: float | None = None
    adherence: float | None = None  # None: not measured (no critic, or no checks)
    composite: float | None = None


def _by_composite(s: CheckpointScore) -> tuple[float, float, float, int]:
    # ties: fewer copies, then more likeness, then the earlier step (the same score after more steps on the same
    # photos is more memorised)
    return (
        -2.0 if s.composite is None else s.composite,
        -(s.copy_rate or 0.0),
        -2.0 if s.mean_likeness is None else s.mean_likeness,
        -s.step,
    )


def choose_checkpoint(scores: Sequence[CheckpointScore]) -> CheckpointScore:
    """The checkpoint to export, never by loss: the highest composite of good rate, adherence and copies
    (:mod:`flenwheel.evaluation.summary`) when the samples were scored so, else the best identity pass rate (ties:
    mean similarity, then the later step)."""
    if not scores:
        raise TrainingError("no checkpoint to choose from")
    if any(s.composite is not None for s in scores):
        return max(scores, key=_by_composite)
    return max(
        scores,
        key=lambda s: (
            -1.0 if s.pass_rate is None else s.pass_rate,
            -2.0 if s.mean_similarity is None else s.mean_similarity,
            s.step,
        ),
    )


def _pct(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.0%}"


def checkpoint_reason(scores: Sequence[CheckpointScore]) -> str:
    """Why :func:`choose_checkpoint` picks the checkpoint it picks, in words (the report and ``result.json``)."""
    chosen = choose_checkpoint(scores)
    n = len(scores)
    if chosen.composite is None:
        return (
            f"step {chosen.step}: the best identity pass rate of the samples ({_pct(chosen.pass_rate)}) of {n} "
            "checkpoint(s); ties go to the higher mean similarity, then the later step"
        )
    likeness = "-" if chosen.mean_likeness is None else f"{chosen.mean_likeness:.3f}"
    words = [
        f"step {chosen.step}: the highest composite ({chosen.composite:+.2f}) of {n} checkpoint(s) — good "
        f"{_pct(chosen.good_rate)}, copies {_pct(chosen.copy_rate)}, adherence {_pct(chosen.adherence)}, mean "
        f"likeness {likeness}"
    ]
    copying = [s for s in scores if s.step > chosen.step and (s.copy_rate or 0.0) > (chosen.copy_rate or 0.0)]
    if copying:
        listed = ", ".join(f"step {s.step} {_pct(s.copy_rate)}" for s in sorted(copying, key=lambda s: s.step))
        words.append(f"later checkpoints copy training images ({listed} of their samples are copies)")
    likelier = [
        s
        for s in scores
        if s.mean_likeness is not None and chosen.mean_likeness is not None and s.mean_likeness > chosen.mean_likeness
    ]
    if likelier:
        top = max(likelier, key=lambda s: s.mean_likeness or 0.0)
        words.append(
            f"step {top.step} looks more like the character (likeness {top.mean_likeness:.3f}) but scores "
            f"{(top.composite or 0.0):+.2f}: likeness that comes from copying counts against a checkpoint"
        )
    tied = [s for s in scores if s is not chosen and s.composite == chosen.composite]
    if tied:
        words.append("ties go to fewer copies, then higher likeness, then the earlier step")
    return "; ".join(words)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a folder without its state file is not one)."""
    return sorted(p for p in (run_dir / "checkpoints").glob("step-*") if (p / "state.pt").is_file())


def save_checkpoint(
    run_dir: Path,
    step: int,
    adapter: dict[str, torch.Tensor],
    state: dict[str, Any],
    samples: Sequence[Image.Image],
    labels: Sequence[str],
    score: CheckpointScore,
) -> Path:
    """Write one checkpoint atomically: adapter, optimizer/RNG ``state``, samples with their grid, curves, score."""
    final = checkpoint_dir(run_dir, step)
    with writing(final):
        tmp = atomic_dir(final)
        try:
            save_file({k: v.float().contiguous().cpu() for k, v in adapter.items()}, str(tmp / "adapter.safetensors"))
            torch.save(state, tmp / "state.pt")
            for i, img in enumerate(samples):
                img.save(tmp / f"sample-{i:02d}.png")
            if samples:
                image_grid(list(zip(samples, labels, strict=True)), tmp / "samples.png", tile=160, columns=4)
            training_curves({"loss": state["losses"]}, {}, tmp / "loss.png")
            (tmp / "score.json").write_text(json.dumps(score.__dict__))
            commit_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def prune_checkpoints(run_dir: Path, keep_last: int, best_step: int | None) -> None:
    """Keep the last ``keep_last`` checkpoints and the best one; remove the rest."""
    found = checkpoints(run_dir)
    keep = set(found[-keep_last:])
    keep |= {p for p in found if best_step is not None and p == checkpoint_dir(run_dir, best_step)}
    for p in found:
        if p not in keep:
            shutil.rmtree(p, ignore_errors=True)


def scores_from_disk(run_dir: Path) -> list[CheckpointScore]:
    out = []
    for p in checkpoints(run_dir):
        raw = json.loads((p / "score.json").read_text()) if (p / "score.json").exists() else None
        if raw:
            out.append(score_from_json(raw))
    return out


def score_from_json(raw: dict[str, Any]) -> CheckpointScore:
    """A stored score (``score.json``, ``result.json``); fields a record made before them lack stay None."""
    known = {f for f in CheckpointScore.__dataclass_fields__}
    return CheckpointScore(**{k: v for k, v in raw.items() if k in known})
