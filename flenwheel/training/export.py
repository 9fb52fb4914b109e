"""Export the chosen checkpoint: the diffusers file, the ComfyUI/kohya file, curves, result record, catalog row.

Files are written under temporary names and renamed; ``result.json`` (the record a re-run returns without
training again) is written after both weight files, and the catalog row is registered idempotently every time
a finished run is found, so a kill anywhere in between leaves a state the next run completes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import diffusers
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import load_file

from flenwheel.catalog import Catalog
from flenwheel.core.files import clear_leftovers, file_sha256, temp_prefix
from flenwheel.models.licences import LicenceRecord, merge, model_licence
from flenwheel.report.plots import checkpoint_chart, training_curves
from flenwheel.store.workspace import Workspace
from flenwheel.training.backend import TrainingBackend
from flenwheel.training.checkpoints import (
    CheckpointScore,
    atomic_save_file,
    atomic_write_text,
    checkpoint_dir,
    checkpoint_reason,
    score_from_json,
)
from flenwheel.training.job import TrainJob, TrainResult

WEIGHTS = "pytorch_lora_weights.safetensors"


def comfy_path(run_dir: Path, lora_id: str) -> Path:
    return run_dir / f"{lora_id}_comfyui.safetensors"


def export(
    ws: Workspace,
    catalog: Catalog,
    backend: TrainingBackend,
    run_id: str | None,
    job: TrainJob,
    lora_id: str,
    run_dir: Path,
    step: int,
    scores: list[CheckpointScore],
    losses: list[tuple[int, float]],
    alpha: float,
    resumed_from: int | None = None,
) -> TrainResult:
    """Write the chosen checkpoint in both formats, record it, register it, and return the result."""
    adapter = load_file(str(checkpoint_dir(run_dir, step) / "adapter.safetensors"))
    s = backend.with_targets(job.settings)
    meta = {
        "flenwheel.base_model": backend.model.ref,
        "flenwheel.dataset_version": job.dataset_version or "",
        "flenwheel.trigger": job.trigger,
        "flenwheel.steps": str(step),
        "flenwheel.lora_id": lora_id,
        "flenwheel.kind": backend.kind,
        "ss_network_dim": str(s.rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": backend.base_model_version,
    }
    clear_leftovers(run_dir / "export")
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=temp_prefix("export")) as tmp:
        adapter_meta = LoraConfig(r=s.rank, lora_alpha=alpha, target_modules=list(s.target_modules)).to_dict()
        getattr(diffusers, backend.pipeline_class).save_lora_weights(
            tmp, transformer_lora_layers=adapter, transformer_lora_adapter_metadata=adapter_meta
        )
        written = Path(tmp) / WEIGHTS
        with safe_open(str(written), "pt") as f:
            base_meta = canonical_metadata(f.metadata() or {})
        atomic_save_file(load_file(str(written)), run_dir / WEIGHTS, {**base_meta, **meta})
    comfy = backend.comfy_state_dict({f"transformer.{k}": v for k, v in adapter.items()}, alpha)
    atomic_save_file(comfy, comfy_path(run_dir, lora_id), {"format": "pt", **meta})
    weights = run_dir / WEIGHTS
    sha = file_sha256(weights)
    by_step = sorted(scores, key=lambda x: x.step)
    training_curves(
        {lora_id: losses}, {lora_id: [(x.step, x.pass_rate or 0.0) for x in by_step]}, run_dir / "training.png"
    )
    choice = checkpoint_reason(scores) if scores else f"step {step}: no checkpoint was scored, the last one"
    if any(x.composite is not None for x in scores):
        checkpoint_chart({lora_id: [x.__dict__ for x in by_step]}, {lora_id: step}, run_dir / "checkpoints.png")
    result = TrainResult(
        lora_id, run_dir, weights, comfy_path(run_dir, lora_id), step, scores, losses, sha, resumed_from, choice=choice
    )
    summary = {
        "lora_id": lora_id,
        "chosen_step": step,
        "choice": choice,
        "sha256": sha,
        "alpha": alpha,
        "losses": losses,
        "scores": [x.__dict__ for x in scores],
    }
    atomic_write_text(run_dir / "result.json", json.dumps(summary))
    register(ws, catalog, backend, run_id, job, result, alpha)
    return result


def canonical_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The same metadata with its JSON values in a canonical form. peft keeps ``target_modules`` as a set, whose
    order changes with each process's string hashing: without this, two identical runs would write files with
    different bytes (and different sha256s in the catalog)."""
    out = {}
    for key, value in metadata.items():
        try:
            decoded = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
            continue
        out[key] = json.dumps(_sorted_lists(decoded), sort_keys=True) if isinstance(decoded, dict | list) else value
    return out


def _sorted_lists(value: object) -> object:
    if isinstance(value, dict):
        return {k: _sorted_lists(v) for k, v in value.items()}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sorted(value)
    return value


def finished_result(lora_id: str, run_dir: Path) -> TrainResult | None:
    """The result of a run that already finished (its ``result.json`` and weights exist), else None."""
    record = run_dir / "result.json"
    if not (run_dir / WEIGHTS).exists() or not record.exists():
        return None
    raw = json.loads(record.read_text())
    scores = [score_from_json(x) for x in raw["scores"]]
    return TrainResult(
        lora_id,
        run_dir,
        run_dir / WEIGHTS,
        comfy_path(run_dir, lora_id),
        raw["chosen_step"],
        scores,
        [tuple(x) for x in raw["losses"]],
        raw["sha256"],
        trained=False,
        choice=raw.get("choice", ""),
    )


def recorded_alpha(run_dir: Path, job: TrainJob) -> float:
    raw = json.loads((run_dir / "result.json").read_text())
    return float(raw.get("alpha") or job.settings.alpha or job.settings.rank)


def register(
    ws: Workspace,
    catalog: Catalog,
    backend: TrainingBackend,
    run_id: str | None,
    job: TrainJob,
    result: TrainResult,
    alpha: float,
) -> None:
    """The ``loras`` row of a finished run (a no-op when it is there already), with the licences of its base model
    and of the models that made its training data (the dataset version's record)."""
    catalog.register_lora(
        lora_id=result.lora_id,
        character=job.character,
        kind=backend.kind,
        base_model_ref=backend.model.ref,
        dataset_version=job.dataset_version,
        hyperparams={**job.settings.model_dump(mode="json"), "alpha": alpha, **job.extra},
        steps=job.settings.steps,
        path=result.weights.relative_to(ws.root).as_posix(),
        sha256=result.sha256,
        comfy_path=result.comfy_weights.relative_to(ws.root).as_posix(),
        chosen_checkpoint=result.chosen_step,
        run_id=run_id,
        licences=lora_licences(catalog, backend, job),
    )


def lora_licences(catalog: Catalog, backend: TrainingBackend, job: TrainJob) -> list[dict]:
    """The base model's licence and those recorded with the dataset version the LoRA learned from."""
    records = [model_licence(backend.model.ref, "base model")]
    if job.dataset_version and catalog.version_exists(job.dataset_version):
        data = catalog.version_licences(job.dataset_version) or []
        records += [LicenceRecord(**{**r, "role": f"training data: {r['role']}"}) for r in data]
    return [r.to_json() for r in merge(records)]
