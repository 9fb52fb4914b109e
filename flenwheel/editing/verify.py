"""Preservation verifier: did an edit change what its prompt asked, and keep the rest?

Per prompt category a :class:`VerifierSpec` (``DEFAULT_VERIFIERS``, or the prompt entry's own) names three
checks, each a score and a pass/fail, ready for a ``verifications(image_id, check, score, passed)`` table:

* ``preserve`` - similarity of the original and the edit where the edit must keep the image: SSIM (the mean of
  scikit-image's SSIM map over the kept pixels) and PSNR over the same pixels. For ``structure`` (relighting)
  the score is SSIM without its luminance term - the contrast-structure map ``(2 cov + C2) / (var_a + var_b +
  C2)`` of the grey images, Gaussian window 1.5 as in Wang et al. - averaged over the whole image: it ignores
  local brightness and barely moves with contrast, so tone and colour may change, but a moved, mirrored or
  flattened image scores low. (Histogram equalisation, the first idea, breaks on low-key relighting: clipped
  shadows dropped a correct relight to 0.38, see docs/verification.md.) No PSNR is reported for it.
* ``change`` - mean absolute difference inside the edit region, in [0, 1], of both images blurred a little
  (Gaussian sigma ``CHANGE_BLUR`` px at the working size): an editor that hands back its input, re-encodes it
  or round-trips it through a VAE fails. The blur removes exactly that high-frequency noise (a JPEG re-encode
  scores up to 0.018 unblurred, 0.004 blurred) while a relight, recolour or new background keeps its score.
* ``faces`` - the number of faces in the edited image (from the identity backend) must be the expected one.

Both images are compared at a working size (longest side ``WORK_SIDE``) after resizing the edit to the
original's size: editors return other sizes (Qwen-Image-Edit snaps to multiples of 16 at about 1 MP) and
texture noise of a VAE at full resolution is not what the check is about. The kept region is eroded by a margin
(``MARGIN`` of the shorter side) so the feathered edge of a replaced background does not count as damage.
Thresholds are calibrated on the augment editor's known edits of ../shared/faces: ``bench/calibrate_verifier.py``,
numbers in docs/verification.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from flenwheel.core.config import VerifierSpec
from flenwheel.editing.masks import Mask, as_rgb
from flenwheel.identity.backends import Face, FaceBackend

__all__ = ["DEFAULT_VERIFIERS", "Verification", "VerifierSpec", "count_faces", "verifier_for", "verify"]

WORK_SIDE = 512  # longest side both images are compared at
MARGIN = 0.02  # kept region eroded by this share of the shorter side
MIN_KEPT = 0.02  # below this share of the image kept, there is nothing to judge and "preserve" is skipped
CHANGE_BLUR = 2.0  # Gaussian sigma (px at the working size) applied before measuring change

# Calibrated by bench/calibrate_verifier.py on ../shared/faces (docs/verification.md has the distributions).
OUTSIDE_MIN_SSIM = 0.90
OUTSIDE_MIN_PSNR = 28.0
STRUCTURE_MIN_SSIM = 0.91
MIN_CHANGE = 0.010

DEFAULT_VERIFIERS: dict[str, VerifierSpec] = {
    # The person must stay; the rest is what the prompt replaces.
    "background": VerifierSpec(
        preserve="outside", min_ssim=OUTSIDE_MIN_SSIM, min_psnr=OUTSIDE_MIN_PSNR, min_change=MIN_CHANGE
    ),
    # Tone and colour change everywhere; edges and shapes must stay where they were.
    "lighting": VerifierSpec(preserve="structure", min_ssim=STRUCTURE_MIN_SSIM, min_change=MIN_CHANGE),
    # A camera move changes every pixel: only "it changed" and "one face" are checked (identity is scored apart).
    "angles": VerifierSpec(preserve="none", min_change=MIN_CHANGE),
    # Only the face may change.
    "expression": VerifierSpec(
        preserve="outside", min_ssim=OUTSIDE_MIN_SSIM, min_psnr=OUTSIDE_MIN_PSNR, min_change=MIN_CHANGE
    ),
    # Only the clothes (the person minus the face) may change.
    "outfit": VerifierSpec(
        preserve="outside", min_ssim=OUTSIDE_MIN_SSIM, min_psnr=OUTSIDE_MIN_PSNR, min_change=MIN_CHANGE
    ),
}
DEFAULT_VERIFIERS["clothing"] = DEFAULT_VERIFIERS["outfit"]
# A category nobody described: it has to change something and show one face; nothing else is known.
FALLBACK_VERIFIER = VerifierSpec(preserve="none", min_change=MIN_CHANGE)


def verifier_for(category: str, override: VerifierSpec | None = None) -> VerifierSpec:
    """The spec for a prompt: its own (``PromptEntry.verify``) if it has one, else its category's default."""
    return override if override is not None else DEFAULT_VERIFIERS.get(category, FALLBACK_VERIFIER)


@dataclass
class Verification:
    """Scores and verdict of one edit. ``None`` scores were not measured (the spec does not ask for them)."""

    ssim_outside: float | None
    psnr_outside: float | None
    change: float
    faces: int | None
    passed: bool
    failures: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, float | None, bool]]:
        """(check, score, passed) rows for the ``verifications`` table; skipped checks are left out."""
        out: list[tuple[str, float | None, bool]] = []
        if self.ssim_outside is not None:
            out.append(("preserve_ssim", self.ssim_outside, "preserve" not in self.failures))
        if self.psnr_outside is not None:
            out.append(("preserve_psnr", self.psnr_outside, "preserve" not in self.failures))
        out.append(("change", self.change, "change" not in self.failures))
        if self.faces is not None:
            out.append(("faces", float(self.faces), "faces" not in self.failures))
        return out


def _work_pair(original: np.ndarray, edited: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    h, w = original.shape[:2]
    if edited.shape[:2] != (h, w):
        # Editors return their own sizes; compare on the original's grid (recorded, so a reader knows).
        params["resized_from"] = [int(edited.shape[1]), int(edited.shape[0])]
        edited = cv2.resize(edited, (w, h), interpolation=cv2.INTER_AREA)
    scale = min(1.0, WORK_SIDE / max(h, w))
    if scale < 1.0:
        size = (max(16, round(w * scale)), max(16, round(h * scale)))
        original = cv2.resize(original, size, interpolation=cv2.INTER_AREA)
        edited = cv2.resize(edited, size, interpolation=cv2.INTER_AREA)
    params["work_size"] = [int(original.shape[1]), int(original.shape[0])]
    return original, edited


def _soft(rgb: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), CHANGE_BLUR)


def contrast_structure(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of SSIM's contrast-structure term of two RGB images' grey levels (1 = same structure)."""
    ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5)

    mu_a, mu_b = blur(ga), blur(gb)
    var_a = blur(ga * ga) - mu_a * mu_a
    var_b = blur(gb * gb) - mu_b * mu_b
    cov = blur(ga * gb) - mu_a * mu_b
    c2 = (0.03 * 255) ** 2  # SSIM's K2 = 0.03 for 8-bit images
    return float(((2 * cov + c2) / (var_a + var_b + c2)).mean())


def _region_ssim_psnr(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> tuple[float, float]:
    """Mean SSIM map and PSNR over the ``keep`` pixels (boolean HxW) of two uint8 images."""
    channel_axis = 2 if a.ndim == 3 else None
    _, smap = structural_similarity(a, b, channel_axis=channel_axis, data_range=255, full=True)
    if smap.ndim == 3:
        smap = smap.mean(axis=2)
    ssim = float(smap[keep].mean())
    psnr = (
        float(peak_signal_noise_ratio(a[keep], b[keep], data_range=255))
        if not np.array_equal(a[keep], b[keep])
        else float("inf")
    )
    return ssim, psnr


def verify(
    original: Image.Image | np.ndarray,
    edited: Image.Image | np.ndarray,
    mask: Mask | np.ndarray,
    spec: VerifierSpec,
    face_count: int | None = None,
) -> Verification:
    """Check ``edited`` against ``original`` under ``spec``; ``mask`` is the edit region (255 = may change).

    ``face_count`` is the number of faces found in the edited image (identity scoring already counts them:
    ``identity_scores.n_faces``, or :func:`count_faces`); None skips the face check.
    """
    params: dict[str, Any] = {"preserve": spec.preserve}
    orig, edit = _work_pair(as_rgb(original), as_rgb(edited), params)
    region = mask.array if isinstance(mask, Mask) else np.asarray(mask)
    if region.shape[:2] != orig.shape[:2]:
        region = cv2.resize(region.astype(np.uint8), (orig.shape[1], orig.shape[0]), interpolation=cv2.INTER_NEAREST)
    edit_region = region > 0
    failures: list[str] = []

    # Change: inside the edit region (a small face edit must not drown in the untouched rest).
    diff = np.abs(_soft(orig) - _soft(edit)).mean(axis=2) / 255.0
    change = float(diff[edit_region].mean()) if edit_region.any() else float(diff.mean())
    if change < spec.min_change:
        failures.append("change")

    ssim: float | None = None
    psnr: float | None = None
    if spec.preserve == "outside":
        margin = max(1, round(MARGIN * min(orig.shape[:2])))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
        keep = cv2.erode(np.where(edit_region, 0, 255).astype(np.uint8), kernel) > 0
        params["kept_fraction"] = round(float(keep.mean()), 4)
        if keep.mean() >= MIN_KEPT:
            ssim, psnr = _region_ssim_psnr(orig, edit, keep)
        else:
            params["preserve_skipped"] = "kept region too small"
    elif spec.preserve == "structure":
        ssim = contrast_structure(orig, edit)
    if ssim is not None and (
        (spec.min_ssim is not None and ssim < spec.min_ssim)
        or (spec.min_psnr is not None and psnr is not None and psnr < spec.min_psnr)
    ):
        failures.append("preserve")

    if spec.faces is not None and face_count is not None and face_count != spec.faces:
        failures.append("faces")
    return Verification(
        ssim_outside=None if ssim is None else round(ssim, 5),
        psnr_outside=None if psnr is None else round(min(psnr, 99.0), 3),
        change=round(change, 5),
        faces=face_count,
        passed=not failures,
        failures=failures,
        params=params,
    )


def count_faces(backend: FaceBackend, image: Image.Image | np.ndarray, faces: Sequence[Face] | None = None) -> int:
    """Confident faces in ``image`` by the identity backend (as identity scoring counts them for ``multi_face``);
    ``faces``: the backend's detections on it when they are at hand."""
    found = backend.detect(as_rgb(image)) if faces is None else faces
    return sum(1 for f in found if f.score >= backend.facts.confident_score)
