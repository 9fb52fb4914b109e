"""What the real models cost to download, known offline: for ``flenwheel models check``.

The hub cannot be asked from a machine without internet, and a user needs the figure *before* the download
starts (a 58 GB editor on a 40 GB disk fails an hour in). So this is a small table of known sizes, one row per
hub repo (or file, for LoRAs), each with where its figure comes from: the bf16 safetensors of the files a
pipeline loads (``DiffusionPipeline.download`` fetches model_index.json and the component folders, not the
repos' single-file checkpoints). Parameter counts are those of the published configs, counted on the meta
device (each family twin's ``SIZES["real"]``, ``flenwheel/models/<family>/twin.py``), times 2 bytes. A pipeline's
figure lives on its family's model card (``flenwheel/models/<family>/family.py``); the LoRA files' are here.

A pipeline's figure counts its component folders only: FLUX.1-dev's repo also holds a 23.8 GB single-file
checkpoint beside them, which ``hf download <repo>`` would fetch too (``--include model_index.json '*/*'`` does not).
The hub client writes each file once, into the cache's blob store (a partial file renamed when complete), so
the free disk a download needs is its size.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

GB = 10**9


@dataclass(frozen=True)
class KnownDownload:
    repo: str
    filename: str | None  # one file of the repo (a LoRA); None: the pipeline's component folders
    size: int  # bytes
    source: str  # where the figure comes from
    gated: bool = False  # the hub serves it only after its licence is accepted, to a logged-in user


# LoRA files (the pipelines' and the VLM's figures are on their cards: flenwheel/models/<family>/family.py).
LORA_FILES: tuple[KnownDownload, ...] = (
    KnownDownload(
        "lightx2v/Qwen-Image-Lightning",
        "Qwen-Image-Edit-2509/Qwen-Image-Edit-2509-Lightning-4steps-V1.0-bf16.safetensors", int(0.85 * GB),
        "850 MB, the hub's file listing (search corpus: the repo's Qwen-Image-Edit-2509/ tree)",
    ),
    KnownDownload(
        "lightx2v/Qwen-Image-Lightning",
        "Qwen-Image-Edit-2509/Qwen-Image-Edit-2509-Lightning-8steps-V1.0-bf16.safetensors", int(0.85 * GB),
        "850 MB, the hub's file listing (search corpus: the repo's Qwen-Image-Edit-2509/ tree)",
    ),
    KnownDownload(
        "dx8152/Qwen-Edit-2509-Multiple-angles", "镜头转换.safetensors", int(0.3 * GB),
        "~0.3 GB, the hub's file listing as quoted in issue 22 (not checked offline)",
    ),
    KnownDownload(
        "lightx2v/Qwen-Image-Edit-2511-Lightning", "Qwen-Image-Edit-2511-Lightning-8steps-V1.0-bf16.safetensors",
        int(0.85 * GB), "850 MB, the file's page on the hub (search corpus)",
    ),
    KnownDownload(
        "lightx2v/Qwen-Image-Edit-2511-Lightning", "Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors",
        int(0.85 * GB), "as the 8-step file (same rank and layers as 2509's pair; its name is not checked offline)",
    ),
    KnownDownload(
        "fal/Qwen-Image-Edit-2511-Multiple-Angles-LoRA", None, int(0.3 * GB),
        "not seen offline: taken as the 2509 multiple-angles LoRA's ~0.3 GB (one .safetensors file)",
    ),
)  # fmt: skip


def known_download(repo: str, filename: str | None = None) -> KnownDownload | None:
    """What a hub repo (``repo@revision`` is fine) costs to download: a pipeline's or the VLM's figure from its
    family card, or one LoRA file's; None when the size is unknown."""
    from flenwheel.models.families import card_for

    repo = repo.partition("@")[0]
    found = card_for(repo) if filename is None else None
    if found is not None and found[1].download_bytes is not None:
        card = found[1]
        return KnownDownload(card.hub_id, None, card.download_bytes, card.size_source, card.gated)
    return next((d for d in LORA_FILES if d.repo == repo and d.filename == filename), None)


def free_bytes(path: Path | str) -> int:
    """Free space on the disk ``path`` is (or would be created) on."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def gb(size: int) -> str:
    return f"{size / GB:.1f} GB"


def gated_note(repo: str) -> str:
    return (
        f"{repo} is gated: accept its licence on https://huggingface.co/{repo} with your account, then log in "
        "with a token that can read it (`hf auth login`, or HF_TOKEN) before downloading"
    )
