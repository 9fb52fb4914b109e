"""Random-weight models of the real shapes, written as the profile reads them (the transformers in nf4), and LoRA
files of the real module shapes."""

from __future__ import annotations

import functools
import gc
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from bench.gpu.common import MODEL_PARTS, PIPELINES, QUANTISED
from bench.gpu.meter import now


@functools.cache
def meta_pipeline(kind: str, size: str) -> Any:
    """The pipeline of ``kind`` as ``flenwheel.models.twins`` makes it, on the meta device: its components' configs and
    module shapes, without a byte of weights; the same makers as the tests' twins, so the bench can never drift from
    the configs they use."""
    import torch

    from flenwheel.models.twins import make_pipeline

    with torch.device("meta"):
        return make_pipeline(kind, 0, size)


def built(folder: Path, part: str) -> bool:
    return (folder / ("model_index.json" if part == "base" else f"{part}/config.json")).is_file()


def build_parts(kind: str, parts: Sequence[str], size: str, folder: Path) -> None:
    """Write the missing components of the random-weight pipeline ``kind`` into ``folder``, each atomically."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for part in parts:
        if built(folder, part):
            continue
        t0 = now()
        tmp = Path(tempfile.mkdtemp(prefix=f".{part}-", dir=folder))
        try:
            if part == "base":
                _build_base(kind, tmp, folder)
            else:
                _build_model(kind, part, size, tmp / part)
                os.replace(tmp / part, folder / part)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        print(f"built {kind}/{part} ({size}) in {now() - t0:.0f} s", flush=True)


def _build_base(kind: str, tmp: Path, folder: Path) -> None:
    """model_index.json, scheduler, tokenizers and processor: the same at every size, taken from a tiny build."""
    from flenwheel.models.twins import ensure_models

    src = ensure_models(tmp, "tiny", (kind,))[kind]
    for entry in sorted(src.iterdir(), key=lambda p: p.name == "model_index.json"):  # the index last: the marker
        if entry.name not in MODEL_PARTS[kind]:
            shutil.rmtree(folder / entry.name, ignore_errors=True)
            os.replace(entry, folder / entry.name)


def _build_model(kind: str, part: str, size: str, out: Path) -> None:
    """One component with random weights: bf16 on the GPU for real sizes (fp32 on the CPU for tiny), saved as the
    profile reads it: the real transformer in nf4, everything else as the hub holds it (bf16)."""
    import torch
    from diffusers import ModelMixin

    meta = getattr(meta_pipeline(kind, size), part)
    real = size == "real"
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if real else torch.float32)
    try:
        with torch.device("cuda" if real else "cpu"):
            model = type(meta).from_config(meta.config) if isinstance(meta, ModelMixin) else type(meta)(meta.config)
    finally:
        torch.set_default_dtype(default)
    if real and part == "transformer" and kind in QUANTISED:
        model = _nf4(model, out.parent)
    model.save_pretrained(out)


def _nf4(model: Any, scratch: Path) -> Any:
    """``model`` quantised to nf4 by diffusers' own loader (the code that quantises a bf16 hub snapshot when
    load_pipeline or the trainer asks for nf4), fed the in-memory weights instead of a 41 GB file on disk."""
    import diffusers.models.modeling_utils as modeling_utils
    import torch
    from diffusers import BitsAndBytesConfig

    state = model.state_dict()
    src = scratch / "bf16-config"
    src.mkdir()
    model.save_config(src)
    (src / "diffusion_pytorch_model.safetensors").touch()  # found, never read: the state comes from memory
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    with mock.patch.object(modeling_utils, "load_state_dict", lambda *_a, **_k: state):
        return type(model).from_pretrained(src, quantization_config=quant, dtype=torch.bfloat16, use_safetensors=True)


def lora_target(name: str, targets: Sequence[str] | None) -> bool:
    """Whether a Linear gets a LoRA: peft's suffix rule for ``targets``; None: every Linear inside a block."""
    if targets is None:
        return "transformer_blocks." in name
    return any(name == t or name.endswith("." + t) for t in targets)


def write_lora(
    kind: str, size: str, path: Path, rank: int, targets: Sequence[str] | None, seed: int
) -> tuple[Path, int]:
    """A LoRA file of the real module shapes with random weights (``targets``: peft name suffixes, matched as peft
    matches them; None: every Linear of the transformer blocks), saved with the pipeline's save_lora_weights;
    returns the file and the number of adapted modules."""
    import diffusers
    import torch

    transformer = meta_pipeline(kind, size).transformer
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.bfloat16 if size == "real" else torch.float32
    layers: dict[str, torch.Tensor] = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and lora_target(name, targets):
            a = torch.randn(rank, module.in_features, generator=gen) / math.sqrt(module.in_features)
            b = torch.randn(module.out_features, rank, generator=gen) * 0.01
            layers[f"{name}.lora_A.weight"], layers[f"{name}.lora_B.weight"] = a.to(dtype), b.to(dtype)
    getattr(diffusers, PIPELINES[kind]).save_lora_weights(
        path.parent, transformer_lora_layers=layers, weight_name=path.name
    )
    return path, len(layers) // 2
