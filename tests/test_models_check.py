"""`flenwheel models check` on a machine without the real weights: what to accept, what to download, how much
disk it takes (the sizes come from a table, flenwheel.models.downloads: the hub cannot be asked offline)."""

from __future__ import annotations

import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from flenwheel.models import downloads
from flenwheel.store.workspace import Workspace


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No GPU, no hub, an empty Hugging Face cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_models_check_names_the_gated_model_the_sizes_and_the_disk(cli, ws: Workspace, offline: Path) -> None:
    result = cli("models", "check", "--profile", "gpu-24gb")
    text = result.stdout
    assert result.exit_code == 1
    flux = "black-forest-labs/FLUX.1-dev"
    assert f"{flux} is gated: accept its licence on https://huggingface.co/{flux} with your account" in text
    assert "`hf auth login`" in text and text.count("is gated") == 1  # the other repos are not
    sizes = re.findall(r"download: ~([\d.]+) GB", text)
    # Qwen-Image-Edit-2509, its two LoRAs, FLUX.1-dev, VIBE: each with where its figure comes from
    assert sizes == ["57.7", "0.8", "0.3", "33.7", "9.7"], text
    assert "transformer 11.90 B params 23.80 GB" in text and "SD.Next's model catalogue lists 9.72 GB" in text
    assert "hf download black-forest-labs/FLUX.1-dev --include model_index.json '*/*'" in text
    line = f"download  102.2 GB for profile gpu-24gb (5 item(s)); free disk at the Hugging Face cache {offline}: "
    assert line in text
    printed = float(re.search(re.escape(line) + r"([\d.]+) GB", text).group(1))
    # the cache folder does not exist yet: the disk it would be created on (its nearest existing parent)
    assert abs(printed - shutil.disk_usage(offline.parent).free / downloads.GB) < 1.0


def test_models_check_says_how_much_disk_is_missing(cli, ws: Workspace, offline: Path, monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(
        downloads.shutil, "disk_usage", lambda _p: usage(100 * downloads.GB, 60 * downloads.GB, 40 * downloads.GB)
    )
    text = cli("models", "check", "--profile", "gpu-24gb").stdout
    assert "free disk at the Hugging Face cache" in text and ": 40.0 GB" in text
    assert "not enough disk: 62.2 GB short; free space there or point HF_HOME at a larger disk" in text


def test_cpu_tiny_needs_no_download(cli, ws: Workspace, offline: Path, tiny_models) -> None:
    result = cli("models", "check", "--profile", "cpu-tiny")
    assert result.exit_code == 0 and "download" not in result.stdout and "vlm " in result.stdout


def test_every_hub_model_and_lora_of_the_shipped_profiles_has_a_known_size(ws: Workspace) -> None:
    library = ws.loras()
    for name in ("gpu-24gb", "gpu-80gb", "gpu-24gb-open"):
        profile = ws.profile(name)
        for stage in profile.stages().values():
            assert downloads.known_download(stage.model) is not None, (name, stage.model)
            for stack in stage.loras.values():
                for use in stack:
                    spec = library[use.name]
                    assert downloads.known_download(spec.ref, spec.weight_name) is not None, (name, use.name)
        if profile.trainer.model:  # klein-base-4B: the open profile's LoRA base
            assert downloads.known_download(profile.trainer.model) is not None, (name, profile.trainer.model)
    assert downloads.known_download("Qwen/Qwen2.5-VL-7B-Instruct") is not None  # the VLM's fallback
