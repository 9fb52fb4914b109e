"""Calibrate the evaluation's likeness band (likeness floor, copy ceiling) per identity backend on real faces.

    .venv/bin/python bench/calibrate_likeness.py [--backend dlib] [--faces ../shared/faces]

Pairs measured, with the copy detector's own signals (flenwheel.evaluation: identity similarity of the faces,
composition similarity of the pictures around them, copy score = the smaller of the two):

* **near-copies**: every photo against each of its near-copies (bench/nearcopies.py: crops up to 15 %, 5 % shifts,
  brightness/contrast/saturation/hue jitter, mirror, JPEG 40/75, resizing 0.5-1.5x, one combination);
* **different photos of one person**: every photo and every near-copy of it against the person's other photos
  (a re-coloured different photo is still a different photo);
* **other people**: every photo against every other person's photos.

Also printed: the size of the face detector's box on each near-copy relative to its photo's (corrected for
resizing), which the composition signal must tolerate, and, for comparison, the perceptual-hash distance
(imagehash.phash, 64 bits; a near-copy against its photo and the mirrored photo, whichever is closer) of the same
pairs: the signal a copy detector might use instead.

The copy ceiling sits midway between the highest copy score of a different photo and the 5th percentile of the
near-copies, rounded to 0.05; the likeness floor midway between the highest similarity of other people and the
lowest of different photos of one person, rounded to 0.05. The counts on either side of each line are printed.

Held out: alex_lacamoire's two photos are used by no calibration and no test; bench/evaluate_held_out.py checks the
band on them. obama_small.jpg is a tight crop of obama_1.jpg (the same picture): the pair counts as a near-copy,
never as two photos of one person. Figures: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository root for `bench`

from bench.nearcopies import grid
from flenwheel.core.config import IdentityBackendSettings
from flenwheel.evaluation.composition import composition_similarity, layout, layouts
from flenwheel.identity.backends import BACKENDS, FaceBackend, load_backend
from flenwheel.store.objects import load_rgb

PROJECT = Path(__file__).resolve().parents[1]
PEOPLE = ("obama", "biden", "kit_harington", "rose_leslie", "lin_manuel_miranda")  # alex_lacamoire: held out
SAME_PICTURE = {frozenset({"obama_1.jpg", "obama_small.jpg"})}  # a tight crop of the other


def face_of(backend: FaceBackend, rgb: np.ndarray) -> tuple[np.ndarray, object] | None:
    """(embedding, box) of the largest confident face, as the identity filter picks it."""
    faces = [f for f in backend.detect(rgb) if f.score >= backend.facts.confident_score]
    if not faces:
        return None
    face = max(faces, key=lambda f: f.area)
    return backend.embed(rgb, face), face.box


def box_size(box: object) -> float:
    x0, y0, x1, y1 = box  # type: ignore[misc]
    return float(((x1 - x0) * (y1 - y0)) ** 0.5)


def stats(values: list[float]) -> str:
    if not values:
        return "-"
    v = np.array(values)
    return (
        f"n={len(v):4d} min={v.min():.3f} p5={np.percentile(v, 5):.3f} med={np.median(v):.3f} "
        f"p95={np.percentile(v, 95):.3f} max={v.max():.3f}"
    )


def round_to(value: float, step: float = 0.05) -> float:
    return round(math.floor(value / step + 0.5) * step, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=Path, default=PROJECT.parent / "shared" / "faces")
    ap.add_argument("--backend", default="dlib", choices=sorted(BACKENDS))
    args = ap.parse_args()
    backend = load_backend(args.backend, IdentityBackendSettings())
    started = time.perf_counter()

    originals: dict[str, tuple[str, np.ndarray, object, np.ndarray]] = {}  # name -> person, embedding, box, rgb
    copies: list[tuple[str, str, np.ndarray, object, np.ndarray]] = []  # original, variant, embedding, box, rgb
    lost: list[str] = []
    for person in PEOPLE:
        for path in sorted((args.faces / person).iterdir()):
            rgb = load_rgb(path)
            found = face_of(backend, rgb)
            if found is None:
                print(f"skip {path.name}: no face")
                continue
            originals[path.name] = (person, *found, rgb)
            for variant, out in grid(rgb).items():
                near = face_of(backend, out)
                if near is None:
                    lost.append(f"{path.name}:{variant}")
                    continue
                copies.append((path.name, variant, *near, out))
    members = {name: layout(rgb, box) for name, (_, _, box, rgb) in originals.items()}

    def pair(emb: np.ndarray, box: object, rgb: np.ndarray, other: str) -> tuple[float, float | None]:
        identity = float(backend.similarities(emb, originals[other][1][None, :])[0])
        return identity, composition_similarity(layouts(rgb, box), members[other])

    hashes = {name: imagehash.phash(Image.fromarray(rgb)) for name, (_, _, _, rgb) in originals.items()}
    mirrored = {name: imagehash.phash(Image.fromarray(rgb[:, ::-1].copy())) for name, (*_, rgb) in originals.items()}
    measured: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    worst_copies: list[tuple[float, str]] = []
    for name, variant, emb, box, rgb in [(n, "original", e, b, r) for n, (_, e, b, r) in originals.items()] + copies:
        person = originals[name][0]
        for other in originals:
            if originals[other][0] != person or (other == name and variant == "original"):
                continue
            same = other == name or frozenset({name, other}) in SAME_PICTURE
            identity, comp = pair(emb, box, rgb, other)
            kind = "near-copy" if same else "different photo"
            measured[kind]["identity"].append(identity)
            h = imagehash.phash(Image.fromarray(rgb))
            measured[kind]["phash bits"].append(float(min(h - hashes[other], h - mirrored[other])))
            if comp is None:
                measured[kind]["no overlap"].append(1.0)
                continue
            measured[kind]["composition"].append(comp)
            measured[kind]["copy score"].append(min(identity, comp))
            if same:
                worst_copies.append((min(identity, comp), f"{name}:{variant} vs {other}"))
    for name, variant, _, box, _ in copies:  # how far the detector's box of a near-copy strays from its photo's
        factor = float(variant.removeprefix("resize")) if variant.startswith("resize") else 1.0
        measured["near-copy"]["box size ratio"].append(box_size(box) / (box_size(originals[name][2]) * factor))
    for a, b in itertools.combinations(originals, 2):
        if originals[a][0] != originals[b][0]:
            measured["other person"]["identity"].append(
                float(backend.similarities(originals[a][1], originals[b][1][None])[0])
            )

    print(
        f"backend {args.backend}; {len(originals)} photos of {len(PEOPLE)} people, {len(copies)} near-copies "
        f"({len(lost)} lost their face: {', '.join(lost) or 'none'}); {time.perf_counter() - started:.0f} s\n"
    )
    for kind in ("near-copy", "different photo", "other person"):
        for signal in ("identity", "composition", "copy score", "phash bits", "box size ratio"):
            if measured[kind][signal]:
                print(f"{kind:16s} {signal:12s} {stats(measured[kind][signal])}")
        if measured[kind]["no overlap"]:
            print(f"{kind:16s} windows overlapping too little to compare: {len(measured[kind]['no overlap'])}")
    copies_scores, genuine_scores = measured["near-copy"]["copy score"], measured["different photo"]["copy score"]
    ceiling = round_to((max(genuine_scores) + float(np.percentile(copies_scores, 5))) / 2)
    genuine_ids, impostor_ids = measured["different photo"]["identity"], measured["other person"]["identity"]
    floor = round_to((max(impostor_ids) + min(genuine_ids)) / 2)
    print(
        f"\ncopy ceiling {ceiling:.2f}: near-copies at or above {sum(v >= ceiling for v in copies_scores)}"
        f"/{len(copies_scores)}, different photos at or above {sum(v >= ceiling for v in genuine_scores)}"
        f"/{len(genuine_scores)}"
    )
    print(
        f"likeness floor {floor:.2f}: different photos of one person below {sum(v < floor for v in genuine_ids)}"
        f"/{len(genuine_ids)}, other people at or above {sum(v >= floor for v in impostor_ids)}/{len(impostor_ids)}"
    )
    print("lowest near-copy copy scores: " + "; ".join(f"{s:.3f} {what}" for s, what in sorted(worst_copies)[:5]))


if __name__ == "__main__":
    main()
