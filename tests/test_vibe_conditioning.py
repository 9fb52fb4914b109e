"""What the vibe pipeline gives each model, checked against the reference (ai-forever/VIBE, commit 1db4fb4).

The reference editor (``vibe/editor.py``) builds a letterboxed copy of the input but passes the *original*
``conditioning_image`` to its pipeline, which hands that original to Qwen3-VL and resizes it to the size bin
(aspect ratio not kept) for the DC-AE (``vibe_sana_pipeline.py``: ``self.image_processor.preprocess(
conditioning_image, height=height, width=width)``). Ours does the same, on the tiny twin loaded through
``from_pretrained``; the output is the whole canvas stretched back, so it lies on the input pixel for pixel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from flenwheel.models.vibe.pipeline import VibePipeline

PROMPT = "Relight with soft even studio lighting; keep the person unchanged."


@pytest.fixture(scope="module")
def pipe(tiny_models: dict[str, Path]) -> VibePipeline:
    p = VibePipeline.from_pretrained(tiny_models["vibe"], dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


def run(pipe: VibePipeline, image: Image.Image, **kw: Any) -> Any:
    generator = torch.Generator("cpu").manual_seed(0)
    return pipe(image=image, prompt=PROMPT, num_inference_steps=1, generator=generator, **kw)


def test_the_vlm_reads_the_original_and_the_vae_the_original_stretched_to_the_bin(
    pipe: VibePipeline, faces: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = Image.open(faces / "obama" / "obama_small.jpg").convert("RGB")  # 320x240: 4:3, its bin is 576x416
    seen: dict[str, Any] = {}
    vlm_inputs, encode = pipe.vlm_inputs, pipe.vae.encode

    def spy_vlm(image: Image.Image, instruction: str) -> dict[str, torch.Tensor]:
        seen["vlm"] = image.copy()
        return vlm_inputs(image, instruction)

    def spy_encode(pixels: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen["vae"] = pixels.detach().clone()
        return encode(pixels, *args, **kwargs)

    monkeypatch.setattr(pipe, "vlm_inputs", spy_vlm)
    monkeypatch.setattr(pipe.vae, "encode", spy_encode)
    out = run(pipe, photo)

    # Qwen3-VL: the photo itself, not a padded canvas (its processor fits it into the VLM pixel budget)
    assert seen["vlm"].size == photo.size and np.array_equal(np.asarray(seen["vlm"]), np.asarray(photo))
    # the DC-AE: the photo resized to the bin whatever its aspect ratio, exactly as the reference pipeline calls it
    height, width = pipe.binned_size(240, 320)
    assert (height, width) == (416, 576) and out.canvas_size == (576, 416)
    assert torch.equal(seen["vae"], pipe.image_processor.preprocess(photo, height=height, width=width))
    # no black bars: the canvas's outer columns are the photo's outer columns, not padding
    edges = seen["vae"][0, :, :, [0, -1]]
    assert float(edges.max()) > -0.5 and out.content_box == (0, 0, 576, 416)


def test_the_output_is_the_whole_canvas(pipe: VibePipeline, faces: Path) -> None:
    photo = Image.open(faces / "obama" / "obama_small.jpg").convert("RGB")
    out = run(pipe, photo)
    assert out.images[0].size == photo.size == out.input_size
    kept = run(pipe, photo, revert_resize=False)
    assert kept.images[0].size == kept.canvas_size == (576, 416)  # nothing cropped off: there is no padding
    plain = run(pipe, photo, resolution_binning=False, revert_resize=False)
    assert plain.images[0].size == plain.canvas_size == (320, 224)  # no binning: the VAE's multiple below


def reference_crop_box(height: int, width: int, orig_h: int, orig_w: int) -> tuple[int, int, int, int]:
    """The letterbox crop coordinates of the reference editor (vibe/utils/img_utils.py get_multiscale_transform,
    crop=False), which it cuts out of the pipeline's output before resizing it back."""
    if height / orig_h < width / orig_w:
        rh, rw = height, int(orig_w * height / orig_h)
    else:
        rh, rw = int(orig_h * width / orig_w), width
    left, top = (width - rw) // 2, (height - rh) // 2
    right, bottom = width - rw - left, height - rh - top
    return left, top, width - right, height - bottom


@pytest.mark.parametrize("name", ["obama/obama_1.jpg", "obama/obama_small.jpg", "kit_harington/kit_1.jpg"])
def test_the_output_path_maps_the_canvas_back_onto_the_input(pipe: VibePipeline, faces: Path, name: str) -> None:
    """The geometry on its own, on real photos: the canvas the DC-AE was given, put through the output path,
    lands back on the input (what the preservation verifier compares); the reference editor's crop of a letterbox
    box out of that same canvas zooms it against the input by the padding's share."""
    photo = Image.open(faces / name).convert("RGB")
    w, h = photo.size
    height, width = pipe.binned_size(h, w)
    pixels = pipe.image_processor.preprocess(photo, height=height, width=width)
    canvas = pipe.image_processor.postprocess(pixels, output_type="pil")[0]  # the condition, as an image

    def error(img: Image.Image) -> float:
        return float(np.abs(np.asarray(img, dtype=np.float32) - np.asarray(photo, dtype=np.float32)).mean())

    ours = error(pipe.restore(canvas, photo.size))
    reference = error(canvas.crop(reference_crop_box(height, width, h, w)).resize(photo.size, Image.LANCZOS))
    assert ours < 4.0, ours  # resampling only (mean absolute error out of 255)
    assert reference > 3 * ours, (reference, ours)
