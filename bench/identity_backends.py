"""The identity backends side by side on ../shared/faces: calibration figures and turned-head detection.

    .venv/bin/python bench/identity_backends.py [--backend NAME ...] [--faces ../shared/faces]

For each installed backend (dlib, yunet, sface; insightface when its model pack is installed), or those named, on
the single-person
photos of the shared faces:
* calibration: every same-person pair (genuine) and every different-person pair (impostor) of the photos'
  largest faces, the proposed threshold of ``calibrate`` from all genuine pairs, and the gap between the lowest
  genuine and the highest impostor similarity;
* turned heads: how many of the photos still give a confident face after the image plane is turned about its
  vertical axis by 45 and 60 degrees (a perspective warp: the face foreshortens as in a yawed head, without the
  far side being hidden, so it is a lower bound of how hard a real profile is) and after an in-plane tilt of
  30 and 45 degrees; and whether the warped photo still passes against the person's other photos.
Angle enrichment makes exactly these turned and tilted heads (docs/identity.md).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import cv2
import numpy as np

from flenwheel.core.config import IdentityBackendSettings
from flenwheel.identity import BACKENDS, FACTS, FaceBackend, IdentityModelMissing, calibrate, load_backend
from flenwheel.store.objects import load_rgb

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"


def turned(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """The image plane turned by ``degrees`` about its vertical axis through the centre (perspective warp)."""
    h, w = rgb.shape[:2]
    t, f = np.radians(degrees), 1.2 * w
    corners = np.float32([(0, 0), (w, 0), (w, h), (0, h)])
    moved = []
    for x, y in corners:
        x0, y0 = x - w / 2, y - h / 2
        depth = f / (f + x0 * np.sin(t))
        moved.append((x0 * np.cos(t) * depth + w / 2, y0 * depth + h / 2))
    matrix = cv2.getPerspectiveTransform(corners, np.float32(moved))
    return cv2.warpPerspective(rgb, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)


def tilted(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """The image rotated in its plane by ``degrees`` (a tilted head)."""
    h, w = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(rgb, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)


def photos(faces: Path) -> list[tuple[str, Path]]:
    """(person, photo) of every single-person photo."""
    return [
        (d.name, p)
        for d in sorted(faces.iterdir())
        if d.is_dir() and d.name not in ("multi", "edge")
        for p in sorted(d.iterdir())
    ]


def largest(backend: FaceBackend, rgb: np.ndarray):
    faces = [f for f in backend.detect(rgb) if f.score >= backend.facts.confident_score]
    return max(faces, key=lambda f: f.area) if faces else None


def report(backend: FaceBackend, faces: Path) -> None:
    items = []
    for person, path in photos(faces):
        rgb = load_rgb(path)
        face = largest(backend, rgb)
        if face is not None:
            items.append((person, path, rgb, backend.embed(rgb, face)))
    genuine, impostor = [], []
    for a, b in itertools.combinations(items, 2):
        s = float(backend.similarities(a[3], b[3][None])[0])
        (genuine if a[0] == b[0] else impostor).append(s)
    same = [i for i, x in enumerate(items) if sum(y[0] == x[0] for y in items) > 1]
    proposal = calibrate(backend, np.stack([items[i][3] for i in same])).threshold
    print(f"\n{backend.name}: {len(items)} photos with a face; {len(genuine)} genuine, {len(impostor)} impostor pairs")
    print(f"  genuine  min {min(genuine):.3f}  median {np.median(genuine):.3f}  max {max(genuine):.3f}")
    print(f"  impostor min {min(impostor):.3f}  median {np.median(impostor):.3f}  max {max(impostor):.3f}")
    print(
        f"  gap (lowest genuine - highest impostor) {min(genuine) - max(impostor):+.3f}; default threshold "
        f"{FACTS[backend.name].default_threshold:.2f}; calibrate() over all genuine pairs proposes {proposal:.3f}"
    )
    threshold = FACTS[backend.name].default_threshold
    for label, warp, angles in (("turned", turned, (45, 60)), ("tilted", tilted, (30, 45))):
        for angle in angles:
            found = passed = 0
            for person, path, rgb, _ in items:
                moved = warp(rgb, angle)
                face = largest(backend, moved)
                if face is None:
                    continue
                found += 1
                others = np.stack([x[3] for x in items if x[0] == person and x[1] != path] or [np.zeros(0)])
                if others.size and float(backend.similarities(backend.embed(moved, face), others).max()) >= threshold:
                    passed += 1
            print(
                f"  {label} {angle:2d} deg: face found in {found}/{len(items)}, passes against the person's "
                f"other photos in {passed} (threshold {threshold:.2f}, people with one photo cannot pass)"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=Path, default=FACES)
    ap.add_argument("--backend", action="append", choices=BACKENDS, help="default: every backend")
    args = ap.parse_args()
    settings = IdentityBackendSettings()
    for name in args.backend or BACKENDS:
        try:
            backend = load_backend(name, settings)
        except IdentityModelMissing as e:
            print(f"\n{name}: not installed here: {str(e).split('. ')[0]}")
            continue
        report(backend, args.faces)


if __name__ == "__main__":
    main()
