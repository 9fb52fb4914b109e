"""Every edit verified before a person sees it: the edit region as a stored mask, the preservation verifier, the
VLM critic's yes/no checks (docs/verification.md) and, for a prompt that declares what it ``adds``, whether the edit
landed in the aimed coverage bins (``landed``, docs/coverage.md).

:class:`EditChecker` proposes the edit region of a (source, prompt category) once per batch, stores it as a PNG
under ``<root>/masks/`` (content-addressed, referenced by ``masks.mask_id``), and checks each attempt with
:func:`flenwheel.editing.verify.verify` (change inside the region, SSIM/PSNR outside it where the category keeps it, one
face), and, with a critic, asks the prompt's yes/no questions about the edit. A prompt that ``adds`` a measured bin
(``{yaw: left_profile}``) is checked to have landed there: the edit's bins are measured as coverage measures them
(:mod:`flenwheel.identity.attributes`), and an angle edit that stays frontal fails like any other check.
``run_edit_batch`` (:mod:`.jobs`) retries a failed edit and writes these rows in the same transaction as the images.
:func:`checker_for` builds the checker the settings ask for, so enrichment and ``flenwheel eval-editors``
(:mod:`.compare`) check edits alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flenwheel.core.config import PromptEntry, VerifySettings
from flenwheel.core.files import atomic_write
from flenwheel.editing.masks import Mask, mask_png, propose
from flenwheel.editing.verify import Verification, count_faces, verifier_for, verify
from flenwheel.identity.attributes import Attributes, measure_image
from flenwheel.identity.backends import FaceBackend, load_backend
from flenwheel.models import runtime
from flenwheel.models.critic import Critic, CriticAnswer
from flenwheel.store.objects import MASKS
from flenwheel.store.workspace import Workspace

BoxLike = Sequence[float]


@dataclass(frozen=True)
class StoredMask:
    """A mask written to the store, and the catalog row that links it to its image and category."""

    mask_id: str  # sha256 of the PNG bytes
    path: str  # relative to the data root
    image_id: str
    category: str
    mask: Mask
    created: bool  # this process wrote the file (removed again if the batch's catalog write fails)

    def row(self, run_id: str | None) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "category": self.category,
            "mask_id": self.mask_id,
            "kind": self.mask.kind,
            "confidence": round(self.mask.confidence, 4),
            "fraction": round(self.mask.fraction, 4),
            "path": self.path,
            "params": self.mask.params,
            "run_id": run_id,
        }


@dataclass(frozen=True)
class Landed:
    """Did an edit land where its prompt aimed (``adds``)? The aimed and the measured bin per axis."""

    aimed: dict[str, str]
    measured: dict[str, str | None]
    values: dict[str, float | None]

    @property
    def passed(self) -> bool:
        return all(self.measured.get(axis) == value for axis, value in self.aimed.items())

    @property
    def score(self) -> float:
        """The share of aimed axes the edit landed on."""
        return sum(self.measured.get(axis) == value for axis, value in self.aimed.items()) / len(self.aimed)


def landed_in(aims: dict[str, str], attributes: Attributes) -> Landed:
    values = {"yaw": attributes.yaw, "pitch": attributes.pitch, "framing": attributes.face_share}
    return Landed(
        dict(aims),
        {axis: attributes.bin(axis) for axis in aims},
        {axis: None if values.get(axis) is None else round(values[axis], 3) for axis in aims if axis in values},
    )


@dataclass
class AttemptCheck:
    """One attempt's verdict with the mask it was judged against."""

    verification: Verification
    mask: StoredMask
    answers: list[CriticAnswer] = field(default_factory=list)
    critic: str = ""  # the critic's model ref
    landed: Landed | None = None  # None: the prompt aims at no measured bin

    @property
    def failures(self) -> list[str]:
        landed = ["landed"] if self.landed is not None and not self.landed.passed else []
        return [
            *self.verification.failures,
            *landed,
            *(f"critic:{a.check_id}" for a in self.answers if not a.passed),
        ]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def badness(self) -> tuple[int, float]:
        """Orders attempts when none passes: fewer failed checks first, then more change."""
        return (len(self.failures), -self.verification.change)


def mask_relpath(mask_id: str) -> str:
    return f"{MASKS}/{mask_id[:2]}/{mask_id}.png"


def store_mask(root: Path, image_id: str, category: str, mask: Mask) -> StoredMask:
    data = mask_png(mask)
    mask_id = hashlib.sha256(data).hexdigest()
    path = root / mask_relpath(mask_id)
    created = not path.exists()
    if created:
        atomic_write(path, data)
    return StoredMask(mask_id, mask_relpath(mask_id), image_id, category, mask, created)


@dataclass
class EditChecker:
    """Checks edits of one batch; masks are proposed once per (source, category) and kept for the batch."""

    root: Path
    face_backend: FaceBackend | None  # None: the face count is not checked
    settings: VerifySettings
    # None: no yes/no checks; a callable is asked for the critic at each check, so the critic can be the editor's
    # own text encoder once the editor has loaded it (runtime.vlm)
    critic: Critic | Callable[[], Critic] | None = None
    masks: dict[tuple[str, str], StoredMask] = field(default_factory=dict)

    def mask_for(self, parent_id: str, original: Image.Image, prompt: PromptEntry, box: BoxLike | None) -> StoredMask:
        key = (parent_id, prompt.category)
        if key not in self.masks:
            self.masks[key] = store_mask(self.root, parent_id, prompt.category, propose(original, prompt.category, box))
        return self.masks[key]

    def check(
        self, parent_id: str, original: Image.Image, edited: Image.Image, prompt: PromptEntry, box: BoxLike | None
    ) -> AttemptCheck:
        spec = verifier_for(prompt.category, prompt.verify)
        stored = self.mask_for(parent_id, original, prompt, box)
        rgb = np.asarray(edited.convert("RGB"))
        faces, landed, detections = None, None, None
        if prompt.aims and self.face_backend is not None:
            # one detection serves both: the bins are measured on the main face, the face check counts them all
            attributes, _, detections = measure_image(self.face_backend, rgb)
            landed = landed_in(prompt.aims, attributes)
        if spec.faces is not None and self.face_backend is not None:
            faces = count_faces(self.face_backend, rgb, detections)
        checked = AttemptCheck(verify(original, edited, stored.mask, spec, faces), stored, landed=landed)
        if self.critic is not None:
            critic = self.critic if isinstance(self.critic, Critic) else self.critic()
            checked.answers = critic.answer(edited, [*self.settings.critic_checks, *prompt.checks])
            checked.critic = critic.source
        return checked

    def new_files(self) -> Sequence[Path]:
        return [self.root / m.path for m in self.masks.values() if m.created]


def checker_for(ws: Workspace, profile: str | None, backend: str) -> EditChecker | None:
    """The checker ``verify:`` in the settings asks for, None when ``verify.enabled`` is off: the masks, verifier
    (faces counted by the identity ``backend``) and, with ``verify.critic``, the critic that enrichment runs on
    every edit and ``flenwheel eval-editors`` on every compared edit, so both judge edits alike."""
    settings = ws.settings.verify
    if not settings.enabled:
        return None
    critic = (lambda: runtime.critic(ws, profile)) if settings.critic else None  # loaded at its first question
    return EditChecker(ws.root, load_backend(backend, ws.settings.identity), settings, critic)


def verification_rows(check: AttemptCheck, image_id: str, prompt: PromptEntry, run_id: str | None) -> list[dict]:
    """``verifications`` rows of one checked image: one per check, with the threshold it was held to."""
    spec = verifier_for(prompt.category, prompt.verify)
    thresholds = {
        "preserve_ssim": spec.min_ssim,
        "preserve_psnr": spec.min_psnr,
        "change": spec.min_change,
        "faces": spec.faces,
    }
    rows = [
        {
            "image_id": image_id,
            "name": name,
            "score": score,
            "threshold": thresholds.get(name),
            "passed": passed,
            "mask_id": check.mask.mask_id,
            "params": check.verification.params,
            "run_id": run_id,
        }
        for name, score, passed in check.verification.rows()
    ]
    if check.landed is not None:
        # The measured bin is the verdict; the share of aimed axes hit is no margin (an exact check, like faces).
        rows.append(
            {
                "image_id": image_id,
                "name": "landed",
                "score": check.landed.score,
                "threshold": None,
                "passed": check.landed.passed,
                "mask_id": None,
                "run_id": run_id,
                "params": {
                    "aimed": check.landed.aimed,
                    "measured": check.landed.measured,
                    "values": check.landed.values,
                    "prompt_id": prompt.id,
                },
            }
        )
    # The critic's answers are checks like the others: p(yes) against the check's threshold.
    return rows + [a.verification(image_id, check.critic, run_id) for a in check.answers]
