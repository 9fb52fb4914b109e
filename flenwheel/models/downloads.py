"""What the real models cost to download, known offline: for ``flenwheel models check``.

The hub cannot be asked from a machine without internet, and a user needs the figure *before* the download
starts (a 58 GB editor on a 40 GB disk fails an hour in). So this is a small table of known sizes, one row per
hub repo (or file, for LoRAs), each with where its figure comes from: the bf16 safetensors of the files a
pipeline loads (``DiffusionPipeline.download`` fetches model_index.json and the component folders, not the
repos' single-file checkpoints). Parameter counts are those of the published configs, counted on the meta
device (each family twin's ``SIZES["real"]``, ``flenwheel/models/<family>/twin.py``), times 2 bytes. It is data: a later
"model families as data" change can move it into configs/.

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


KNOWN_DOWNLOADS: tuple[KnownDownload, ...] = (
    KnownDownload(
        "black-forest-labs/FLUX.1-dev", None, int(33.7 * GB),
        "bf16 components: transformer 11.90 B params 23.80 GB, T5-XXL 4.76 B 9.52 GB, CLIP-L 0.25 GB, VAE 0.17 GB",
        gated=True,
    ),
    KnownDownload(
        "Qwen/Qwen-Image-Edit-2509", None, int(57.7 * GB),
        "bf16 components: transformer 20.43 B params 40.86 GB, Qwen2.5-VL-7B text encoder 8.29 B 16.58 GB, "
        "VAE 0.13 B 0.25 GB",
    ),
    KnownDownload(
        "iitolstykh/VIBE-Image-Edit", None, int(9.7 * GB),
        "SD.Next's model catalogue lists 9.72 GB; our count of its configs is 4.32 B params, 8.65 GB in bf16 "
        "(docs/editing.md: the gap is unexplained, the larger figure is taken)",
    ),
    KnownDownload(
        "Qwen/Qwen2.5-VL-7B-Instruct", None, int(16.6 * GB),
        "8.29 B params in bf16 (the critic's and the captions' VLM when the editor's text encoder lacks lm_head)",
    ),
    KnownDownload(
        "lightx2v/Qwen-Image-Lightning",
        "Qwen-Image-Edit-2509/Qwen-Image-Edit-2509-Lightning-4steps-V1.0-bf16.safetensors", int(0.8 * GB),
        "~0.8 GB, the hub's file listing as quoted in issue 22 (not checked offline)",
    ),
    KnownDownload(
        "lightx2v/Qwen-Image-Lightning",
        "Qwen-Image-Edit-2509/Qwen-Image-Edit-2509-Lightning-8steps-V1.0-bf16.safetensors", int(0.8 * GB),
        "~0.8 GB, as the 4-step file (same rank and layers; not checked offline)",
    ),
    KnownDownload(
        "dx8152/Qwen-Edit-2509-Multiple-angles", "镜头转换.safetensors", int(0.3 * GB),
        "~0.3 GB, the hub's file listing as quoted in issue 22 (not checked offline)",
    ),
)  # fmt: skip


def known_download(repo: str, filename: str | None = None) -> KnownDownload | None:
    """The table's row for a repo (``repo@revision`` is fine) or one file of it; None when the size is unknown."""
    repo = repo.partition("@")[0]
    return next((d for d in KNOWN_DOWNLOADS if d.repo == repo and d.filename == filename), None)


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
