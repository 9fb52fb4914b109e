"""LoRA stacks: which LoRAs a stage applies for a prompt category, where their files are, and the sampling
settings the stack asks for (Lightning needs 4-8 steps and no CFG)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download

from flenwheel.core.config import LoraSpec, StageSettings
from flenwheel.core.files import file_sha256
from flenwheel.models.refs import HUB_ID, ModelError, hub_offline
from flenwheel.store.workspace import Workspace

# --------------------------------------------------------------------------- LoRAs


@dataclass(frozen=True)
class StackEntry:
    name: str
    spec: LoraSpec
    scale: float


def lora_stack(
    ws: Workspace, stage: StageSettings, category: str | None, extra: list[StackEntry] = ()
) -> list[StackEntry]:
    """The stage's stack for a prompt category: its 'default' LoRAs, the category's, then ``extra``."""
    library = ws.loras()
    uses = [*stage.loras.get("default", []), *(stage.loras.get(category, []) if category else [])]
    entries = [StackEntry(u.name, library[u.name], library[u.name].scale if u.scale is None else u.scale) for u in uses]
    return [*entries, *extra]


def resolve_lora_file(spec: LoraSpec, ws: Workspace, catalog: Any | None = None) -> tuple[Path, str]:
    """The local .safetensors file of a LoRA and its pinned ref."""
    ref = spec.ref
    if ref.startswith("catalog:"):
        if catalog is None:
            raise ModelError(f"LoRA {ref} needs the catalog to be resolved")
        lora_id = ref.removeprefix("catalog:")
        found = catalog.lora_file(lora_id, ws.root)
        if found is None:
            raise ModelError(f"LoRA {ref}: no such lora_id in the catalog (flenwheel sql 'SELECT lora_id FROM loras')")
        path, sha = found
        return path, f"{ref}@sha256:{sha[:16]}"
    local = Path(ref).expanduser()
    if local.exists():
        file = local / (spec.weight_name or "pytorch_lora_weights.safetensors") if local.is_dir() else local
        if not file.is_file():
            raise ModelError(f"LoRA {ref}: {file} not found")
        return file.resolve(), f"{file.resolve()}@sha256:{file_sha256(file)[:16]}"
    repo_id, _, revision = ref.partition("@")
    if not HUB_ID.match(repo_id):
        raise ModelError(f"LoRA ref {ref!r} is neither a local file or folder, a hub id, nor catalog:<lora_id>")
    return _hub_file(repo_id, spec.weight_name or _only_safetensors(repo_id, revision or spec.revision), revision)


def _only_safetensors(repo_id: str, revision: str | None) -> str:
    """The one .safetensors file of a hub LoRA repo whose entry names no ``weight_name`` (diffusers'
    ``load_lora_weights`` picks it the same way); found in the cache's snapshot, or an error saying what to set."""
    from huggingface_hub import snapshot_download

    how = f"set weight_name for {repo_id} in configs/loras.yaml, or run `hf download {repo_id}` and copy the cache here"
    try:
        folder = Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=["*.safetensors"], local_files_only=True)
        )
    except Exception:
        raise ModelError(f"LoRA {repo_id} is not in the Hugging Face cache: {how}") from None
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors"))
    if len(files) != 1:
        raise ModelError(f"LoRA {repo_id} holds {len(files)} .safetensors files ({', '.join(files[:3])}): {how}")
    return files[0]


def _hub_file(repo_id: str, filename: str, revision: str | None) -> tuple[Path, str]:
    try:
        path = Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=True))
    except Exception:
        if hub_offline():
            raise ModelError(
                f"LoRA {repo_id}/{filename} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                f"run `hf download {repo_id} {filename}` where there is internet and copy the cache here"
            ) from None
        try:
            path = Path(hf_hub_download(repo_id, filename, revision=revision))
        except Exception as e:
            raise ModelError(
                f"LoRA {repo_id}/{filename} is not cached and could not be downloaded ({type(e).__name__}): "
                f"run `hf download {repo_id} {filename}` where there is internet and copy the cache here"
            ) from None
    commit = path.parent.name if path.parent.parent.name == "snapshots" else (revision or "local")
    return path, f"{repo_id}/{filename}@{commit}"


@dataclass
class Sampling:
    """Sampling settings after the stack's LoRAs had their say (Lightning needs 4-8 steps and no CFG)."""

    steps: int
    true_cfg_scale: float | None
    guidance: float | None
    negative_prompt: str
    width: int | None
    height: int | None

    @classmethod
    def for_stack(cls, stage: StageSettings, stack: list[StackEntry]) -> Sampling:
        s = cls(stage.steps, stage.true_cfg_scale, stage.guidance, stage.negative_prompt, stage.width, stage.height)
        for entry in stack:
            s.steps = entry.spec.steps or s.steps
            s.true_cfg_scale = entry.spec.true_cfg_scale or s.true_cfg_scale
            s.guidance = entry.spec.guidance if entry.spec.guidance is not None else s.guidance
        return s


def stack_key(stack: list[StackEntry]) -> tuple:
    return tuple((e.name, e.spec.ref, e.spec.weight_name, e.scale) for e in stack)
