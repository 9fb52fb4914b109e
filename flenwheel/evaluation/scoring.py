"""Sample scoring: one image judged as a sample of a character — likeness, copy score, prompt adherence, verdict.

The one engine behind checkpoint choice (:mod:`flenwheel.training`), synthetic admission (:mod:`flenwheel.dataset`),
the iteration report and ``flenwheel evaluate`` (docs/evaluation.md):

* **likeness** — identity similarity of the sample's one face to the character's reference set, as the identity
  filter computes it (:func:`flenwheel.identity.judge_image`: the character's backend and ``decide_by``; a
  reference photo is compared with the other references only, leave-one-out);
* **copy score** — closeness to the *nearest* member of the frozen dataset version the LoRA was trained on:
  ``min(identity similarity to that member, composition similarity to it)`` (:mod:`.composition`). A copy has the
  member's face *and* its picture; a different photo of the person has the face only, another person in the same
  setting the picture only. A member is not its own nearest image (leave-one-out);
* **adherence** — the share of the sample's prompt checks the VLM critic passed; None (not measured) without
  checks or without a critic;
* **verdict**, in order: ``no_face`` (no face clear enough to judge: none, only weak detections, or smaller than
  ``identity.min_face_px``), ``multi_face``, ``copy`` (copy score at or above the band's ceiling), ``weak``
  (likeness below the band's floor), else ``good``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character, Check
from flenwheel.core.errors import FlenwheelError
from flenwheel.evaluation.band import Band, band_for
from flenwheel.evaluation.composition import Layout, composition_similarity, layout, layouts
from flenwheel.identity import judge_for, judge_image, load_backend, reference_set_for
from flenwheel.models import runtime
from flenwheel.models.critic import Critic, CriticAnswer
from flenwheel.store.objects import load_rgb, read_file
from flenwheel.store.workspace import Workspace

VERDICTS = ("good", "copy", "weak", "no_face", "multi_face")
NO_USABLE_FACE = ("no_face", "low_confidence", "small_face")  # identity verdicts with no face to judge

CriticSource = Critic | Callable[[], Critic] | None  # a callable is asked at the first check (loaded lazily)


class EvaluationError(FlenwheelError):
    """Samples cannot be evaluated as asked; the message says what to do."""


@dataclass(frozen=True)
class SampleScore:
    """How one image fares as a sample of the character (see the module docstring)."""

    key: str  # file name, image id or sample name
    verdict: str
    likeness: float | None = None
    copy_score: float | None = None
    nearest: str | None = None  # image id of the nearest member of the training version
    nearest_identity: float | None = None  # identity similarity to that member
    composition: float | None = None  # composition similarity to that member
    n_faces: int = 0
    identity: str | None = None  # the identity filter's verdict of the same image (pass, fail, no_face, ...)
    prompt_id: str | None = None
    seed: int | None = None
    adherence: float | None = None
    answers: tuple[CriticAnswer, ...] = ()
    critic: str = ""  # the critic's model ref

    @property
    def one_face(self) -> bool:
        return self.verdict in ("good", "copy", "weak")

    def label(self) -> str:
        """A short tile label: ``good 0.61``, ``copy 0.93``, ``no_face``."""
        if self.verdict == "copy" and self.copy_score is not None:
            return f"copy {self.copy_score:.2f}"
        return self.verdict if self.likeness is None or not self.one_face else f"{self.verdict} {self.likeness:.2f}"

    def verifications(self, image_id: str, band: Band, version: str, run_id: str | None) -> list[dict[str, Any]]:
        """The sample as ``verifications`` rows of a catalogued image: check ``copy`` (its copy score against the
        ceiling, failed when the verdict is ``copy``; the verdict and the rest in ``params``) and the critic's
        answers (``critic:<check>``), so the gate, the auto policy, FiftyOne and SQL see them as checks."""
        copy = {
            "image_id": image_id,
            "name": "copy",
            "score": self.copy_score,
            "threshold": band.copy_ceiling,
            "passed": self.verdict != "copy",
            "mask_id": None,
            "run_id": run_id,
            "params": {
                "verdict": self.verdict,
                "likeness": self.likeness,
                "likeness_floor": band.likeness_floor,
                "nearest": self.nearest,
                "nearest_identity": self.nearest_identity,
                "composition": self.composition,
                "version": version,
            },
        }
        return [copy, *(a.verification(image_id, self.critic, run_id) for a in self.answers)]

    def to_json(self) -> dict[str, Any]:
        d = {"file": self.key, **asdict(self)}
        del d["key"]
        d["answers"] = [{"check": a.check_id, "p_yes": a.p_yes, "passed": a.passed} for a in self.answers]
        return d


@dataclass(frozen=True)
class Nearest:
    image_id: str
    copy_score: float | None
    identity: float
    composition: float | None


@dataclass
class Member:
    """A member of the training version with a face: its embedding, box and (on demand) its layout."""

    image_id: str
    path: Path
    embedding: np.ndarray
    box: tuple[float, float, float, float]
    layout: Layout | None = field(default=None, repr=False)


def configured_critic(ws: Workspace, profile: str | None) -> CriticSource:
    """The critic ``evaluation.critic`` names (``verify``: verify.critic's), loaded at its first question; None when
    none is configured: adherence is then not measured."""
    ref = ws.settings.evaluation.critic_ref(ws.settings.verify)
    return None if ref is None else (lambda: runtime.vlm(ws, profile, ref))


def adherence_of(answers: Sequence[CriticAnswer]) -> float | None:
    """The share of checks passed; None when nothing was asked (not measured, never a made-up number)."""
    return sum(a.passed for a in answers) / len(answers) if answers else None


class SampleScorer:
    """Scores images as samples of ``character`` against the frozen version ``version_id``.

    The reference set, the identity backend and the band are read once; the members' faces come from their stored
    identity scores (a member never scored with the backend is scored on first use) and their layouts are computed
    when a sample is first compared with them, so a scorer serves many samples (every checkpoint of a run).
    """

    def __init__(
        self, ws: Workspace, catalog: Catalog, character: Character, version_id: str, critic: CriticSource = None
    ) -> None:
        if not catalog.version_exists(version_id):
            raise EvaluationError(
                f"no dataset version {version_id!r} of {character.name}: freeze one with "
                f"`flenwheel dataset freeze {character.name}` (flenwheel dataset list {character.name})"
            )
        self.ws, self.catalog, self.character, self.version_id = ws, catalog, character, version_id
        self.refset = reference_set_for(ws, catalog, character)
        self.judge = judge_for(ws, character, self.refset)
        self.backend = load_backend(self.refset.backend, ws.settings.identity)
        self.band: Band = band_for(self.refset.backend, ws.settings.evaluation)
        self._critic = critic
        self._members: list[Member] | None = None
        self._matrix: np.ndarray | None = None

    # ------------------------------------------------------------------ the training version

    @property
    def members(self) -> list[Member]:
        """Members of the version with a face (a member without one cannot be copied face and all)."""
        if self._members is None:
            found = []
            for row in self.catalog.version_member_faces(self.version_id, self.backend.name):
                path = self.ws.root / row["path"]
                box, embedding = row["face_box"], row["embedding"]
                if row["verdict"] is None:  # never scored with this backend
                    score = judge_image(self.backend, self.judge, load_rgb(path), image_id=row["image_id"])
                    box, embedding = score.face_box, score.embedding
                if box is None or embedding is None:
                    continue
                found.append(Member(row["image_id"], path, np.asarray(embedding, dtype=np.float32), tuple(box)))
            self._members = found
            self._matrix = np.stack([m.embedding for m in found]) if found else None
        return self._members

    def in_training_captions(self, prompts: Mapping[str, str]) -> list[str]:
        """Ids of ``prompts`` (id -> text as sent) whose text is a caption of the version: an evaluation prompt the
        LoRA was trained on measures recall of a training photo, not generalisation."""
        captions = {(r["caption"] or "").strip().lower() for r in self.catalog.version_members(self.version_id)}
        return [pid for pid, text in prompts.items() if text.strip().lower() in captions]

    def member_ids(self) -> set[str]:
        return {m.image_id for m in self.members}

    def _layout(self, member: Member) -> Layout:
        if member.layout is None:
            member.layout = layout(load_rgb(member.path), member.box)
        return member.layout

    def nearest(
        self, rgb: np.ndarray, embedding: Sequence[float], box: Sequence[float], exclude: str | None
    ) -> Nearest | None:
        """The member the sample is closest to by copy score (None when the version has no face to compare).

        Members are visited from the most alike face down; as the copy score is at most the identity similarity,
        the search stops once a member's identity similarity cannot beat the best copy score found.
        """
        members = self.members
        if not members or self._matrix is None:
            return None
        sims = self.backend.similarities(np.asarray(embedding, dtype=np.float32), self._matrix)
        order = [i for i in np.argsort(-sims) if members[i].image_id != exclude]
        if not order:
            return None
        sample = layouts(rgb, box)
        best: Nearest | None = None
        for i in order:
            sim = float(sims[i])
            if best is not None and best.copy_score is not None and sim <= best.copy_score:
                break
            comp = composition_similarity(sample, self._layout(members[i]))
            if comp is None:
                continue
            score = min(sim, comp)
            if best is None or best.copy_score is None or score > best.copy_score:
                best = Nearest(members[i].image_id, round(score, 6), round(sim, 6), round(comp, 6))
        if best is None:  # no window overlapped enough: the most alike face, no copy score
            first = order[0]
            return Nearest(members[first].image_id, None, round(float(sims[first]), 6), None)
        return best

    # ------------------------------------------------------------------ samples

    def answers(self, image: Image.Image | np.ndarray, checks: Sequence[Check]) -> tuple[list[CriticAnswer], str]:
        """The critic's answers to ``checks`` (none without checks or without a critic) and its model ref."""
        if not checks or self._critic is None:
            return [], ""
        critic = self._critic if isinstance(self._critic, Critic) else self._critic()
        return critic.answer(image, checks), critic.source

    def score(
        self,
        image: Image.Image | np.ndarray,
        key: str,
        image_id: str | None = None,
        prompt_id: str | None = None,
        seed: int | None = None,
        checks: Sequence[Check] = (),
    ) -> SampleScore:
        """Judge one image (``image_id``: its id when it is a catalogued image, for leave-one-out)."""
        rgb = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image
        identity = judge_image(self.backend, self.judge, rgb, image_id=image_id)
        answers, critic = self.answers(image, checks)
        common: dict[str, Any] = {
            "key": key,
            "n_faces": identity.n_faces,
            "identity": identity.verdict,
            "prompt_id": prompt_id,
            "seed": seed,
            "adherence": adherence_of(answers),
            "answers": tuple(answers),
            "critic": critic,
        }
        if identity.verdict in NO_USABLE_FACE:
            return SampleScore(verdict="no_face", **common)
        if identity.verdict == "multi_face":
            return SampleScore(verdict="multi_face", likeness=identity.similarity, **common)
        assert identity.embedding is not None and identity.face_box is not None
        near = self.nearest(rgb, identity.embedding, identity.face_box, exclude=image_id)
        likeness = identity.similarity
        copy_score = near.copy_score if near else None
        if copy_score is not None and copy_score >= self.band.copy_ceiling:
            verdict = "copy"
        elif likeness is None or likeness < self.band.likeness_floor:
            verdict = "weak"
        else:
            verdict = "good"
        return SampleScore(
            verdict=verdict,
            likeness=likeness,
            copy_score=copy_score,
            nearest=near.image_id if near else None,
            nearest_identity=near.identity if near else None,
            composition=near.composition if near else None,
            **common,
        )

    def score_file(self, path: Path) -> SampleScore:
        """Judge an image file (decoded as the store decodes it). A file whose bytes are a stored image of the
        version or the reference set (an exported training image) is left out of its own comparisons."""
        data = read_file(path)
        digest = hashlib.sha256(data).hexdigest()
        known = self.member_ids() | set(self.refset.image_ids)
        return self.score(load_rgb(path), path.name, image_id=digest if digest in known else None)
