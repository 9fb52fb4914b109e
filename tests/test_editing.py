"""Editors, edit jobs, review decisions and frozen versions, at the engine level."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flenwheel import gate
from flenwheel.catalog import Catalog
from flenwheel.core.config import PromptEntry
from flenwheel.dataset import versions
from flenwheel.editing import AugmentEditor, EditJob, pending_jobs, run_edit_batch
from flenwheel.identity import filter_images
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace


@pytest.fixture
def obama(ws: Workspace, catalog: Catalog, faces: Path) -> list[str]:
    """obama_1 and obama_2 ingested and scored (which gives the sources their face boxes)."""
    outcomes = ingest_paths(
        ws, catalog, "obama", [faces / "obama" / "obama_1.jpg", faces / "obama" / "obama_2.jpg"], run_id=None
    )
    filter_images(ws, catalog, ws.character("obama"))
    return sorted(o.image_id for o in outcomes)


def prompts(ws: Workspace, *ids: str) -> list[PromptEntry]:
    lib = ws.prompt_library()
    return [lib[i] for i in ids]


def test_augment_is_deterministic_per_seed(ws: Workspace, faces: Path) -> None:
    img = Image.open(faces / "obama" / "obama_1.jpg").convert("RGB")
    editor = AugmentEditor()
    for prompt in ws.prompt_library().values():
        if not editor.supports(prompt):
            assert prompt.augment is None
            continue
        a = editor.edit(img, EditJob("p", prompt, 0), (300, 200, 560, 460))
        b = editor.edit(img, EditJob("p", prompt, 0), (300, 200, 560, 460))
        c = editor.edit(img, EditJob("p", prompt, 1), (300, 200, 560, 460))
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image)), prompt.id
        assert not np.array_equal(np.asarray(a.image), np.asarray(c.image)), prompt.id
        assert a.image.size == img.size and a.params["augment"]["op"] == prompt.augment.op


def test_background_replacement_keeps_the_face(ws: Workspace, faces: Path) -> None:
    img = Image.open(faces / "obama" / "obama_1.jpg").convert("RGB")
    box = (300, 180, 580, 460)
    out = AugmentEditor().edit(img, EditJob("p", ws.prompt_library()["bg-blue"], 0), box).image
    before, after = np.asarray(img).astype(int), np.asarray(out).astype(int)
    x0, y0, x1, y1 = box
    assert np.abs(before[y0:y1, x0:x1] - after[y0:y1, x0:x1]).mean() < 3  # the face is untouched
    corner = after[:40, :40].reshape(-1, 3).mean(0)
    assert corner[2] > corner[0] + 50  # the background became blue


def test_edit_jobs_record_everything_and_run_once(ws: Workspace, catalog: Catalog, obama: list[str]) -> None:
    editor = AugmentEditor()
    todo = pending_jobs(catalog, "obama", editor, prompts(ws, "angle-mirror", "light-low-key", "expr-smile"), [0, 1])
    assert len(todo) == 2 * 2 * 2  # expr-smile has no CPU transform: skipped by this editor
    with catalog.run("test:enrich", {}) as run_id:
        made = run_edit_batch(ws, catalog, "obama", editor, todo, run_id)
    assert len(set(made)) == 8
    assert pending_jobs(catalog, "obama", editor, prompts(ws, "angle-mirror", "light-low-key"), [0, 1]) == []
    rows = catalog.rows("SELECT * FROM derivations ORDER BY prompt_id, seed")
    assert len(rows) == 8
    for r in rows:
        assert r["op"] == "augment" and r["parent_id"] in obama and r["root_id"] == r["parent_id"]
        assert r["model_ref"].startswith("flenwheel.augment@") and r["strength"] == 1.0 and len(r["job_key"]) == 64
        params = json.loads(r["params"])
        assert params["editor"] == "augment" and params["category"] in ("angles", "lighting")
        assert params["face_box"] and params["augment"]["op"] in ("mirror", "light")
    # the same job again reproduces the same bytes: the lineage is enough to rebuild an image
    first = todo[0]
    again = editor.edit(
        Image.open(ws.root / catalog.image(first.parent_id)["path"]).convert("RGB"),
        first,
        tuple(json.loads(rows[0]["params"])["face_box"]),
    )
    from flenwheel.store.objects import encode_png

    assert hashlib.sha256(encode_png(again.image)).hexdigest() in made


def test_auto_review_cli_decisions_and_freeze(
    ws: Workspace, catalog: Catalog, obama: list[str], tmp_path: Path
) -> None:
    editor = AugmentEditor()
    jobs = pending_jobs(catalog, "obama", editor, prompts(ws, "angle-mirror", "angle-close-up", "bg-blue"), [0])
    made = run_edit_batch(ws, catalog, "obama", editor, jobs, None)
    filter_images(ws, catalog, ws.character("obama"), image_ids=made)
    before = gate.Gate(catalog, "obama", "enrich").status()
    assert before.candidates == 6 and before.pending == 6 and before.unscored == 0
    approved, rejected = gate.Gate(catalog, "obama", "enrich").auto_review(None)
    assert approved + rejected == 6 and approved >= 4
    assert gate.Gate(catalog, "obama", "enrich").auto_review(None) == (0, 0)  # idempotent
    reviews = catalog.rows("SELECT * FROM review_state")
    assert {r["source"] for r in reviews} == {"auto"} and all(r["note"].startswith("auto: ") for r in reviews)

    v1 = versions.freeze(ws, catalog, ws.character("obama"), None)
    assert v1.created and v1.version_id == "obama@v1" and v1.n_images == 2 + approved
    assert hashlib.sha256(v1.manifest_path.read_bytes()).hexdigest() == v1.manifest_sha256
    manifest = json.loads(v1.manifest_path.read_text())
    captions = {m["caption"] for m in manifest["members"]}
    assert "photo of fw_obama" in captions and any(c.startswith("photo of fw_obama, ") for c in captions)
    again = versions.freeze(ws, catalog, ws.character("obama"), None)
    assert not again.created and again.version_id == "obama@v1" and again.manifest_sha256 == v1.manifest_sha256

    # a human overrides one decision through a CSV; the next freeze is v2 and the diff shows it
    target = next(r["image_id"] for r in reviews if r["decision"] == "approved")
    csv_file = tmp_path / "d.csv"
    csv_file.write_text(f"image_id,decision,note\n{target[:10]},reject,blurry\n")
    changed = gate.Gate(catalog, "obama", "enrich").decide(gate.read_decisions_csv(csv_file), "cli", "me", None)
    assert changed == 1
    v2 = versions.freeze(ws, catalog, ws.character("obama"), None)
    assert v2.version_id == "obama@v2" and v2.n_images == v1.n_images - 1
    d = versions.diff(catalog, "obama@v1", "obama@v2")
    assert [m["image_id"] for m in d["removed"]] == [target] and d["added"] == []
    assert [v["version_id"] for v in catalog.versions("obama")] == ["obama@v1", "obama@v2"]
    assert (
        catalog.rows("SELECT parent_version FROM dataset_versions WHERE number = 2")[0]["parent_version"] == "obama@v1"
    )


def test_decide_checks_every_id_first(ws: Workspace, catalog: Catalog, obama: list[str]) -> None:
    editor = AugmentEditor()
    made = run_edit_batch(
        ws, catalog, "obama", editor, pending_jobs(catalog, "obama", editor, prompts(ws, "angle-mirror"), [0]), None
    )
    with pytest.raises(gate.ReviewError, match="not a candidate"):
        gate.Gate(catalog, "obama", "enrich").decide(
            [(made[0], "approved", None), ("abcdef12", "approved", None)], "cli", None, None
        )
    assert catalog.rows("SELECT count(*) AS n FROM reviews")[0]["n"] == 0
    with pytest.raises(gate.ReviewError, match="decision must be approve or reject"):
        bad = Path(ws.root) / "bad.csv"
        bad.write_text(f"{made[0]},maybe\n")
        gate.read_decisions_csv(bad)


def test_freeze_without_anything_is_an_error(ws: Workspace, catalog: Catalog) -> None:
    catalog.migrate()
    with pytest.raises(versions.VersionError, match="nothing to freeze"):
        versions.freeze(ws, catalog, ws.character("obama"), None)
