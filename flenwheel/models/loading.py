"""Load pipelines under a profile (dtype, nf4 components, CPU offload, VAE tiling: data in configs/profiles, carried
out here); keep at most one large pipeline resident, with its LoRA stack applied."""

from __future__ import annotations

import gc
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.quantizers import PipelineQuantizationConfig

from flenwheel.core.config import PipelineKind, Profile, StageSettings
from flenwheel.models.loras import StackEntry, resolve_lora_file, stack_key
from flenwheel.models.memory import Footprint, footprint, precision_tag, with_precision
from flenwheel.models.refs import ModelError, ResolvedModel, pipeline_class, pipeline_class_name, resolve_model
from flenwheel.models.weights import CheckpointMismatch, check_pipeline
from flenwheel.store.workspace import Workspace

# --------------------------------------------------------------------------- devices


def gpu_total_gib() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def check_device(profile: Profile, total_gib: float | None = None) -> None:
    """Refuse a GPU profile without a (big enough) GPU, with the fix in the message."""
    if profile.device != "cuda":
        return
    total = total_gib if total_gib is not None else gpu_total_gib()
    if total is None:
        raise ModelError(
            f"profile {profile.name} needs a CUDA GPU and none is visible (torch.cuda.is_available() is False); "
            "use --profile cpu-tiny on this machine"
        )
    if profile.min_gpu_memory_gib and total < profile.min_gpu_memory_gib:
        smaller = "gpu-24gb" if profile.name == "gpu-80gb" else "a smaller profile"
        raise ModelError(
            f"profile {profile.name} needs at least {profile.min_gpu_memory_gib:g} GiB of GPU memory; this GPU has "
            f"{total:.1f} GiB: use {smaller}"
        )


def torch_dtype(profile: Profile) -> torch.dtype:
    return getattr(torch, profile.dtype)


def quantization_config(stage: StageSettings, profile: Profile) -> Any | None:
    """nf4 (bitsandbytes) for the components the profile lists, computing in the profile's dtype."""
    if not stage.quantize:
        return None
    return PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit",
        quant_kwargs={
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": torch_dtype(profile),
        },
        components_to_quantize=list(stage.quantize),
    )


def check_weights(cls: type, path: Path) -> None:
    """Refuse, before loading, a checkpoint whose tensors do not fit the classes its model_index.json names
    (:mod:`flenwheel.models.weights`; diffusers would only warn and run on with meta or uninitialised weights). A
    pipeline class that checks its own checkpoint (``checks_weights``: VibePipeline) is left to do so."""
    if getattr(cls, "checks_weights", False):
        return
    try:
        check_pipeline(path)
    except CheckpointMismatch as e:
        raise ModelError(str(e)) from None


def load_pipeline(
    kind: PipelineKind, stage: StageSettings, profile: Profile, ws: Workspace
) -> tuple[Any, ResolvedModel]:
    """Load the pipeline of ``kind`` as ``stage`` and ``profile`` say."""
    check_device(profile)
    resolved = resolve_model(stage.model, kind, ws)
    cls = pipeline_class(kind)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(profile)}
    quant = quantization_config(stage, profile)
    if quant is not None:
        kwargs["quantization_config"] = quant
    check_weights(cls, resolved.path)
    try:
        pipe = cls.from_pretrained(str(resolved.path), **kwargs)
    except CheckpointMismatch as e:  # a pipeline that checks its own (VibePipeline)
        raise ModelError(str(e)) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"cannot load {pipeline_class_name(kind)} from {resolved.path}: {e}") from None
    if stage.vae_tiling and hasattr(pipe.vae, "enable_tiling"):
        pipe.vae.enable_tiling()
    if stage.offload == "model":
        pipe.enable_model_cpu_offload()
    elif stage.offload == "sequential":
        pipe.enable_sequential_cpu_offload()
    else:
        pipe.to(profile.device)
    pipe.set_progress_bar_config(disable=True)  # flenwheel shows its own progress per batch
    return pipe, resolved


@dataclass
class Loaded:
    """A resident pipeline with the LoRA stack currently applied to it."""

    kind: PipelineKind  # its model family
    pipe: Any
    model: ResolvedModel
    stage: StageSettings
    base_scheduler_config: dict[str, Any]
    dtype: str = "float32"  # the profile's
    stack_key: tuple = ()
    fused: bool = False
    lora_records: list[dict[str, Any]] = field(default_factory=list)
    stage_name: str = ""  # the profile's stage it was loaded for (editor, generator, ...)

    @property
    def ref(self) -> str:
        """The version pin and how the pipeline runs (dtype, nf4 components, offload): what every edit and generated
        image records as its ``model_ref``, so outputs of numerically different loads are never recorded as one."""
        return with_precision(self.model.ref, precision_tag(self.dtype, self.stage.quantize, self.stage.offload))

    def footprint(self) -> Footprint:
        """The weights this pipeline puts on the device under its stage's quantisation and offload."""
        return footprint(
            f"{self.kind} pipeline", self.pipe.components, self.dtype, self.stage.quantize, self.stage.offload
        )

    def apply_stack(self, stack: list[StackEntry], ws: Workspace, catalog: Any | None = None) -> list[dict[str, Any]]:
        """Make ``stack`` the active LoRAs (loaded, weighted, fused if the stage says so); returns their records.

        A fused stack is never replaced in place (see :meth:`ModelManager.stacked`, which reloads the base).
        """
        key = stack_key(stack)
        if key == self.stack_key:
            return self.lora_records
        if self.fused:
            raise ModelError("a fused LoRA stack cannot be replaced in place: reload the pipeline (ModelManager)")
        self.clear_stack()
        records: list[dict[str, Any]] = []
        names: list[str] = []
        for i, entry in enumerate(stack):
            path, ref = resolve_lora_file(entry.spec, ws, catalog)
            adapter = f"{i}_{re.sub(r'[^A-Za-z0-9_]', '_', entry.name)}"
            try:
                self.pipe.load_lora_weights(str(path), adapter_name=adapter)
            except (ValueError, KeyError, RuntimeError) as e:
                self.clear_stack()
                raise ModelError(
                    f"LoRA {entry.name} ({ref}) does not load into {pipeline_class_name(self.kind)}: {e}"
                ) from None
            names.append(adapter)
            records.append({"name": entry.name, "ref": ref, "scale": entry.scale})
        if names:
            self.pipe.set_adapters(names, adapter_weights=[e.scale for e in stack])
            if self.stage.fuses:
                self.pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
                self.fused = True
        overrides: dict[str, Any] = {}
        for entry in stack:
            overrides.update(entry.spec.scheduler)
        self.pipe.scheduler = type(self.pipe.scheduler).from_config({**self.base_scheduler_config, **overrides})
        self.stack_key, self.lora_records = key, records
        return records

    def clear_stack(self) -> None:
        """Unload an unfused stack (the base layers come back untouched) and restore the scheduler."""
        if self.stack_key or getattr(self.pipe, "get_list_adapters", lambda: {})():
            self.pipe.unload_lora_weights()
        self.pipe.scheduler = type(self.pipe.scheduler).from_config(self.base_scheduler_config)
        self.stack_key, self.lora_records = (), []


def _rss_gib() -> float:
    # ru_maxrss is in KiB on Linux: the process's peak, a ceiling for the stage.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class ModelManager:
    """Keeps at most one large pipeline resident; switching stages frees the previous one.

    Peak memory of each stage (GPU when there is one, else the process's peak RSS) is written to
    ``metrics`` (scope ``stage``) when the stage is released, if a catalog and run id were given.
    """

    def __init__(self, ws: Workspace, profile: Profile, catalog: Any | None = None, run_id: str | None = None) -> None:
        self.ws, self.profile, self.catalog, self.run_id = ws, profile, catalog, run_id
        self.current: Loaded | None = None
        self.peaks: dict[str, float] = {}
        self.last_peak: float | None = None  # the peak of the pipeline released last (None while one is loaded)
        # called before a pipeline loads, with its kind and stage: what else this process holds on the device may
        # have to make room (flenwheel.models.runtime releases a VLM the pipeline would not fit beside)
        self.before_load: Callable[[PipelineKind, StageSettings], None] | None = None

    def stage(self, name: str) -> tuple[str, str, StageSettings]:
        """(stage name, family, settings) of a stage named by its name or by its family (``flux`` -> generator)."""
        try:
            stage_name, stage = self.profile.stage_for(name)
        except KeyError as e:
            raise ModelError(str(e.args[0])) from None
        return stage_name, self.profile.family_of(stage_name), stage

    def get(self, name: str) -> Loaded:
        """The pipeline of a stage (``editor``, ``generator``, ``ref_editor``, ...; a family name picks the first
        stage of that family), loading it and releasing the previous one when another is resident."""
        stage_name, kind, stage = self.stage(name)
        if self.current is not None and self.current.stage_name == stage_name:
            return self.current
        self.release()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        if self.before_load is not None:
            self.before_load(kind, stage)
        pipe, resolved = load_pipeline(kind, stage, self.profile, self.ws)
        self.last_peak = None
        self.current = Loaded(
            kind, pipe, resolved, stage, dict(pipe.scheduler.config), self.profile.dtype, stage_name=stage_name
        )
        return self.current

    def stacked(
        self, kind: str, stack: list[StackEntry], catalog: Any | None = None
    ) -> tuple[Loaded, list[dict[str, Any]]]:
        """The pipeline of a stage (see :meth:`get`) with ``stack`` applied, and the stack's records.

        Unfusing subtracts what fusing added, which in floating point (let alone in re-quantised 4-bit weights)
        does not give the base back bit for bit: the same job would make another image depending on what ran
        before. So a fused stack is never taken out; when another stack is wanted, the base is loaded afresh.
        """
        loaded = self.get(kind)
        if loaded.fused and loaded.stack_key != stack_key(stack):
            self.release()
            loaded = self.get(kind)
        return loaded, loaded.apply_stack(stack, self.ws, catalog)

    def release(self) -> None:
        if self.current is None:
            return
        kind = self.current.kind
        if torch.cuda.is_available():
            # allocated leaves out the caching allocator's reserve; a budget check needs the reserved peak too
            peaks = {
                "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
                "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            }
        else:
            peaks = {"peak_rss_gib": _rss_gib()}
        self.peaks[kind] = self.last_peak = max(peaks.values())
        if self.catalog is not None and self.run_id is not None:
            self.catalog.add_metrics(self.run_id, "stage", kind, peaks)
        self.current = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> ModelManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
