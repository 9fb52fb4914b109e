"""Training data: examples, aspect-ratio buckets that never upscale, and the common exported folder layout."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from flenwheel.catalog import Catalog
from flenwheel.store.workspace import Workspace
from flenwheel.training.checkpoints import atomic_dir, commit_dir

LATENT_MULTIPLE = 16  # VAE x8 and 2x2 latent packing: image sides must be multiples of 16


@dataclass(frozen=True)
class Example:
    """One training item: ``key`` names it in the cache; ``images`` are store paths; ``text`` the caption."""

    key: str
    images: tuple[Path, ...]
    text: str


def bucket_size(width: int, height: int, resolution: int, multiple: int = LATENT_MULTIPLE) -> tuple[int, int]:
    """The bucket for an image: about ``resolution**2`` pixels at the image's aspect, never larger than the image."""
    aspect = width / height
    bw = math.sqrt(resolution * resolution * aspect)
    bh = bw / aspect
    shrink = min(1.0, width / bw, height / bh)  # never upscale
    bw, bh = bw * shrink, bh * shrink
    return max(multiple, int(bw // multiple) * multiple), max(multiple, int(bh // multiple) * multiple)


def bucket_resolution(key: str, resolutions: Sequence[int]) -> int:
    """The bucket base size of one example: a function of the example alone (its cache key), so a resumed or
    partly cached run puts every example in the same bucket as a fresh run."""
    return resolutions[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(resolutions)]


def fit_to_bucket(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to cover ``size`` and centre-crop (aspect kept, no upscaling beyond the bucket rule)."""
    w, h = size
    scale = max(w / img.width, h / img.height)
    resized = img.resize(
        (max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.Resampling.LANCZOS
    )
    left, top = (resized.width - w) // 2, (resized.height - h) // 2
    return resized.crop((left, top, left + w, top + h))


def export_version(ws: Workspace, catalog: Catalog, version_id: str) -> Path:
    """The version in the common trainer layout: ``<image_id>.png`` + ``<image_id>.txt`` (trigger in the caption).

    Also writes ``metadata.jsonl`` (``file_name``, ``text``) so kohya, ai-toolkit and diffusers' scripts can
    train on the same folder. Idempotent: an existing complete export is left as it is.
    """
    members = catalog.version_members(version_id)
    out = ws.root / "exports" / version_id.replace("@", "_")
    if (out / "metadata.jsonl").exists():
        return out
    tmp = atomic_dir(out)
    try:
        lines = []
        for m in members:
            src = ws.root / m["path"]
            dst = tmp / f"{m['image_id']}.png"
            link_or_copy(src, dst)
            (tmp / f"{m['image_id']}.txt").write_text(m["caption"] + "\n", encoding="utf-8")
            lines.append(json.dumps({"file_name": dst.name, "text": m["caption"]}, ensure_ascii=False))
        (tmp / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        commit_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def version_examples(ws: Workspace, catalog: Catalog, version_id: str) -> list[Example]:
    """The members of a frozen version as training examples (caption with the trigger word)."""
    return [Example(m["image_id"], (ws.root / m["path"],), m["caption"]) for m in catalog.version_members(version_id)]


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` with the bytes of ``src``: a hard link into the store where the filesystem allows, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
