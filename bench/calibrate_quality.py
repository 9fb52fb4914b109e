"""Calibrate the quality flags on the shared faces and degraded copies of them, and show the coverage bins.

    .venv/bin/python bench/calibrate_quality.py [--faces ../shared/faces]

Each calibration photo (CALIBRATION: every single-person photo but the held-out ones) goes through the store's own
normalisation, as ingest does, and is degraded seven ways (:func:`degrade`): Gaussian blur (sigma 3 % of the face
height), darkened (brightness x0.3), brightened (x2.2), Gaussian noise (sigma 20), JPEG at quality 10, black bars
(12 % top and bottom, or left and right) and a quarter-size copy (skipped where ingest would refuse it). A flag's
threshold sits midway between the worst original and the mildest copy degraded for it (geometric midpoint for
noise, which spans decades), so no original is flagged and every copy is; the figures and any overlap are printed.

Near-duplicates: every photo against its JPEG re-encode (q85), a 5 % crop all round, an 8 % crop from one side and a
half-size copy, versus every pair of different photos; the threshold is the geometric midpoint of the fewest matches
a copy kept and the most two unrelated photos share (pairs cut from one picture are named and left out: they are
duplicates). Coverage: the measures and bins of every photo and its mirror. Finally the HELD_OUT photos, used by no
calibration and no test but the acceptance test, are judged with the chosen thresholds. Recorded in
docs/coverage.md.
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageEnhance

from flenwheel.core.config import IdentityBackendSettings, QualitySettings, StoreSettings
from flenwheel.dataset.quality import DuplicateFinder, Flag, judge, measure_quality
from flenwheel.identity.attributes import measure_image
from flenwheel.identity.backends import DlibBackend
from flenwheel.store.objects import ImageRejected, normalise

PROJECT = Path(__file__).resolve().parents[1]
HELD_OUT = ("alex_lacamoire/alex_1.jpg", "alex_lacamoire/alex_2.png", "lin_manuel_miranda/lin_1.png")
CALIBRATION = (
    "obama/obama_1.jpg", "obama/obama_2.jpg", "obama/obama_3.jpg", "obama/obama_small.jpg", "biden/biden_1.jpg",
    "biden/biden_2.jpg", "kit_harington/kit_1.jpg", "kit_harington/kit_2.jpg", "rose_leslie/rose_1.jpg",
    "rose_leslie/rose_2.jpg",
)  # fmt: skip
# Pictures the shared faces cut from one photo (their README does not say so; ORB finds it): true duplicates.
SAME_PICTURE = (
    {"obama_2.jpg", "rgba_32bit.png"},
    {"two_people.jpg", "obama_3.jpg", "biden_1.jpg"},
    {"obama_1.jpg", "obama_small.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg"},
)
# What each flag is judged by, the degraded copies it must catch, and whether a high value is the bad side.
# ``noise`` has two measures (its score is the larger ratio to their thresholds): each is set on its own copies.
MEASURES = {
    "blur": ("blur", ("blur",), True),
    "underexposed": ("underexposed", ("darken",), False),
    "overexposed": ("overexposed", ("brighten",), True),
    "noise_sigma": ("noise", ("noise",), True),
    "blockiness": ("noise", ("jpeg10",), True),
    "letterbox": ("letterbox", ("bars", "pillarbox"), True),
    "small_face": ("small_face", ("quarter",), False),
    # without a face the frame stands in (no face also fails identity): shown, for the fallback thresholds
    "image_blur": ("blur", ("blur",), True),
    "image_l95": ("underexposed", ("darken",), False),
    "image_clipped": ("overexposed", ("brighten",), True),
}
DEGRADATIONS = ("blur", "darken", "brighten", "noise", "jpeg10", "bars", "pillarbox", "quarter")
STORE = StoreSettings()


def ingested(data: bytes) -> np.ndarray:
    """The pixels ingest would store for a file's bytes."""
    return np.asarray(normalise(data, STORE))


def encoded(rgb: np.ndarray, fmt: str = "PNG", **options: object) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **options)
    return ingested(buf.getvalue())


def degrade(rgb: np.ndarray, kind: str, face_height: float) -> np.ndarray:
    """A degraded copy of ``rgb`` as ingest would store it (raises ImageRejected when ingest refuses it)."""
    h, w = rgb.shape[:2]
    if kind == "blur":
        return encoded(cv2.GaussianBlur(rgb, (0, 0), 0.03 * face_height))
    if kind in ("darken", "brighten"):
        factor = 0.3 if kind == "darken" else 2.2
        return encoded(np.asarray(ImageEnhance.Brightness(Image.fromarray(rgb)).enhance(factor)))
    if kind == "noise":
        noisy = rgb + np.random.default_rng(0).normal(0.0, 20.0, rgb.shape)
        return encoded(np.clip(noisy, 0, 255).astype(np.uint8))
    if kind == "jpeg10":
        return encoded(rgb, "JPEG", quality=10)
    if kind in ("bars", "pillarbox"):
        out = rgb.copy()
        if kind == "bars":
            k = round(0.12 * h)
            out[:k], out[h - k :] = 0, 0
        else:
            k = round(0.12 * w)
            out[:, :k], out[:, w - k :] = 0, 0
        return encoded(out)
    if kind == "quarter":
        return encoded(cv2.resize(rgb, (round(w / 4), round(h / 4)), interpolation=cv2.INTER_AREA))
    raise ValueError(kind)


def flags_of(backend: DlibBackend, rgb: np.ndarray, settings: QualitySettings) -> tuple[dict, list[Flag]]:
    """An image's quality measures and every flag's verdict, as assessment judges it (without duplicates)."""
    _, face, _ = measure_image(backend, rgb)
    measures = measure_quality(rgb, face.box if face else None, settings.train_side)
    return measures, judge(measures, settings, None)


def midpoint(good: list[float], bad: list[float], high_is_bad: bool, geometric: bool = False) -> tuple[float, str]:
    worst = max(good) if high_is_bad else min(good)
    mildest = min(bad) if high_is_bad else max(bad)
    gap = (mildest > worst) if high_is_bad else (mildest < worst)
    mid = math.sqrt(worst * mildest) if geometric else (worst + mildest) / 2
    return mid, f"worst original {worst:.4g}, mildest copy {mildest:.4g}" + ("" if gap else " (OVERLAP)")


def summary(values: list[float]) -> str:
    v = sorted(values)
    return f"n={len(v):2d} min={v[0]:.4g} median={v[len(v) // 2]:.4g} max={v[-1]:.4g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=Path, default=PROJECT.parent / "shared" / "faces")
    args = parser.parse_args()
    started = time.monotonic()
    backend = DlibBackend(IdentityBackendSettings())
    settings = QualitySettings()
    values: dict[str, dict[str, list[float]]] = {}  # variant -> flag -> scores
    raised: dict[str, dict[str, int]] = {}  # variant -> flag -> images flagged with the configured thresholds
    seen: dict[str, int] = {}
    for name in CALIBRATION:
        rgb = ingested((args.faces / name).read_bytes())
        _, face, _ = measure_image(backend, rgb)
        assert face is not None, name
        for kind in ("original", *DEGRADATIONS):
            try:
                copy = rgb if kind == "original" else degrade(rgb, kind, face.box[3] - face.box[1])
            except ImageRejected:
                print(f"  {name} {kind}: refused by ingest (too small), skipped")
                continue
            seen[kind] = seen.get(kind, 0) + 1
            measures, flags = flags_of(backend, copy, settings)
            for f in flags:
                raised.setdefault(kind, {}).setdefault(f.name, 0)
                raised[kind][f.name] += f.raised
            scores = {f.name: f.score for f in flags}
            for measure in MEASURES:
                score = scores[measure] if measure in scores else measures[measure]
                if score is not None:
                    values.setdefault(kind, {}).setdefault(measure, []).append(score)

    print(f"== quality measures over {len(CALIBRATION)} calibration photos and their degraded copies")
    for measure, (flag, kinds, high_is_bad) in MEASURES.items():
        good = values["original"][measure]
        bad = [v for k in kinds for v in values.get(k, {}).get(measure, [])]
        threshold, why = midpoint(good, bad, high_is_bad, geometric=measure == "noise_sigma")
        print(f"{measure:13s} originals {summary(good)} (flag {flag})")
        print(f"{'':13s} {'/'.join(kinds):10s} {summary(bad)}")
        print(f"{'':13s} -> midpoint {threshold:.4g} ({why})")
    print("\n== with the configured thresholds: flags raised per variant (images flagged / images)")
    for kind, counts in raised.items():
        print(
            f"  {kind:10s} n={seen[kind]:2d} "
            + " ".join(f"{f}={c}" for f, c in counts.items() if f != "near_duplicate")
        )

    print("\n== near-duplicates: ORB matches under one similarity transform")
    finder = DuplicateFinder(PROJECT)
    photos = {p.name: ingested(p.read_bytes()) for p in sorted(args.faces.glob("*/*.*")) if p.suffix != ".md"}
    features = {n: finder.features(n, rgb) for n, rgb in photos.items()}
    copies = []
    for n, rgb in photos.items():
        h, w = rgb.shape[:2]
        for what, copy in (
            ("jpeg85", encoded(rgb, "JPEG", quality=85)),
            ("crop5", rgb[round(0.05 * h) : h - round(0.05 * h), round(0.05 * w) : w - round(0.05 * w)]),
            ("crop8-one-side", rgb[: h - round(0.08 * h), round(0.08 * w) :]),
            ("half", cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)),
        ):
            copies.append(
                (finder.inliers(finder.features(f"{n}:{what}", np.ascontiguousarray(copy)), features[n]), n, what)
            )
    related = {frozenset(p) for group in SAME_PICTURE for p in itertools.combinations(group, 2)}
    pairs = [(finder.inliers(features[a], features[b]), a, b) for a, b in itertools.combinations(photos, 2)]
    unrelated = [p for p in pairs if frozenset(p[1:]) not in related]
    same = sorted(p for p in pairs if frozenset(p[1:]) in related)
    print(f"  copies of one photo   {summary([c[0] for c in copies])} (fewest: {min(copies)[1]} {min(copies)[2]})")
    print(
        f"  unrelated photos      {summary([p[0] for p in unrelated])} (most: {max(unrelated)[1]} {max(unrelated)[2]})"
    )
    print("  cut from one picture  " + ", ".join(f"{a}/{b} {n}" for n, a, b in same))
    fewest, most = min(c[0] for c in copies), max(p[0] for p in unrelated)
    print(f"  -> threshold {math.sqrt(fewest * most):.3g} (geometric midpoint of {fewest} and {most})")

    print("\n== coverage bins of every photo and its mirror (yaw from the subject's point of view)")
    agree = 0
    for n, rgb in photos.items():
        a, _, _ = measure_image(backend, rgb)
        m, _, _ = measure_image(backend, np.ascontiguousarray(rgb[:, ::-1]))
        if a.yaw is None:
            print(f"  {n:24s} no face")
            continue
        mirrored = {"left": "right", "right": "left"}
        expected = a.yaw_bin.replace(a.yaw_bin.split("_")[0], mirrored.get(a.yaw_bin.split("_")[0], a.yaw_bin), 1)
        agree += m.yaw_bin == expected
        mouth = a.measures
        print(
            f"  {n:24s} yaw {a.yaw:+6.1f} {a.yaw_bin:20s} mirror {m.yaw:+6.1f} {m.yaw_bin:20s} pitch {a.pitch:+5.1f} "
            f"{a.pitch_bin:5s} face {a.face_share:.3f} {a.framing:18s} mouth w/eyes {mouth['mouth_width']:.2f} "
            f"lift {mouth['smile_lift']:+.3f} gap {mouth['mouth_gap']:.2f} {a.expression:10s} "
            f"L* {mouth['l_median']:4.1f} {a.light:8s} b* {mouth['b_mean']:+5.1f} {a.warmth_bin}"
        )
    print(f"  mirrors in the mirrored yaw bin: {agree} of {sum(1 for _ in photos)} photos with a face")

    print("\n== held-out photos (no calibration, no test but the acceptance test), configured thresholds")
    for name in HELD_OUT:
        rgb = ingested((args.faces / name).read_bytes())
        _, face, _ = measure_image(backend, rgb)
        assert face is not None, name
        for kind in ("original", "blur", "darken", "bars"):
            copy = rgb if kind == "original" else degrade(rgb, kind, face.box[3] - face.box[1])
            up = [f.name for f in flags_of(backend, copy, settings)[1] if f.raised]
            print(f"  {name:30s} {kind:8s} flags {', '.join(up) or '-'}")
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
