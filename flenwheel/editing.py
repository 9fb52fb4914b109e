"""Editors that turn a source photo into a variant, and the bookkeeping that makes each variant reproducible.

* ``qwen`` — Qwen-Image-Edit-2509 (``QwenImageEditPlusPipeline``) through the model runtime, with the profile's
  LoRA stack for the prompt's category (e.g. Lightning + multiple-angles for ``angles``).
* ``augment`` — CPU only, no weights: reframing and small rotations around the face, mirror, close-up crops,
  lighting and colour shifts, background replacement with OpenCV GrabCut seeded by the face box, and
  clothing recolouring below the face. It stands in for the prompt's intent (the prompt entry's
  ``augment`` spec), so the whole flywheel runs on a laptop.

An :class:`EditJob` is (source image, prompt entry, seed). Its ``job_key`` hashes everything that determines
the output (editor, model ref, prompt, seed, steps, guidance, LoRAs, sizes), so a job is done exactly when a
derivation with that key exists: re-running an enrichment does nothing new, and changing a setting makes new
jobs instead of silently reusing old images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageEnhance

from flenwheel.catalog import Catalog, DerivationRecord, ImageRecord, code_version
from flenwheel.config import AugmentSpec, Character, PromptEntry, Workspace
from flenwheel.errors import FlenwheelError

Box = tuple[int, int, int, int]


class EditError(FlenwheelError):
    """An edit cannot run as asked."""


@dataclass(frozen=True)
class EditJob:
    parent_id: str
    prompt: PromptEntry
    seed: int


@dataclass
class EditResult:
    """An edited image and the derivation fields that reproduce it."""

    image: Image.Image
    op: str
    model_ref: str
    prompt: str
    prompt_id: str
    seed: int
    loras: list[dict[str, Any]] = field(default_factory=list)
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None
    params: dict[str, Any] = field(default_factory=dict)


def job_key(editor_fingerprint: dict[str, Any], job: EditJob) -> str:
    payload = {
        "editor": editor_fingerprint,
        "parent": job.parent_id,
        "prompt": job.prompt.model_dump(mode="json"),
        "seed": job.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class Editor(ABC):
    name: str
    op: str

    @abstractmethod
    def fingerprint(self, prompt: PromptEntry) -> dict[str, Any]:
        """Everything about this editor's settings that changes its output for ``prompt``."""

    @abstractmethod
    def supports(self, prompt: PromptEntry) -> bool:
        """Whether this editor can carry out ``prompt``."""

    @abstractmethod
    def edit(self, image: Image.Image, job: EditJob, face_box: Box | None) -> EditResult:
        """Edit ``image`` (RGB) as ``job`` says; ``face_box`` is the parent's face when known."""

    def key(self, job: EditJob) -> str:
        return job_key(self.fingerprint(job.prompt), job)

    def close(self) -> None:  # noqa: B027 - editors without resources need nothing
        """Free models (the Qwen editor releases its pipeline)."""


# --------------------------------------------------------------------------- augment


def _face_or_centre(box: Box | None, w: int, h: int) -> tuple[float, float, float]:
    """Centre and size of the face, or a plausible head region when no face is known."""
    if box is None:
        side = min(w, h) * 0.35
        return w / 2, h * 0.4, side
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)


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


def person_mask(rgb: np.ndarray, box: Box | None, iterations: int = 4, work_side: int = 384) -> np.ndarray:
    """Foreground (person) mask in [0, 1] by GrabCut seeded with a body rectangle around the face."""
    h, w = rgb.shape[:2]
    scale = min(1.0, work_side / max(h, w))
    small = cv2.resize(rgb, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    cx, cy, side = _face_or_centre(box, w, h)
    cx, cy, side = cx * scale, cy * scale, side * scale
    x0, x1 = max(1, int(cx - 1.6 * side)), min(sw - 2, int(cx + 1.6 * side))
    y0, y1 = max(1, int(cy - 0.9 * side)), sh - 2
    mask = np.zeros((sh, sw), np.uint8)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return np.ones((h, w), np.float32)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models with k-means: fix it, or the same job gives new pixels
    cv2.grabCut(
        cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
        mask,
        (x0, y0, x1 - x0, y1 - y0),
        bgd,
        fgd,
        iterations,
        cv2.GC_INIT_WITH_RECT,
    )
    # The face itself is always foreground.
    fx0, fy0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
    mask[fy0 : int(cy + side / 2), fx0 : int(cx + side / 2)] = cv2.GC_FGD
    fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
    fg = cv2.GaussianBlur(fg, (0, 0), sigmaX=max(1.0, 0.01 * max(sh, sw)))  # feathered edge
    return cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR)


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
        cx, cy, side = _face_or_centre(box, w, h)
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
            mask = person_mask(rgb, box)[..., None]
            shade = np.clip(np.array(spec.color, np.float32) * (1 + 0.05 * jitter), 0, 255)
            backdrop = np.broadcast_to(shade, rgb.shape)
            mixed = rgb * mask + backdrop * (1 - mask)
            out = (rgb * (1 - strength) + mixed * strength) if strength < 1 else mixed
            return np.clip(out, 0, 255).astype(np.uint8), {"op": "background", "color": shade.round().tolist()}
        if spec.op == "recolor_body":
            mask = person_mask(rgb, box)
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


# --------------------------------------------------------------------------- qwen


class QwenEditor(Editor):
    """Qwen-Image-Edit-2509 through the model runtime; the LoRA stack follows the prompt's category."""

    name = "qwen"
    op = "edit"

    def __init__(
        self, ws: Workspace, manager: Any, catalog: Any | None = None, extra_loras: Sequence[Any] = ()
    ) -> None:
        self.ws, self.manager, self.catalog = ws, manager, catalog
        self.stage = manager.profile.editor
        self.extra_loras = list(extra_loras)  # e.g. the character's own editor LoRA (flywheel 2)

    def supports(self, prompt: PromptEntry) -> bool:
        return True

    def _stack(self, prompt: PromptEntry) -> list[Any]:
        from flenwheel.models import lora_stack

        return lora_stack(self.ws, self.stage, prompt.category, self.extra_loras)

    def fingerprint(self, prompt: PromptEntry) -> dict[str, Any]:
        from flenwheel.models import Sampling

        stack = self._stack(prompt)
        sampling = Sampling.for_stack(self.stage, stack)
        return {
            "editor": "qwen",
            "model": self.stage.model,
            "profile": self.manager.profile.name,
            "loras": [(e.name, e.spec.ref, e.spec.weight_name, e.scale) for e in stack],
            "sampling": sampling.__dict__,
        }

    def edit(self, image: Image.Image, job: EditJob, face_box: Box | None) -> EditResult:
        import torch

        from flenwheel.models import Sampling

        loaded = self.manager.get("qwen-image-edit")
        stack = self._stack(job.prompt)
        records = loaded.apply_stack(stack, self.ws, self.catalog)
        sampling = Sampling.for_stack(self.stage, stack)
        steps = job.prompt.steps or sampling.steps
        generator = torch.Generator("cpu").manual_seed(job.seed)
        result = loaded.pipe(
            image=[image.convert("RGB")],
            prompt=job.prompt.prompt,
            negative_prompt=sampling.negative_prompt,
            true_cfg_scale=sampling.true_cfg_scale,
            num_inference_steps=steps,
            height=sampling.height,
            width=sampling.width,
            generator=generator,
        )
        return EditResult(
            image=result.images[0].convert("RGB"),
            op=self.op,
            model_ref=loaded.model.ref,
            prompt=job.prompt.prompt,
            prompt_id=job.prompt.id,
            seed=job.seed,
            loras=records,
            negative_prompt=sampling.negative_prompt,
            steps=steps,
            guidance=sampling.true_cfg_scale,
            params={
                "pipeline": "QwenImageEditPlusPipeline",
                "profile": self.manager.profile.name,
                "width": sampling.width,
                "height": sampling.height,
                "scheduler": dict(loaded.pipe.scheduler.config),
                "generator": "torch.Generator('cpu').manual_seed(seed)",
            },
        )

    def close(self) -> None:
        self.manager.release()


def character_editor_loras(catalog: Any | None, character: Character | None) -> list[Any]:
    """The character's own editor LoRA (``editor_lora`` in its config) as a stack entry, if it names one."""
    if character is None or not character.editor_lora:
        return []
    from flenwheel.config import LoraSpec
    from flenwheel.models import StackEntry

    lora_id = character.editor_lora
    if catalog is None:
        raise EditError(f"{character.name}: editor_lora needs the catalog to be resolved")
    if lora_id == "latest":
        rows = catalog.rows(
            "SELECT lora_id FROM loras WHERE character = ? AND kind = 'qwen_edit' ORDER BY created_at DESC LIMIT 1",
            [character.name],
        )
        if not rows:
            raise EditError(f"{character.name}: editor_lora is 'latest' but no editor LoRA was trained yet "
                            f"(flenwheel train-edit {character.name})")  # fmt: skip
        lora_id = rows[0]["lora_id"]
    spec = LoraSpec(ref=f"catalog:{lora_id}", applies_to="qwen-image-edit", scale=character.editor_lora_scale)
    return [StackEntry(lora_id, spec, character.editor_lora_scale)]


EditorFactory = Callable[[Workspace, Any, Any, Any], Editor]
EDITORS: dict[str, EditorFactory] = {
    "augment": lambda ws, manager, catalog, character: AugmentEditor(),
    "qwen": lambda ws, manager, catalog, character: QwenEditor(
        ws, manager, catalog, character_editor_loras(catalog, character)
    ),
}


def make_editor(
    name: str, ws: Workspace, manager: Any | None = None, catalog: Any | None = None, character: Character | None = None
) -> Editor:
    """An editor by name (``EDITORS`` holds the known ones; plug-ins and benchmarks may register more).

    With ``character``, the qwen editor adds the character's own editor LoRA when its config selects one.
    """
    if name not in EDITORS:
        raise EditError(f"unknown editor {name!r}: use {' or '.join(EDITORS)}")
    if name == "qwen" and manager is None:
        raise EditError("the qwen editor needs a model manager")
    return EDITORS[name](ws, manager, catalog, character)


# --------------------------------------------------------------------------- jobs


def pending_jobs(
    catalog: Catalog,
    character: str,
    editor: Editor,
    prompts: Sequence[PromptEntry],
    seeds: Sequence[int],
    sources: Sequence[str] | None = None,
) -> list[EditJob]:
    """Jobs (source x prompt x seed) that have no derivation yet, in a stable order."""
    parents = sources if sources is not None else [r["image_id"] for r in catalog.source_images(character)]
    usable = [p for p in prompts if editor.supports(p)]
    jobs = [EditJob(parent, prompt, seed) for parent in sorted(parents) for prompt in usable for seed in seeds]
    if not jobs:
        return []
    done = {
        r["job_key"]
        for r in catalog.rows(
            "SELECT DISTINCT d.job_key FROM derivations d JOIN images i ON i.image_id = d.parent_id"
            " WHERE i.character = ? AND d.op = ?",
            [character, editor.op],
        )
    }
    return [j for j in jobs if editor.key(j) not in done]


def run_edit_batch(
    ws: Workspace, catalog: Catalog, character: str, editor: Editor, jobs: Sequence[EditJob], run_id: str | None
) -> list[str]:
    """Carry out ``jobs``, store the images and record images + derivations in one transaction.

    Returns the image ids made (in job order). Files of a batch whose catalog write fails are removed again.
    """
    if not jobs:
        return []
    parents = {
        r["image_id"]: r
        for r in catalog.rows(
            "SELECT i.image_id, i.path, s.face_box FROM images i LEFT JOIN ("
            "  SELECT image_id, face_box, row_number() OVER (PARTITION BY image_id ORDER BY scored_at DESC) AS rn"
            "  FROM identity_scores) s ON s.image_id = i.image_id AND s.rn = 1"
            " WHERE i.image_id IN (SELECT unnest(?))",
            [sorted({j.parent_id for j in jobs})],
        )
    }
    decoded: dict[str, Image.Image] = {}  # a batch usually holds several jobs per source: decode each once

    def outputs() -> Iterator[tuple[Image.Image, DerivationRecord]]:
        for job in jobs:
            parent = parents.get(job.parent_id)
            if parent is None:
                raise EditError(f"source image {job.parent_id[:12]} is not in the catalog")
            if job.parent_id not in decoded:
                with Image.open(ws.root / parent["path"]) as im:
                    decoded[job.parent_id] = im.convert("RGB")
            box = tuple(parent["face_box"]) if parent["face_box"] else None
            result = editor.edit(decoded[job.parent_id], job, box)  # type: ignore[arg-type]
            yield (
                result.image,
                DerivationRecord(
                    child_id="",
                    parent_id=job.parent_id,
                    op=result.op,
                    model_ref=result.model_ref,
                    loras=result.loras,
                    prompt=result.prompt,
                    prompt_id=result.prompt_id,
                    negative_prompt=result.negative_prompt,
                    seed=result.seed,
                    steps=result.steps,
                    guidance=result.guidance,
                    strength=result.strength,
                    params={**result.params, "category": job.prompt.category, "editor": editor.name},
                    job_key=editor.key(job),
                ),
            )

    return store_outputs(ws, catalog, character, "edit" if editor.op == "edit" else "augment", outputs(), run_id)


def store_outputs(
    ws: Workspace,
    catalog: Catalog,
    character: str,
    origin: str,
    outputs: Iterable[tuple[Image.Image, DerivationRecord]],
    run_id: str | None,
) -> list[str]:
    """Store each output image and record all images + derivations in one transaction (editors, generators).

    ``child_id`` of each derivation is filled in from the stored bytes. If making an output or the catalog
    write fails, the files this call stored are removed again, so a failed batch leaves nothing behind.
    """
    from flenwheel.store import put_image, remove_if_unreferenced

    images, derivations, stored = [], [], []
    try:
        for image, derivation in outputs:
            s = put_image(ws.root, image)
            stored.append(s)
            images.append(ImageRecord(s.image_id, character, origin, s.relpath, s.width, s.height))
            derivations.append(dataclasses.replace(derivation, child_id=s.image_id))
        if images:
            catalog.add_images(images, run_id, derivations)
    except BaseException:
        for s in stored:
            remove_if_unreferenced(ws.root, s)
        raise
    return [im.image_id for im in images]
