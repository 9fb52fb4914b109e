"""Frozen dataset versions: which images, with which captions; manifests; diffs.

A version holds the character's source photos that no review rejected and every candidate whose latest
decision (in any gate) is ``approved``. Captions come from the trigger word and, for candidates, the prompt
library's caption for the prompt that made them (its category when the entry has none); generated images
keep the prompt they were generated from, which already carries the trigger word.

The manifest is canonical JSON (sorted keys, no timestamps), so its sha256 depends only on the members and
their captions: freezing the same selection twice gives the same hash and no new version. Versions are
immutable; the manifest file is named by its hash under ``<root>/manifests/<character>/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagehash
from PIL import Image

from flenwheel.catalog import Catalog
from flenwheel.config import Character, PromptEntry, Workspace
from flenwheel.errors import FlenwheelError

MANIFEST_FORMAT = 1


class VersionError(FlenwheelError):
    """A dataset version cannot be made or read as asked."""


@dataclass(frozen=True)
class Member:
    image_id: str
    path: str
    origin: str
    caption: str
    prompt_id: str | None = None


def caption_for(
    trigger: str, origin: str, prompt_id: str | None, prompt_text: str | None, prompts: dict[str, PromptEntry]
) -> str:
    base = f"photo of {trigger}"
    if origin == "source" or prompt_id is None:
        return base
    if origin == "generate":
        return prompt_text or base
    entry = prompts.get(prompt_id)
    detail = (entry.caption or entry.category) if entry else None
    return f"{base}, {detail}" if detail else base


def selected_members(catalog: Catalog, character: Character, prompts: dict[str, PromptEntry]) -> list[Member]:
    """Sources not rejected plus approved candidates, ordered by image id."""
    rows = catalog.rows(
        """SELECT i.image_id, i.path, i.origin, d.prompt_id, d.prompt
           FROM images i
           LEFT JOIN (SELECT DISTINCT ON (child_id) child_id, prompt_id, prompt FROM derivations
                      WHERE parent_rank = 0 ORDER BY child_id, created_at) d ON d.child_id = i.image_id
           WHERE i.character = $c AND (
               (i.origin = 'source' AND NOT EXISTS (
                    SELECT 1 FROM review_state r WHERE r.image_id = i.image_id AND r.decision = 'rejected'))
               OR (i.origin <> 'source' AND EXISTS (
                    SELECT 1 FROM review_state r WHERE r.image_id = i.image_id AND r.decision = 'approved')
                   AND NOT EXISTS (
                    SELECT 1 FROM review_state r WHERE r.image_id = i.image_id AND r.decision = 'rejected')))
           ORDER BY i.image_id""",
        {"c": character.name},
    )
    return [
        Member(
            r["image_id"],
            r["path"],
            r["origin"],
            caption_for(character.trigger, r["origin"], r["prompt_id"], r["prompt"], prompts),
            r["prompt_id"],
        )
        for r in rows
    ]


def manifest_bytes(character: Character, members: list[Member], extra: dict[str, Any] | None = None) -> bytes:
    doc = {
        **(extra or {}),
        "format": MANIFEST_FORMAT,
        "character": character.name,
        "trigger": character.trigger,
        "members": [
            {"image_id": m.image_id, "path": m.path, "origin": m.origin, "caption": m.caption, "prompt_id": m.prompt_id}
            for m in members
        ],
    }
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, indent=1).encode()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Frozen:
    version_id: str
    created: bool
    n_images: int
    manifest_sha256: str
    manifest_path: Path


def freeze(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    run_id: str | None,
    select: Callable[[list[Member]], list[Member]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Frozen:
    """Freeze the current selection (optionally filtered by ``select``) as the next version, unless unchanged.

    ``extra`` goes into the manifest (a flywheel iteration records its number, parent version and the LoRA
    whose synthetics it adds), so an iteration makes its own version even when no synthetic was approved.
    """
    members = selected_members(catalog, character, ws.prompt_library(character))
    if select is not None:
        members = select(members)
    if not members:
        raise VersionError(f"nothing to freeze for {character.name!r}: no source photos or approved candidates")
    data = manifest_bytes(character, members, extra)
    sha = hashlib.sha256(data).hexdigest()
    rel = Path("manifests") / character.name / f"{sha}.json"
    _write_atomic(ws.root / rel, data)
    version_id, created = catalog.freeze_version(
        character.name, [(m.image_id, m.caption) for m in members], sha, rel.as_posix(), run_id
    )
    return Frozen(version_id, created, len(members), sha, ws.root / rel)


def versions(catalog: Catalog, character: str) -> list[dict[str, Any]]:
    if not catalog.path.exists():
        return []
    return catalog.rows(
        """SELECT v.version_id, v.number, v.parent_version, v.n_images, v.manifest_sha256, v.frozen_at,
                  count(*) FILTER (WHERE i.origin = 'source') AS source,
                  count(*) FILTER (WHERE i.origin IN ('edit', 'augment')) AS enriched,
                  count(*) FILTER (WHERE i.origin = 'generate') AS synthetic
           FROM dataset_versions v JOIN dataset_members m USING (version_id) JOIN images i USING (image_id)
           WHERE v.character = ? GROUP BY ALL ORDER BY v.number""",
        [character],
    )


def version_members(catalog: Catalog, version_id: str) -> list[dict[str, Any]]:
    rows = catalog.rows(
        """SELECT m.image_id, m.caption, i.origin, i.path FROM dataset_members m JOIN images i USING (image_id)
           WHERE m.version_id = ? ORDER BY m.image_id""",
        [version_id],
    )
    if not rows and not catalog.rows("SELECT 1 FROM dataset_versions WHERE version_id = ?", [version_id]):
        raise VersionError(f"no dataset version {version_id!r} (flenwheel dataset list CHARACTER)")
    return rows


def diff(catalog: Catalog, a: str, b: str) -> dict[str, list[dict[str, Any]]]:
    """Members only in ``a`` (removed), only in ``b`` (added), and in both with another caption."""
    left = {r["image_id"]: r for r in version_members(catalog, a)}
    right = {r["image_id"]: r for r in version_members(catalog, b)}
    return {
        "removed": [left[i] for i in sorted(left.keys() - right.keys())],
        "added": [right[i] for i in sorted(right.keys() - left.keys())],
        "recaptioned": [
            {**right[i], "old_caption": left[i]["caption"]}
            for i in sorted(left.keys() & right.keys())
            if left[i]["caption"] != right[i]["caption"]
        ],
    }


def latest_version(catalog: Catalog, character: str) -> str | None:
    found = versions(catalog, character)
    return found[-1]["version_id"] if found else None


# --------------------------------------------------------------------------- flywheel iterations


@dataclass
class SyntheticSelection:
    """How the approved synthetics of one LoRA were admitted into the next version."""

    candidates: int = 0
    added: list[str] = field(default_factory=list)
    near_duplicates: list[str] = field(default_factory=list)
    over_cap: list[str] = field(default_factory=list)


def _phash(ws: Workspace, path: str) -> imagehash.ImageHash:
    with Image.open(ws.root / path) as im:
        return imagehash.phash(im.convert("RGB"))


def next_version_members(
    ws: Workspace,
    catalog: Catalog,
    character: Character,
    previous_version: str | None,
    synthetic_from: str | None,
    max_synthetic_share: float,
    max_hash_distance: int,
) -> tuple[list[Member], SyntheticSelection]:
    """Members of an iteration's version: vN + newly approved real/enriched images + approved synthetics.

    Synthetics already in ``previous_version`` stay (unless a review rejected them since). New ones are the
    approved images generated with LoRA ``synthetic_from``, best identity similarity first; each is dropped
    when its perceptual hash is within ``max_hash_distance`` bits of an image already kept (near-duplicates
    teach nothing and over-weight one look), and admission stops when synthetics would exceed
    ``max_synthetic_share`` of the version (a LoRA trained mostly on its own outputs drifts).
    """
    from flenwheel.generation import synthetic_images

    current = {m.image_id: m for m in selected_members(catalog, character, ws.prompt_library(character))}
    kept = [m for m in current.values() if m.origin != "generate"]
    if previous_version:
        kept += [current[r["image_id"]] for r in version_members(catalog, previous_version)
                 if r["origin"] == "generate" and r["image_id"] in current]  # fmt: skip
    selection = SyntheticSelection()
    if synthetic_from:
        kept_ids = {m.image_id for m in kept}
        new = [current[i] for i in synthetic_images(catalog, synthetic_from) if i in current and i not in kept_ids]
        selection.candidates = len(new)
        sims = {r["image_id"]: r["similarity"] or 0.0 for r in _latest_similarity(catalog, [m.image_id for m in new])}
        new.sort(key=lambda m: (-sims.get(m.image_id, 0.0), m.image_id))
        hashes = [_phash(ws, m.path) for m in kept]
        n_real = sum(m.origin != "generate" for m in kept)
        n_synth = len(kept) - n_real
        share = min(max_synthetic_share, 0.99)
        cap = int(share * n_real / (1.0 - share)) if share > 0 else 0
        for m in new:
            h = _phash(ws, m.path)
            if any(h - other <= max_hash_distance for other in hashes):
                selection.near_duplicates.append(m.image_id)
            elif n_synth >= cap:
                selection.over_cap.append(m.image_id)
            else:
                kept.append(m)
                hashes.append(h)
                n_synth += 1
                selection.added.append(m.image_id)
    return sorted(kept, key=lambda m: m.image_id), selection


def _latest_similarity(catalog: Catalog, image_ids: list[str]) -> list[dict[str, Any]]:
    if not image_ids:
        return []
    return catalog.rows(
        """SELECT DISTINCT ON (image_id) image_id, similarity FROM identity_scores
           WHERE image_id IN (SELECT unnest(?)) ORDER BY image_id, scored_at DESC""",
        [image_ids],
    )
