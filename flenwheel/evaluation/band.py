"""The likeness band per identity backend: below the floor a sample is ``weak``, at or above the ceiling a ``copy``.

The figures are data, calibrated on ../shared/faces by ``bench/calibrate_likeness.py`` (docs/evaluation.md has its
output): the floor separates different photos of one person from other people; the ceiling separates near-copies
of a photo (crops up to 15 %, shifts, colour and brightness jitter, mirror, JPEG, resizing) from different photos of
the same person. ``evaluation.bands`` in configs/flenwheel.yaml overrides either value per backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from flenwheel.core.config import EvaluationSettings
from flenwheel.core.errors import FlenwheelError


@dataclass(frozen=True)
class Band:
    likeness_floor: float  # identity similarity to the references below which a sample is 'weak'
    copy_ceiling: float  # copy score from which a sample is a 'copy' of its nearest training image
    source: str  # where the figures come from


BANDS: dict[str, Band] = {
    # bench/calibrate_likeness.py (docs/evaluation.md): identity of different photos of one person 0.53-0.69, of
    # other people at most 0.30; copy scores of near-copies 5th percentile 0.815 (295 of 299 at or above 0.70), of
    # different photos of one person at most 0.58.
    "dlib": Band(0.40, 0.70, "bench/calibrate_likeness.py on ../shared/faces"),
    # bench/calibrate_likeness.py --backend yunet (docs/evaluation.md): the descriptor is dlib's, so the figures
    # match: different photos of one person p5 0.551 (the few lower are 15 % crops that cut the face, which YuNet
    # still finds and dlib's HOG loses), other people at most 0.310; near-copies p5 0.815, 297 of 301 at or above
    # 0.70, different photos at most 0.628.
    "yunet": Band(0.40, 0.70, "bench/calibrate_likeness.py --backend yunet on ../shared/faces"),
    # bench/calibrate_likeness.py --backend sface (docs/evaluation.md): SFace's cosine scale. Different photos of one
    # person 0.339-0.826 (p5 0.623), other people at most 0.248: floor midway, 0.30; near-copies' copy scores p5
    # 0.862, 297 of 301 at or above 0.75, different photos at most 0.650: ceiling midway, 0.75.
    "sface": Band(0.30, 0.75, "bench/calibrate_likeness.py --backend sface on ../shared/faces"),
    # Not calibrated here (flenwheel cannot download buffalo_l). Floor: lora-dataset-studio's amber line, between
    # ArcFace's same-person cut-offs (0.28-0.36) and MirrorMetrics' "fine" band (from 0.50). Ceiling: the copy
    # score is min(identity, composition); different photos stay below 0.65 in composition whatever the backend,
    # near-copies keep ArcFace cosines above 0.85 (MirrorMetrics' "danger" line). Run the bench script with
    # --backend insightface where the pack is installed and put its figures here.
    "insightface": Band(0.45, 0.75, "field figures (docs/evaluation.md); not calibrated on ../shared/faces"),
}


def band_for(backend: str, settings: EvaluationSettings) -> Band:
    """The band of ``backend``, with ``evaluation.bands.<backend>`` of configs/flenwheel.yaml applied."""
    if backend not in BANDS:
        raise FlenwheelError(f"no likeness band for identity backend {backend!r}: use {' or '.join(BANDS)}")
    band = BANDS[backend]
    override = settings.bands.get(backend)  # type: ignore[call-overload]
    if override is None:
        return band
    floor = band.likeness_floor if override.likeness_floor is None else override.likeness_floor
    ceiling = band.copy_ceiling if override.copy_ceiling is None else override.copy_ceiling
    return Band(floor, ceiling, f"evaluation.bands.{backend} in configs/flenwheel.yaml")
