"""The ``augment`` editor: CPU transforms that stand in for edit prompts, so the whole flywheel runs on a laptop.

Reframing and small rotations around the face, mirror, close-up crops, lighting and colour shifts, background
replacement with OpenCV GrabCut seeded by the face box, and clothing recolouring below the face; each prompt
entry's ``augment`` spec says which.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageEnhance

from flenwheel.catalog import code_version
from flenwheel.core.config import AugmentSpec, PromptEntry
from flenwheel.editing.jobs import Box, EditError, EditJob, Editor, EditResult
from flenwheel.editing.masks import face_or_centre, person_matte


def _affine(
    rgb: np.ndarray, centre: tuple[float, float], zoom: float, rotate: float, shift: tuple[float, float]
) -> np.ndarray:
    """Zoom and rotate about ``centre`` (which stays put), then move the view by ``shift`` image sizes.

    When zooming in, the shift is clamped so no border shows; when zooming out, borders repeat the edge
    pixels (mirroring them would paint a second, upside-down head above the first).
    """
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D(centre, rotate, zoom)
    dx, dy = shift[0] * w, shift[1] * h
    if zoom >= 1:
        dx = float(np.clip(dx, -(zoom - 1) * (w - centre[0]), (zoom - 1) * centre[0]))
        dy = float(np.clip(dy, -(zoom - 1) * (h - centre[1]), (zoom - 1) * centre[1]))
    m[0, 2] += dx
    m[1, 2] += dy
    return cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


class AugmentEditor(Editor):
    """CPU transforms standing in for edit prompts (see the module docstring)."""

    name = "augment"
    op = "augment"

    def fingerprint(self, prompt: PromptEntry) -> dict[str, Any]:
        return {"editor": "augment", "version": 1}

    def supports(self, prompt: PromptEntry) -> bool:
        return prompt.augment is not None

    def edit(self, image: Image.Image, job: EditJob, face_box: Box | None) -> EditResult:
        spec = job.prompt.augment
        if spec is None:
            raise EditError(f"prompt {job.prompt.id} has no augment transform")
        rng = np.random.default_rng(job.seed)
        rgb = np.asarray(image.convert("RGB"))
        out, applied = self._apply(rgb, spec, job.prompt.strength, rng, face_box)
        return EditResult(
            image=Image.fromarray(out),
            op=self.op,
            model_ref=f"flenwheel.augment@{code_version()}",
            prompt=job.prompt.prompt,
            prompt_id=job.prompt.id,
            seed=job.seed,
            strength=job.prompt.strength,
            params={"augment": applied, "face_box": list(face_box) if face_box else None},
        )

    def _apply(
        self, rgb: np.ndarray, spec: AugmentSpec, strength: float, rng: np.random.Generator, box: Box | None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        h, w = rgb.shape[:2]
        cx, cy, side = face_or_centre(box, w, h)
        jitter = float(rng.uniform(-1, 1))  # one draw per job: seeds give different but reproducible variants
        if spec.op == "mirror":
            out = _affine(rgb[:, ::-1].copy(), (w - cx, cy), 1.0 + 0.03 * abs(jitter), 2.0 * jitter, (0, 0))
            return out, {"op": "mirror", "zoom": 1.0 + 0.03 * abs(jitter), "rotate": 2.0 * jitter}
        if spec.op == "reframe":
            zoom = 1.0 + (spec.zoom - 1.0) * strength + 0.04 * jitter
            rotate = spec.rotate * strength + 2.0 * jitter
            shift = (spec.shift_x * strength, spec.shift_y * strength)
            out = _affine(rgb, (cx, cy), zoom, rotate, shift)
            return out, {"op": "reframe", "zoom": zoom, "rotate": rotate, "shift": list(shift)}
        if spec.op == "crop_face":
            crop = side * 4.0 / (1.0 + (spec.zoom - 1.0) * strength) * (1.0 + 0.05 * jitter)
            crop = min(crop, min(w, h))
            x0 = int(np.clip(cx - crop / 2, 0, w - crop))
            y0 = int(np.clip(cy - crop / 2, 0, h - crop))
            region = rgb[y0 : y0 + int(crop), x0 : x0 + int(crop)]
            out = cv2.resize(region, (w, h), interpolation=cv2.INTER_CUBIC)
            return out, {"op": "crop_face", "crop": [x0, y0, int(crop)]}
        if spec.op == "light":
            img = Image.fromarray(rgb)
            brightness = 1 + (spec.brightness - 1) * strength + 0.03 * jitter
            contrast = 1 + (spec.contrast - 1) * strength
            img = ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(brightness)).enhance(contrast)
            arr = np.asarray(img).astype(np.float32)
            warmth = spec.warmth * strength
            arr[..., 0] *= 1 + 0.25 * warmth
            arr[..., 2] *= 1 - 0.25 * warmth
            out = np.clip(arr, 0, 255).astype(np.uint8)
            return out, {"op": "light", "brightness": brightness, "contrast": contrast, "warmth": warmth}
        if spec.op == "background":
            mask = person_matte(rgb, box)[..., None]
            shade = np.clip(np.array(spec.color, np.float32) * (1 + 0.05 * jitter), 0, 255)
            backdrop = np.broadcast_to(shade, rgb.shape)
            mixed = rgb * mask + backdrop * (1 - mask)
            out = (rgb * (1 - strength) + mixed * strength) if strength < 1 else mixed
            return np.clip(out, 0, 255).astype(np.uint8), {"op": "background", "color": shade.round().tolist()}
        if spec.op == "recolor_body":
            mask = person_matte(rgb, box)
            body = np.zeros((h, w), np.float32)
            body[int(min(h, cy + 0.75 * side)) :, :] = 1.0  # below the chin
            weight = (mask * body * min(strength, 1.0))[..., None]
            hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
            hsv[..., 0] = (spec.hue * 180 + 4 * jitter) % 180
            hsv[..., 1] = np.clip(hsv[..., 1] * spec.saturation + 40 * spec.saturation, 0, 255)
            recoloured = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
            out = rgb * (1 - weight) + recoloured * weight
            return np.clip(out, 0, 255).astype(np.uint8), {"op": "recolor_body", "hue": spec.hue}
        raise EditError(f"unknown augment op {spec.op}")
