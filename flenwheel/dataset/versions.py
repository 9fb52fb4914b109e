"""Frozen dataset versions: which images, with which captions; manifests; diffs.

A version holds the character's source photos that no review rejected and every candidate whose latest
decision (in any gate) is ``approved``. Each member's caption is its current row in ``captions`` (a VLM's
description or a reviewer's edit, :mod:`flenwheel.dataset.captions`); a member without one gets a template: the
trigger word and, for candidates, the prompt library's caption for the prompt that made them (its category when
the entry has none), while generated images keep the prompt they were generated from, which already carries the
trigger word. A version copies the captions it was frozen with, so later edits never change it.

The manifest is canonical JSON (sorted keys, no timestamps), so its sha256 depends only on the members and
their captions: freezing the same selection twice gives the same hash and no new version. Versions are
immutable; the manifest file is named by its hash under ``<root>/manifests/<character>/``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flenwheel.catalog import Catalog
from flenwheel.core.config import Character, PromptEntry
from flenwheel.core.errors import FlenwheelError
from flenwheel.core.files import atomic_write
from flenwheel.dataset.licences import version_licences
from flenwheel.store.workspace import Workspace

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
    """Sources not rejected plus approved candidates with their current captions, ordered by image id."""
    return [
        Member(
            r["image_id"],
            r["path"],
            r["origin"],
            r["caption"] or caption_for(character.trigger, r["origin"], r["prompt_id"], r["prompt"], prompts),
            r["prompt_id"],
        )
        for r in catalog.selectable_members(character.name)
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
    atomic_write(ws.root / rel, data)
    licences = version_licences(ws, catalog, [m.image_id for m in members])
    version_id, created = catalog.freeze_version(
        character.name, [(m.image_id, m.caption) for m in members], sha, rel.as_posix(), run_id, licences
    )
    return Frozen(version_id, created, len(members), sha, ws.root / rel)


def version_members(catalog: Catalog, version_id: str) -> list[dict[str, Any]]:
    """Members of a version (image id, caption, origin, path); an unknown version is an error."""
    rows = catalog.version_members(version_id)
    if not rows and not catalog.version_exists(version_id):
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
    found = catalog.versions(character)
    return found[-1]["version_id"] if found else None
