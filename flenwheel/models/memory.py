"""What a profile puts on the GPU, counted from the models' shapes, and which models may sit there together.

A 24 GB card holds one large model at a time (the model manager's rule), but the VLM critic and the caption writer
(Qwen2.5-VL-7B, :mod:`flenwheel.models.critic`) are asked *while* an editor is resident. Whether the two fit is
arithmetic on weights that needs no GPU: every ``nn.Linear`` weight that bitsandbytes quantises costs half a byte
per weight plus one fp32 absmax per block of 64 (0.5625 bytes; diffusers and transformers load nf4 without double
quantisation), every other parameter the profile's dtype. The same count works on a loaded model, on one built on
the meta device from its configs (before a byte is read), and on the real-size twins (:mod:`flenwheel.models.twins`).

A :class:`Footprint` is one model's weights per component and how it is offloaded: without offload all of it stays
on the device; under model CPU offload only the running component is there (diffusers moves the others out, and
everything out after a pipeline call); under sequential offload one layer at a time. Two models fit together when,
at the worse of the two moments (one runs while the other idles), their weights plus the profile's headroom for
activations, the CUDA context and the allocator's reserve stay within ``peak_budget_gib``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch only where shapes are counted: the CLI and the flows import this module too
    from torch import nn

GIB = 2**30
NF4_BYTES_PER_WEIGHT = 0.5 + 4 / 64  # 4-bit weights + one fp32 absmax per 64-weight block
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# transformers' 4-bit quantiser keeps the output layer in the compute dtype (its keys "not to convert")
NOT_QUANTISED = ("lm_head",)


SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def precision_tag(dtype: str, quantised: Collection[str] = (), offload: str = "none", whole: bool = False) -> str:
    """How a model ran, for its catalog record: the dtype, the nf4 components, the offload.

    ``bf16``; ``bf16,nf4`` (one model, ``whole``); ``bf16,nf4:text_encoder+transformer,offload:model`` (a pipeline).
    Appended to a model's version pin after ``#`` (:func:`with_precision`): two numerically different models of the
    same weights (a bf16 critic and the editor's nf4 text encoder) never share a record.
    """
    tag = SHORT_DTYPES.get(dtype, dtype)
    if quantised:
        tag += ",nf4" if whole else ",nf4:" + "+".join(sorted(quantised))
    if offload != "none":
        tag += f",offload:{offload}"
    return tag


def with_precision(ref: str, tag: str) -> str:
    return f"{ref}#{tag}"


@dataclass(frozen=True)
class Footprint:
    """The weights one model puts on the device, per component, and how it is offloaded."""

    label: str
    parts: Mapping[str, float]  # component -> GiB of its weights on the device while it runs
    offload: str = "none"  # none | model | sequential
    quantised: tuple[str, ...] = field(default=())

    @property
    def total_gib(self) -> float:
        return sum(self.parts.values())

    @property
    def idle_gib(self) -> float:
        """On the device between calls: everything without offload, nothing under offload."""
        return self.total_gib if self.offload == "none" else 0.0

    @property
    def busy_gib(self) -> float:
        """On the device while it runs: everything; the largest component under model offload; under sequential
        offload one layer at a time, which is small beside any budget and counted as nothing."""
        if self.offload == "none":
            return self.total_gib
        return max(self.parts.values(), default=0.0) if self.offload == "model" else 0.0

    def describe(self) -> str:
        how = f"nf4 {'+'.join(self.quantised)}" if self.quantised else "unquantised"
        return f"{self.label} ({self.total_gib:.1f} GiB of weights, {how}, offload {self.offload})"


def module_bytes(module: nn.Module, dtype_bytes: int, nf4: bool, keep: Collection[str] = NOT_QUANTISED) -> int:
    """Bytes of ``module``'s weights on the device when loaded in a ``dtype_bytes`` dtype, with its ``nn.Linear``
    weights in nf4 when ``nf4`` (those named in ``keep`` stay in the dtype). Shared (tied) parameters count once;
    an already quantised ``Linear4bit`` counts by its logical shape."""
    from torch import nn

    total = 0.0
    seen: set[int] = set()
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            kept = any(name == k or name.endswith("." + k) for k in keep)
            per_weight = NF4_BYTES_PER_WEIGHT if nf4 and not kept else dtype_bytes
            total += m.in_features * m.out_features * per_weight
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * dtype_bytes
    return int(total)


def footprint(
    label: str, components: Mapping[str, Any], dtype: str, quantised: Collection[str] = (), offload: str = "none"
) -> Footprint:
    """The footprint of a pipeline's (or one model's) ``components``: the ``nn.Module`` ones are counted."""
    from torch import nn

    size = DTYPE_BYTES[dtype]
    parts = {
        name: module_bytes(m, size, name in quantised) / GIB
        for name, m in components.items()
        if isinstance(m, nn.Module)
    }
    return Footprint(label, parts, offload, tuple(sorted(q for q in quantised if q in parts)))


def together_gib(a: Footprint, b: Footprint) -> float:
    """Weights on the device at the worse moment when ``a`` and ``b`` are both loaded: one runs, the other idles."""
    return max(a.busy_gib + b.idle_gib, a.idle_gib + b.busy_gib)


@dataclass(frozen=True)
class Verdict:
    """Whether two models may sit on the device together, with the figures that decided it."""

    fits: bool
    weights_gib: float
    headroom_gib: float
    budget_gib: float | None
    reason: str


def may_sit_together(a: Footprint, b: Footprint, budget_gib: float | None, headroom_gib: float) -> Verdict:
    """``a`` and ``b`` fit together when their weights at the worse moment plus the headroom stay within the budget;
    a profile without a budget (the CPU) sets no limit."""
    weights = together_gib(a, b)
    if budget_gib is None:
        return Verdict(True, weights, headroom_gib, None, "no peak budget in this profile")
    fits = weights + headroom_gib <= budget_gib
    reason = (
        f"{a.describe()} and {b.describe()}: {weights:.1f} GiB of weights + {headroom_gib:g} GiB headroom "
        f"{'<=' if fits else '>'} the {budget_gib:g} GiB budget"
    )
    return Verdict(fits, weights, headroom_gib, budget_gib, reason)


# --------------------------------------------------------------------------- shapes from configs alone


def meta_component(folder: Path, library: str, class_name: str) -> nn.Module | None:
    """The component saved in ``folder`` built from its config on the meta device (shapes, no weights), or None
    when it is no model (a scheduler, a tokenizer) or has no config."""
    from flenwheel.models.vibe.pipeline import LEGACY_LIBRARIES, REFERENCE_CLASS_NAMES
    from flenwheel.models.weights import component_class, meta_model

    if class_name in REFERENCE_CLASS_NAMES or library in LEGACY_LIBRARIES:  # VIBE's transformer, saved elsewhere
        library, class_name = "flenwheel.models.vibe.transformer", REFERENCE_CLASS_NAMES.get(class_name, class_name)
    from torch import nn

    cls = component_class(library, class_name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or not (folder / "config.json").is_file():
        return None
    return meta_model(cls, folder)


def meta_components(pipeline_folder: Path) -> dict[str, nn.Module]:
    """Every model component of the diffusers pipeline in ``pipeline_folder``, built on the meta device."""
    index = json.loads((pipeline_folder / "model_index.json").read_text())
    out = {}
    for name, entry in index.items():
        if name.startswith("_") or not (isinstance(entry, list) and len(entry) == 2 and all(entry)):
            continue
        module = meta_component(pipeline_folder / name, *entry)
        if module is not None:
            out[name] = module
    return out
