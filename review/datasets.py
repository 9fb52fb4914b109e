"""The review dataset of a character: candidates with their sources, fields for sorting, tags for decisions.

Each sample is one stored image (``filepath`` is the store file) and carries ``image_id``, ``source_id``
(the source photo it derives from), ``parent_id``, ``gate``, ``origin``, ``editor``, ``prompt_id``, ``seed``,
``verdict``, ``similarity``, ``threshold`` and the identity ``embedding`` (for FiftyOne's similarity and
uniqueness tools); the edit checks ``verified``, ``failed_checks``, ``attempts`` (docs/verification.md), each
failed check also as a tag ``check:<name>`` to filter on; the quality ``flags`` (docs/coverage.md), each also a tag
``flag:<name>``, shown whether or not they decide anything (``review.auto_reject``); the coverage bins ``yaw_bin``,
``pitch_bin``, ``framing``, ``expression``, ``light``, ``warmth_bin``; the current ``decision``, the ``uncertainty`` the
gate gives the candidate and ``uncertainty_reason``, why (e.g. which check is borderline, with its score and
threshold; saved view ``hardest-first``: undecided candidates, the most uncertain first, see
:func:`flenwheel.gate.triage`); and the training ``caption`` (:mod:`flenwheel.dataset.captions`).

A reviewer edits a caption by changing that field — in the App with the built-in *Edit field values* operator
(select the sample, open the operator browser with the backtick key, field ``caption``) or from Python; the next
sync records the edit as a new caption row (``caption_catalog`` is flenwheel's copy of what the catalog said, so
an edit is told apart from a caption the catalog changed since). Source photos are in the dataset too, so the saved view
``by-source`` groups every source with its variants. Candidates that failed the identity filter are tagged
``auto_rejected`` and stay visible; an edit's attempts that were not chosen are not in the dataset. Reviewers
tag ``approved`` or ``rejected``; :func:`read_decisions` turns those tags into catalog reviews.
"""

from __future__ import annotations

import hashlib
from typing import Any

from flenwheel import gate
from flenwheel.catalog import Catalog
from flenwheel.dataset.captions import with_trigger
from flenwheel.review import fiftyone
from flenwheel.store.workspace import Workspace

APPROVED, REJECTED, AUTO_REJECTED = "approved", "rejected", "auto_rejected"
GROUP_VIEW = "by-source"
QUEUE_VIEW = "hardest-first"
BIN_FIELDS = ("yaw_bin", "pitch_bin", "framing", "expression", "light", "warmth_bin")


def dataset_name(ws: Workspace, character: str) -> str:
    """Unique per data root, so two flenwheel roots can share one MongoDB."""
    return f"flenwheel-{character}-{hashlib.sha256(str(ws.root).encode()).hexdigest()[:6]}"


def open_dataset(ws: Workspace, character: str) -> Any:
    fo = fiftyone(ws)
    name = dataset_name(ws, character)
    if fo.dataset_exists(name):
        return fo.load_dataset(name)
    ds = fo.Dataset(name)
    ds.persistent = True  # non-persistent datasets vanish when the last client exits
    ds.info = {"character": character, "root": str(ws.root)}
    ds.save()
    return ds


def sync_candidates(ws: Workspace, catalog: Catalog, character: str) -> int:
    """Add new images to the dataset and refresh identity fields of known ones; reviewers' tags are kept.

    Returns the number of samples added.
    """
    fo = fiftyone(ws)
    ds = open_dataset(ws, character)
    # Declared, not inferred: a dataset whose candidates were never checked holds only None in them.
    for name, kind, sub in (
        ("verified", fo.BooleanField, None),
        ("attempts", fo.IntField, None),
        ("failed_checks", fo.ListField, fo.StringField),
        ("flags", fo.ListField, fo.StringField),
        *((name, fo.StringField, None) for name in BIN_FIELDS),
        ("caption", fo.StringField, None),
        ("caption_catalog", fo.StringField, None),
        ("uncertainty", fo.FloatField, None),
        ("uncertainty_reason", fo.StringField, None),
        ("decision", fo.StringField, None),
    ):
        if not ds.has_sample_field(name):
            ds.add_sample_field(name, kind, **({"subfield": sub} if sub else {}))
    known = dict(zip(ds.values("image_id"), ds.values("id"), strict=True)) if len(ds) else {}
    gates = {origin: stage for stage, origins in gate.STAGE_ORIGINS.items() for origin in origins}
    review: dict[str, dict[str, Any]] = {}
    for stage in gate.STAGE_ORIGINS:
        for c in gate.Gate(catalog, character, stage).candidates():
            t = gate.triage(c, ws.settings.review)
            review[c["image_id"]] = {
                "decision": c["decision"],
                "uncertainty": None if t is None else t.uncertainty,
                "uncertainty_reason": "not scored yet" if t is None else t.why,
            }
    new, updates = [], {}
    for r in catalog.review_dataset_rows(character):
        fields = {
            "image_id": r["image_id"],
            "source_id": r["source_id"],
            "parent_id": r["parent_id"],
            "origin": r["origin"],
            "gate": gate.gate_id(character, gates[r["origin"]]) if r["origin"] in gates else None,
            "editor": r["editor"],
            "prompt_id": r["prompt_id"],
            "seed": r["seed"],
            "verdict": r["verdict"],
            "similarity": r["similarity"],
            "threshold": r["threshold"],
            "embedding": list(r["embedding"]) if r["embedding"] is not None else None,
            "verified": r["verified"],
            "failed_checks": list(r["failed_checks"]),
            "flags": list(r["flags"]),
            **{name: r[name] for name in BIN_FIELDS},
            "attempts": r["attempts"] or None,
            "caption_catalog": r["caption"],
            "decision": review.get(r["image_id"], {}).get("decision"),
            "uncertainty": review.get(r["image_id"], {}).get("uncertainty"),
            "uncertainty_reason": review.get(r["image_id"], {}).get("uncertainty_reason"),
        }
        if r["image_id"] in known:
            updates[known[r["image_id"]]] = fields
            continue
        tags = [AUTO_REJECTED] if r["origin"] != "source" and r["verdict"] not in (None, "pass") else []
        tags += [f"check:{name}" for name in r["failed_checks"]]
        tags += [f"flag:{name}" for name in r["flags"]]
        new.append(fo.Sample(filepath=str(ws.root / r["path"]), tags=tags, caption=r["caption"], **fields))
    if new:
        ds.add_samples(new, progress=False)
    for sample in ds.select(list(updates)).iter_samples(autosave=True, progress=False):
        if sample.caption == sample.caption_catalog:  # else a reviewer's edit waits for pull_captions
            sample["caption"] = updates[sample.id]["caption_catalog"]
        for key, value in updates[sample.id].items():
            sample[key] = value
        if sample.origin != "source" and sample.verdict not in (None, "pass") and AUTO_REJECTED not in sample.tags:
            sample.tags.append(AUTO_REJECTED)
        # flags arrive after the sample when an image is assessed later than it was first synced
        sample.tags.extend(t for t in (f"flag:{name}" for name in sample.flags or []) if t not in sample.tags)
    if GROUP_VIEW not in ds.list_saved_views():
        ds.save_view(GROUP_VIEW, ds.group_by("source_id", order_by="origin"))
    if QUEUE_VIEW not in ds.list_saved_views():  # undecided candidates, the most uncertain first
        F = fo.ViewField
        queue = ds.match((F("gate") != None) & (F("decision") == None))  # noqa: E711 - FiftyOne expressions
        ds.save_view(QUEUE_VIEW, queue.sort_by("uncertainty", reverse=True))
    return len(new)


def read_decisions(ws: Workspace, character: str, reviewer: str | None = None) -> list[dict[str, Any]]:
    """Review rows for every candidate tagged approved or rejected in FiftyOne (both tags: rejected wins)."""
    ds = open_dataset(ws, character)
    rows = []
    tagged = ds.match_tags([APPROVED, REJECTED]).select_fields(["image_id", "gate", "tags"])
    for sample in tagged.iter_samples(progress=False):
        if not sample.gate:
            continue  # source photos are not reviewed here
        decision = REJECTED if REJECTED in sample.tags else APPROVED
        rows.append(
            {
                "image_id": sample.image_id,
                "gate_id": sample.gate,
                "decision": decision,
                "source": "fiftyone",
                "reviewer": reviewer,
                "note": "tagged in FiftyOne",
            }
        )
    return rows


def pull_decisions(ws: Workspace, catalog: Catalog, character: str, run_id: str | None) -> int:
    """FiftyOne tags into ``reviews``; returns how many decisions changed."""
    return catalog.add_reviews(read_decisions(ws, character), run_id)


def pull_captions(
    ws: Workspace, catalog: Catalog, character: str, run_id: str | None, reviewer: str | None = None
) -> int:
    """Captions reviewers changed in FiftyOne into ``captions`` (source fiftyone); returns how many were recorded.

    The trigger word is put in front of an edit that left it out; the sample then shows the caption as stored.
    """
    trigger = ws.character(character).trigger
    ds = open_dataset(ws, character)
    if not len(ds) or not ds.has_sample_field("caption"):
        return 0
    edited = {}
    for sample in ds.select_fields(["image_id", "caption", "caption_catalog"]).iter_samples(progress=False):
        if sample.caption and sample.caption != sample.caption_catalog:
            edited[sample.id] = (sample.image_id, with_trigger(trigger, sample.caption))
    rows = [
        {
            "image_id": image_id,
            "caption": text,
            "source": "fiftyone",
            "author": reviewer,
            "params": {"edited_in": "fiftyone"},
        }
        for image_id, text in edited.values()
    ]
    written = catalog.add_captions(rows, run_id)
    for sample in ds.select(list(edited)).iter_samples(autosave=True, progress=False):
        sample["caption"] = sample["caption_catalog"] = edited[sample.id][1]
    return written


def sync_both_ways(ws: Workspace, catalog: Catalog, character: str, run_id: str | None) -> dict[str, int]:
    """Reviewers' caption edits and tags into the catalog, then new candidates and fresh fields out to FiftyOne.

    In this order: the pull reads what reviewers changed before the push refreshes the fields they changed.
    Returns how many caption edits and decisions were recorded and samples added.
    """
    captions = pull_captions(ws, catalog, character, run_id)
    decisions = pull_decisions(ws, catalog, character, run_id)
    return {"captions": captions, "decisions": decisions, "added": sync_candidates(ws, catalog, character)}
