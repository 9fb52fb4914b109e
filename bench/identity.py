"""Identity filter throughput at 1024 px: flenwheel's batched filter against a naive loop, same backend.

    .venv/bin/python bench/identity.py [--images 48] [--workers 2] [--faces ../shared/faces]

Both arms score the same 1024-px images (the single-person photos of ../shared/faces, resized, repeated)
against the same reference set with the dlib backend, in one run:
* batched — ``score_files``: detection on a 640-px copy, embedding from the full-resolution aligned crop,
  ``--workers`` scoring processes (the pool's start-up is reported separately);
* naive — what a hand-written loop does: full-resolution HOG detection (upsampled once, as
  ``face_recognition.face_locations`` does by default), one image at a time in this process.
Prints images/s of both and their ratio. Targets: >= 4 images/s batched, >= 2x naive.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from flenwheel.core.config import IdentityBackendSettings
from flenwheel.identity import FACTS, DlibBackend, Judge, build_reference_set, judge_image, score_files
from flenwheel.store.objects import load_rgb

PEOPLE = ("obama", "biden", "kit_harington", "rose_leslie", "alex_lacamoire", "lin_manuel_miranda")


def make_images(faces: Path, out: Path, n: int) -> list[Path]:
    sources = sorted(p for person in PEOPLE for p in (faces / person).iterdir())
    paths = []
    for i in range(n):
        img = Image.open(sources[i % len(sources)]).convert("RGB")
        scale = 1024 / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
        p = out / f"{i:03d}.png"
        img.save(p)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--faces", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "faces")
    args = ap.parse_args()
    settings = IdentityBackendSettings(workers=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(args.faces, Path(tmp), args.images)
        backend = DlibBackend(settings)
        refs = [args.faces / "obama" / f"obama_{i}.jpg" for i in (1, 2)]
        refset = build_reference_set(backend, "obama", [(str(p), load_rgb(p)) for p in refs])
        judge = Judge("dlib", settings, refset.embeddings, FACTS["dlib"].default_threshold)
        items = [(str(p), str(p)) for p in paths]

        t = time.perf_counter()
        list(score_files(judge, items[: args.workers], workers=args.workers))  # start the pool
        startup = time.perf_counter() - t
        t = time.perf_counter()
        batched = list(score_files(judge, items, workers=args.workers))
        batched_s = time.perf_counter() - t

        naive_backend = DlibBackend(settings.model_copy(update={"detect_max_side": 4096, "dlib_upsample": 1}))
        t = time.perf_counter()
        naive = [judge_image(naive_backend, judge, load_rgb(p)) for p in paths]
        naive_s = time.perf_counter() - t

    agree = sum(b.verdict == n.verdict for (_, b), n in zip(batched, naive, strict=True))
    b_rate, n_rate = len(paths) / batched_s, len(paths) / naive_s
    print(f"{len(paths)} images at 1024 px, dlib backend, {args.workers} worker process(es)")
    print(f"batched filter : {b_rate:6.2f} images/s  ({batched_s:.1f} s; pool start-up {startup:.1f} s not included)")
    print(f"naive loop     : {n_rate:6.2f} images/s  ({naive_s:.1f} s)")
    print(f"ratio          : {b_rate / n_rate:6.2f}x   verdicts agree on {agree}/{len(paths)} images")


if __name__ == "__main__":
    main()
