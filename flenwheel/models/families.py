"""Model families as data: one place per family, and the registry the rest of the code asks.

A *family* is an architecture and the code around it: its diffusers pipeline class, the components a profile may
load in nf4, the stage it serves (editor, generator), the LoRA target set and the ComfyUI/kohya key map its trainer
writes, the trainer backend, the tiny twin, and the *models* of the family that flenwheel knows (hub id, licence,
gated or not, download size). Each family is a folder ``flenwheel/models/<family>/`` whose ``family.py`` declares a
module-level ``FAMILY``; :func:`families` finds them by walking the package, so adding a family is a new folder
plus config (docs/models.md has the checklist) and no list here changes.

Code above the models layer is named *by import path* (the trainer backend lives in ``flenwheel.training``, which
may import this package, never the other way round), and nothing here imports torch: ``flenwheel models list`` and
the catalog's licence records read these tables without loading a model.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from functools import cache
from typing import Any

GB = 10**9


@dataclass(frozen=True)
class Licence:
    """A model's licence: an SPDX id or a named licence, whether it allows commercial use, and where that was read."""

    name: str
    commercial: bool
    source: str  # where the licence was verified (a model card, a LICENSE file, a maintainer's statement)


APACHE_2 = "Apache-2.0"


@dataclass(frozen=True)
class ModelCard:
    """One model of a family that flenwheel knows by hub id."""

    hub_id: str
    licence: Licence
    download_bytes: int | None = None  # the bf16 files the pipeline loads (not the repo's single-file copies)
    size_source: str = ""
    gated: bool = False  # the hub serves it only to a logged-in user who accepted its licence
    role: str = ""  # e.g. "inference (distilled, 4 steps)", "LoRA training base"


@dataclass(frozen=True)
class Family:
    """Everything that is one model family's own (see the module docstring)."""

    name: str  # the id profiles, LoRA entries and the catalog use ("flux", "flux2-klein", ...)
    description: str
    pipeline_class: str  # a diffusers class name, or "module:Class" for a pipeline of ours
    components: tuple[str, ...]  # the model components a pipeline folder holds (memory accounting, the GPU bench)
    nf4_components: tuple[str, ...]  # what the 24 GB profiles load in nf4 (bitsandbytes)
    serves: tuple[str, ...]  # the stages it may fill: "editor", "generator", "vibe_editor", "ref_editor"
    twin: str  # "module:function" making the random-weight pipeline (seed, size) -> pipeline
    models: tuple[ModelCard, ...]
    trainer_backend: str | None = None  # "module:Class" of its TrainingBackend (flenwheel.training registers it)
    lora_kind: str | None = None  # the loras.kind its trainer writes
    lora_targets: tuple[str, ...] = ()  # default LoRA target modules (peft name suffixes)
    key_map: str | None = None  # "module:function" writing its ComfyUI/kohya LoRA file (flenwheel.training)
    notes: tuple[str, ...] = field(default=())  # what is unconfirmed, what was checked and how

    def card(self, hub_id: str) -> ModelCard | None:
        repo = hub_id.partition("@")[0]
        return next((m for m in self.models if m.hub_id == repo), None)

    @property
    def reference_model(self) -> ModelCard:
        """The model the family's tiny twin stands in for when a profile does not say (its first card)."""
        return self.models[0]


# Models that are no pipeline family but contribute to what flenwheel makes (the critic's and captions' VLM).
AUXILIARY: tuple[ModelCard, ...] = (
    ModelCard(
        "Qwen/Qwen2.5-VL-7B-Instruct",
        Licence(APACHE_2, True, "model card metadata license: apache-2.0 (the 3B and 72B use Qwen's own licences)"),
        int(16.6 * GB),
        "8.29 B params in bf16",
        role="captions and the critic when the editor's text encoder lacks its output layer",
    ),
)


@cache
def families() -> dict[str, Family]:
    """Every family, by name: each subpackage of ``flenwheel.models`` with a ``family.py`` declaring ``FAMILY``."""
    import flenwheel.models as pkg

    found: dict[str, Family] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        try:
            module = importlib.import_module(f"flenwheel.models.{info.name}.family")
        except ModuleNotFoundError as e:
            if e.name != f"flenwheel.models.{info.name}.family":
                raise
            continue
        family: Family = module.FAMILY
        if family.name in found:
            raise ValueError(f"two model families named {family.name!r}")
        found[family.name] = family
    return found


class UnknownFamily(KeyError):
    """A family name no ``flenwheel/models/<family>/family.py`` declares."""

    def __str__(self) -> str:
        return f"unknown model family {self.args[0]!r}: known families are {', '.join(families())}"


def family(name: str) -> Family:
    try:
        return families()[name]
    except KeyError:
        raise UnknownFamily(name) from None


def load_object(path: str) -> Any:
    """The object named by ``"module:attribute"``; a bare name is an attribute of ``diffusers``."""
    module, _, name = path.rpartition(":")
    return getattr(importlib.import_module(module or "diffusers"), name)


def card_for(hub_id: str) -> tuple[Family | None, ModelCard] | None:
    """The family and card of a known hub id (``repo@revision`` is fine), or None."""
    repo = hub_id.partition("@")[0]
    for fam in families().values():
        card = fam.card(repo)
        if card is not None:
            return fam, card
    aux = next((m for m in AUXILIARY if m.hub_id == repo), None)
    return (None, aux) if aux else None


def tiny_families() -> tuple[str, ...]:
    """Families with a tiny twin (all of them): ``tiny:<name>`` model refs."""
    return tuple(families())
