"""Strict loading: a checkpoint whose weights do not fit the classes it names is refused before it is loaded.

diffusers 0.42.1 only *warns* about missing or unexpected checkpoint keys: with ``low_cpu_mem_usage`` (its
default) the missing parameters stay on the meta device and fail much later, at ``.to("cuda")``, with "Cannot
copy out of meta tensor"; without it they stay uninitialised. transformers 5.23 also only warns (its "LOAD
REPORT") and initialises missing weights at random. So a VIBE checkpoint of another layout, or a damaged shard,
would run on with some weights made up. This module compares, for every model component a pipeline folder names,
the tensor names in its safetensors headers (no tensor is read) with the state-dict keys of the class built from
the component's config on the meta device, and raises :class:`CheckpointMismatch` with one line naming the
checkpoint, the component and the first keys that differ.

What each library would reconcile on its own is reconciled here the same way, with its own code:
* diffusers: deprecated attention-block names of single-file checkpoints (``_fix_state_dict_keys_on_load``),
  ``_keys_to_ignore_on_load_unexpected``;
* transformers: the checkpoint conversion mapping of the class (legacy layouts such as Qwen2.5-VL's
  ``visual.``/``model.layers.``, renamed by ``rename_source_key``), the base-model prefix, tied weights
  (present when either end is), ``_keys_to_ignore_on_load_missing/unexpected`` and the old ``position_ids`` /
  ``rotary_emb.inv_freq`` buffers it drops;
* sharded checkpoints: the keys are read from every shard's header that the index names (an index that lists a
  key its shard lacks has that key missing), and non-persistent buffers are not state-dict keys at all.

A component whose config says it is pre-quantised, or whose folder holds no safetensors, is not checked (its
library's own loader decides). Text encoders of a pipeline may lack ``lm_head`` (the pipelines read hidden
states only; the critic checks for the head itself, :func:`flenwheel.models.critic.has_lm_head`).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flenwheel.core.errors import FlenwheelError

log = logging.getLogger(__name__)

DIFFUSERS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")
TRANSFORMERS_FILES = ("model.safetensors", "model.safetensors.index.json")
SHOWN = 5  # keys named in the one-line error
# Pipelines read their text encoders' hidden states; an encoder saved without its output layer still encodes.
PIPELINE_OPTIONAL_MISSING: dict[str, tuple[str, ...]] = {"text_encoder": (r"^lm_head\.",)}


class CheckpointMismatch(FlenwheelError, ValueError):
    """A checkpoint's tensors do not fit the class that would load them; the message names the first keys."""


@dataclass(frozen=True)
class KeyReport:
    """How one component's checkpoint fits its class."""

    missing: list[str]
    unexpected: list[str]


# --------------------------------------------------------------------------- checkpoint side


def safetensors_keys(path: Path) -> set[str]:
    """Tensor names of a .safetensors file from its header alone (8-byte little-endian length, then JSON)."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointMismatch(f"{path} is not a safetensors file (shorter than its header)")
        (n,) = struct.unpack("<Q", head)
        if n > 100 << 20:
            raise CheckpointMismatch(f"{path} is not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise CheckpointMismatch(f"{path} has a corrupt safetensors header") from None
    return {k for k in header if k != "__metadata__"}


def checkpoint_keys(folder: Path, files: Sequence[str]) -> tuple[set[str], bool] | None:
    """Tensor names of the checkpoint in ``folder`` (``files``: single-file name, index name) and whether it is
    sharded; None when the folder holds neither. A shard the index names must exist."""
    single, index = folder / files[0], folder / files[1]
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointMismatch(f"{index} is not a safetensors index (no weight_map)") from None
        keys: set[str] = set()
        for shard in shards:
            if not (folder / shard).is_file():
                raise CheckpointMismatch(f"{index} names the shard {shard}, which is not in {folder}")
            keys |= safetensors_keys(folder / shard)
        return keys, True
    if single.is_file():
        return safetensors_keys(single), False
    return None


# --------------------------------------------------------------------------- class side


def _is_diffusers_model(cls: type) -> bool:
    from diffusers import ModelMixin

    return isinstance(cls, type) and issubclass(cls, ModelMixin)


def _is_transformers_model(cls: type) -> bool:
    from transformers import PreTrainedModel

    return isinstance(cls, type) and issubclass(cls, PreTrainedModel)


def _config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def meta_model(cls: type, folder: Path) -> Any:
    """The model ``cls`` as the config in ``folder`` describes it, built on the meta device: its shapes and
    state-dict keys without a byte of weights (also how :mod:`flenwheel.models.memory` counts a model before it
    loads)."""
    from accelerate import init_empty_weights

    if _is_diffusers_model(cls):
        with init_empty_weights():
            return cls.from_config(cls.load_config(folder))
    from transformers.initialization import no_init_weights

    config = cls.config_class.from_pretrained(str(folder))
    with init_empty_weights(), no_init_weights():
        return cls._from_config(config)


def _diffusers_report(cls: type, folder: Path, keys: set[str], sharded: bool) -> KeyReport:
    model = meta_model(cls, folder)
    expected = set(model.state_dict())
    if not sharded:  # diffusers renames deprecated attention-block keys of single-file checkpoints only
        keys = set(model._fix_state_dict_keys_on_load(dict.fromkeys(keys)))
    unexpected = keys - expected
    for pattern in getattr(cls, "_keys_to_ignore_on_load_unexpected", None) or ():
        unexpected = {k for k in unexpected if re.search(pattern, k) is None}
    return KeyReport(sorted(expected - keys), sorted(unexpected))


def _transformers_report(cls: type, folder: Path, keys: set[str]) -> KeyReport:
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    model = meta_model(cls, folder)
    meta = model.state_dict()
    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    prefix = model.base_model_prefix
    loaded: set[str] = set()
    unexpected: set[str] = set()
    for key in keys:  # as transformers' convert_and_load_state_dict_in_model matches a checkpoint key
        renamed, _ = rename_source_key(key, renamings, converters, prefix, meta)
        if renamed not in meta and key in meta:
            renamed, _ = rename_source_key(key, [], [], base_model_prefix=prefix, meta_state_dict=meta)
        (loaded if renamed in meta else unexpected).add(renamed if renamed in meta else key)
    missing = set(meta) - loaded
    for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        if target in missing and source not in missing:
            missing.discard(target)
        elif source in missing and target not in missing:
            missing.discard(source)
    ignore_missing = set(model._keys_to_ignore_on_load_missing or ())
    ignore_unexpected = set(model._keys_to_ignore_on_load_unexpected or ())
    buffers = [name for name, _ in model.named_buffers()]
    if any(b.endswith("rotary_emb.inv_freq") for b in buffers):
        ignore_unexpected.add(r"rotary_emb\.inv_freq")
    if any(b.endswith("position_ids") for b in buffers):
        ignore_unexpected.add(r"(^|\.)position_ids$")
    missing = {k for k in missing if not any(re.search(p, k) for p in ignore_missing)}
    unexpected = {k for k in unexpected if not any(re.search(p, k) for p in ignore_unexpected)}
    return KeyReport(sorted(missing), sorted(unexpected))


def key_report(cls: type, folder: Path) -> KeyReport | None:
    """How the checkpoint in ``folder`` fits ``cls`` (a diffusers or transformers model class); None when it is
    not checked (no safetensors, pre-quantised, or not a model class)."""
    diffusers_model, transformers_model = _is_diffusers_model(cls), _is_transformers_model(cls)
    if not (diffusers_model or transformers_model):
        return None
    if "quantization_config" in _config(folder):
        log.info(f"{folder}: a pre-quantised checkpoint, its keys are left to {cls.__name__}'s loader")
        return None
    found = checkpoint_keys(folder, DIFFUSERS_FILES if diffusers_model else TRANSFORMERS_FILES)
    if found is None:
        log.info(f"{folder}: no safetensors checkpoint, its keys are left to {cls.__name__}'s loader")
        return None
    keys, sharded = found
    try:
        if diffusers_model:
            return _diffusers_report(cls, folder, keys, sharded)
        return _transformers_report(cls, folder, keys)
    except (OSError, ValueError, TypeError, KeyError) as e:  # no usable config: the loader says what is wrong
        log.info(f"{folder}: {cls.__name__} cannot be built from its config ({type(e).__name__}): left to its loader")
        return None


def _first(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > SHOWN else shown


def check_component(
    cls: type, folder: Path, checkpoint: str | Path, component: str, optional_missing: Iterable[str] = ()
) -> None:
    """Raise :class:`CheckpointMismatch` unless the checkpoint in ``folder`` gives ``cls`` every weight it has and
    nothing else (``optional_missing``: patterns of keys that may be missing)."""
    report = key_report(cls, Path(folder))
    if report is None:
        return
    optional = [re.compile(p) for p in optional_missing]
    missing = [k for k in report.missing if not any(p.search(k) for p in optional)]
    if len(missing) < len(report.missing):
        log.info(f"{checkpoint}: {component} has no {', '.join(sorted(set(report.missing) - set(missing)))}")
    if not missing and not report.unexpected:
        return
    parts = [f"{len(missing)} weight(s) missing: {_first(missing)}"] if missing else []
    if report.unexpected:
        parts.append(f"{len(report.unexpected)} unexpected: {_first(report.unexpected)}")
    raise CheckpointMismatch(
        f"checkpoint {checkpoint}: component {component} ({cls.__name__}) does not match its class, "
        f"{'; '.join(parts)}; it would load with weights made up (a damaged download or another layout)"
    )


def component_class(library: str, class_name: str) -> type | None:
    """The class a model_index.json entry names: from diffusers, transformers, a module already imported (the
    reference VIBE module registered for a load) or flenwheel itself; nothing is imported on a checkpoint's say."""
    if library in sys.modules:
        module: Any = sys.modules[library]
    elif library in ("diffusers", "transformers") or library.split(".")[0] == "flenwheel":
        try:
            module = importlib.import_module(library)
        except ModuleNotFoundError:  # a module of an older flenwheel: its pipeline maps it (VIBE's LEGACY_LIBRARIES)
            return None
    else:
        return None
    return getattr(module, class_name, None)


def check_pipeline(folder: str | Path, skip: Iterable[str] = ()) -> None:
    """Check every model component of the diffusers pipeline in ``folder`` (see :func:`check_component`), except
    those in ``skip`` (components the caller passes in itself)."""
    folder = Path(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return  # not a pipeline folder: from_pretrained says so
    skipped = set(skip)
    for name, entry in sorted(index.items()):
        if name.startswith("_") or name in skipped or not (isinstance(entry, list) and len(entry) == 2):
            continue
        library, class_name = entry
        if not (isinstance(library, str) and isinstance(class_name, str)) or not (folder / name).is_dir():
            continue
        cls = component_class(library, class_name)
        if cls is not None:
            optional = next((v for k, v in PIPELINE_OPTIONAL_MISSING.items() if name.startswith(k)), ())
            check_component(cls, folder / name, folder, name, optional)
