"""Model refs: a hub id, a local folder or a tiny twin, turned into a local folder and a pinned version.

A model ref is one of:
* a hub id with an optional revision, ``Qwen/Qwen-Image-Edit-2509`` or ``black-forest-labs/FLUX.1-dev@main``:
  loaded from the Hugging Face cache, downloaded only when the hub can be reached;
* a local folder holding a diffusers pipeline (``model_index.json``);
* ``tiny:<family>`` (``tiny:qwen-image-edit``, ``tiny:flux``, ``tiny:flux2-klein``, ...): the tiny random-weight
  twins (:mod:`flenwheel.models.twins`), built under ``<root>/models/tiny`` on first use.

What a profile asks for (dtype, nf4 components, CPU offload, VAE tiling) is data in configs/profiles; this
module only carries it out. Every loaded model and LoRA is recorded as a ref string that pins its exact
version (``id@commit`` or ``path@sha256:...``), which goes into ``derivations.model_ref``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants

from flenwheel.core.config import PipelineKind
from flenwheel.core.errors import FlenwheelError
from flenwheel.core.types import HUB_ID_PATTERN
from flenwheel.models.families import UnknownFamily, family, load_object, tiny_families
from flenwheel.models.twins import ensure_models
from flenwheel.store.workspace import Workspace

HUB_ID = re.compile(HUB_ID_PATTERN)


class ModelError(FlenwheelError, RuntimeError):
    """A model cannot be loaded as asked; the message says how to fix it."""


def pipeline_class(kind: PipelineKind) -> type:
    """The pipeline class of the family ``kind`` (its ``family.py``)."""
    try:
        return load_object(family(kind).pipeline_class)
    except UnknownFamily as e:
        raise ModelError(str(e)) from None


def pipeline_class_name(kind: PipelineKind) -> str:
    return family(kind).pipeline_class.rpartition(":")[2]


# --------------------------------------------------------------------------- refs


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # local folder that from_pretrained reads
    ref: str  # exact version, for the catalog


def folder_digest(path: Path, full_content_below: int = 64 << 20) -> str:
    """A digest of a folder: file names and sizes, and the content of files below ``full_content_below``."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path).as_posix()}\0{size}\0".encode())
        if size < full_content_below:
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return "sha256:" + h.hexdigest()[:16]


def hf_cache_dir() -> str:
    return str(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def hub_snapshot(repo_id: str, kind: PipelineKind, revision: str | None = None) -> Path:
    """A local snapshot of the files the pipeline loads: from the cache, else downloaded, else a clear error.

    ``DiffusionPipeline.download`` fetches exactly what ``from_pretrained`` reads (model_index.json and its
    components' folders, safetensors over pickles), not the whole repo: FLUX.1-dev also keeps a 24 GB
    single-file checkpoint beside its diffusers folders, which would double the disk a user needs.
    """
    cls = pipeline_class(kind)
    try:
        return Path(cls.download(repo_id, revision=revision, local_files_only=True))
    except Exception:
        pass
    how = (
        f"On a machine with internet run `hf download {repo_id}` and copy the Hugging Face cache "
        f"({hf_cache_dir()}) here, or set the stage's model to a local folder."
    )
    if hub_offline():
        raise ModelError(f"weights for {repo_id} are not in the Hugging Face cache and HF_HUB_OFFLINE is set. {how}")
    try:
        return Path(cls.download(repo_id, revision=revision))
    except Exception as e:
        raise ModelError(
            f"weights for {repo_id} are not in the Hugging Face cache and could not be downloaded "
            f"({type(e).__name__}). {how}"
        ) from None


def resolve_model(spec: str, kind: PipelineKind, ws: Workspace) -> ResolvedModel:
    """Turn a model ref from config into a local folder and a pinned ref string."""
    if spec.startswith("tiny:"):
        name = spec.removeprefix("tiny:")
        if name not in tiny_families():
            raise ModelError(f"model ref {spec!r}: tiny models are {', '.join('tiny:' + k for k in tiny_families())}")
        path = ensure_models(ws.root / "models" / "tiny", "tiny", (name,))[name]
        return ResolvedModel(path, f"{spec}@{folder_digest(path)}")
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise ModelError(f"model ref {spec!r} is a folder without model_index.json: not a diffusers pipeline")
        return ResolvedModel(local.resolve(), f"{local.resolve()}@{folder_digest(local)}")
    repo_id, _, revision = spec.partition("@")
    if not HUB_ID.match(repo_id):
        raise ModelError(
            f"model ref {spec!r} is neither an existing local folder nor a hub id (org/name[@revision]) nor tiny:<kind>"
        )
    path = hub_snapshot(repo_id, kind, revision or None)
    return ResolvedModel(path, f"{repo_id}@{path.name}")  # snapshot folders are named by commit
