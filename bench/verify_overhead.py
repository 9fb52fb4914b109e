"""What checking an edit costs next to the editor call it wraps (issue 16: verifier + critic overhead per image).

    .venv/bin/python bench/verify_overhead.py [--photos 4] [--side 1024] [--profile cpu-tiny]

On real photos of ../shared/faces, scaled so the longest side is ``--side`` px (the size the editors return),
every (photo, prompt) of four categories goes through, in one process and side by side:

* **editor** — the augment editor (CPU) and the profile's Qwen-Image-Edit pipeline through flenwheel's own
  ``QwenEditor`` (cpu-tiny: random-weight twin, at the profile's sampling size and steps);
* **check** — ``EditChecker.check`` as enrichment calls it: edit-region mask (proposed once per photo and
  category, then reused, like a batch does), face count (the identity backend's detector), SSIM/PSNR/change
  (``flenwheel.editing.verify``); timed with and without the VLM critic, whose yes/no checks (the default
  ``critic_checks`` plus one per prompt) run on the tiny Qwen2.5-VL twin that the cpu-tiny editor carries.

Printed: seconds per image for each part, first-call mask cost apart, and the ratio check / editor call. On the
GPU profiles the same script measures the real editor and the real 7B critic (the weights must be in the cache).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from flenwheel.catalog import Catalog
from flenwheel.core.config import Check, PromptEntry
from flenwheel.editing import AugmentEditor, EditJob, make_editor
from flenwheel.editing.checks import EditChecker
from flenwheel.editing.masks import as_rgb
from flenwheel.identity import load_backend
from flenwheel.models import runtime
from flenwheel.models.loading import ModelManager
from flenwheel.store.workspace import Workspace

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
PROMPTS = ("bg-blue", "light-golden-hour", "outfit-red", "angle-mirror")
EXTRA_CHECK = {
    "background": "Is the background a plain blue wall?",
    "lighting": "Is the light warm and golden?",
    "outfit": "Is the person wearing red clothes?",
    "angles": "Is the person facing the other way?",
}


def photos(n: int, side: int) -> list[Image.Image]:
    files = sorted(p for p in FACES.glob("*/*.jpg"))[:: max(1, len(list(FACES.glob("*/*.jpg"))) // n)][:n]
    out = []
    for f in files:
        img = Image.open(f).convert("RGB")
        scale = side / max(img.size)
        out.append(img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS))
    return out


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--profile", default="cpu-tiny")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="verify-bench-"))
    ws = Workspace(root=root)
    catalog = Catalog(ws.catalog_path)
    library = ws.prompt_library()
    prompts: list[PromptEntry] = []
    for pid in PROMPTS:
        p = library[pid]
        prompts.append(p.model_copy(update={"checks": [Check(id="asked", question=EXTRA_CHECK[p.category])]}))
    backend = load_backend("dlib", ws.settings.identity)
    qwen = make_editor("qwen", ws, ModelManager(ws, ws.profile(args.profile)), catalog, None)
    augment = AugmentEditor()
    critic = runtime.vlm(ws, args.profile, "editor")
    settings = ws.settings.verify
    images = photos(args.photos, args.side)
    print(
        f"{len(images)} photo(s) from {FACES}, longest side {args.side} px; prompts {', '.join(PROMPTS)}; "
        f"critic {critic.source} ({len(settings.critic_checks) + 1} checks per edit)"
    )

    parts: dict[str, list[float]] = {k: [] for k in ("augment", "qwen", "mask first", "check", "check + critic")}
    # warm-up: the first pipeline call and the first critic pass load lazily
    qwen.edit(images[0], EditJob("warm", prompts[0], 0), None)
    critic.answer(images[0], settings.critic_checks)
    for i, img in enumerate(images):
        faces = backend.detect(as_rgb(img))
        box = faces[0].box if faces else None
        plain = EditChecker(root, backend, settings)
        with_critic = EditChecker(root, backend, settings, critic)
        for p in prompts:
            job = EditJob(f"photo{i}", p, 0)
            result, t_aug = timed(augment.edit, img, job, box)
            _, t_qwen = timed(qwen.edit, img, job, box)
            _, t_mask = timed(plain.mask_for, f"photo{i}", img, p, box)  # what a batch pays once per pair
            with_critic.masks.update(plain.masks)
            _, t_check = timed(plain.check, f"photo{i}", img, result.image, p, box)
            _, t_full = timed(with_critic.check, f"photo{i}", img, result.image, p, box)
            for k, v in zip(parts, (t_aug, t_qwen, t_mask, t_check, t_full), strict=True):
                parts[k].append(v)
    runtime.release_models()

    med = {k: statistics.median(v) for k, v in parts.items()}
    n = len(parts["check"])
    print(f"\nper edit, median of {n} (photo, prompt) pairs, seconds:")
    for k, v in med.items():
        print(f"  {k:16s} {v:8.3f}   (mean {statistics.fmean(parts[k]):.3f})")
    print("\nratios, check / editor call (masks reused within a batch; the first mask of a pair adds 'mask first'):")
    for editor in ("augment", "qwen"):
        for what in ("check", "check + critic"):
            print(f"  {what:15s} / {editor:8s} = {med[what] / med[editor]:7.2f}")
    critic_s = med["check + critic"] - med["check"]
    per_check = critic_s / (len(settings.critic_checks) + 1)
    print(f"  critic alone     = {critic_s:.3f} s per edit ({per_check:.3f} s per check)")


if __name__ == "__main__":
    main()
