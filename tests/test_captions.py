"""VLM captions: written by the (tiny, random-weight) Qwen2.5-VL, stored with history, frozen with versions,
read by both trainers, edited in FiftyOne and synced back as a new row."""

from __future__ import annotations

import json
from pathlib import Path

from flenwheel import gate, runtime, versions
from flenwheel.captions import caption_members, clean_description, names_of, training_caption
from flenwheel.catalog import Catalog
from flenwheel.editing import AugmentEditor, EditJob, run_edit_batch
from flenwheel.identity import filter_images
from flenwheel.ingest import ingest_paths
from flenwheel.training.data import version_examples
from flenwheel.training.triplets import approved_triplets, export_triplets
from flenwheel.workspace import Workspace


def test_a_description_is_cleaned_of_openers_names_and_excess() -> None:
    raw = ("The image shows Barack Obama smiling, looking at the camera, wearing a dark suit and a white shirt, "
           "in soft window light in front of a blue wall.\n\nHe appears confident.")  # fmt: skip
    text = clean_description(raw, ["barack_obama", "barack", "obama"], max_words=40)
    assert text.startswith("the person smiling, looking at the camera")
    assert "obama" not in text.lower() and "\n" not in text and "image shows" not in text
    # cut at the last clause boundary inside the first 12 words
    assert clean_description(raw, ["barack_obama"], max_words=12) == "the person smiling, looking at the camera"
    assert clean_description("\ufffd\x06\ufffdB3\ufffd\x0f", ["obama"], 40) == ""  # random weights: nothing usable
    assert clean_description("Yes.", ["obama"], 40) == ""
    assert training_caption("fw_obama", "smiling") == "photo of fw_obama, smiling"


def _approved_edits(ws: Workspace, catalog: Catalog, faces: Path) -> None:
    character = ws.character("obama")
    ingest_paths(ws, catalog, "obama", [faces / "obama" / f"obama_{i}.jpg" for i in (1, 2)], None)
    filter_images(ws, catalog, character, image_ids=None, run_id=None)
    library = ws.prompt_library(character)
    sources = [r["image_id"] for r in catalog.source_images("obama")]
    jobs = [EditJob(s, library["angle-mirror"], 0) for s in sources]
    made = run_edit_batch(ws, catalog, "obama", AugmentEditor(), jobs, None)
    filter_images(ws, catalog, character, image_ids=made, run_id=None)
    gate.decide(catalog, "obama", "enrich", [(i, "approved", None) for i in made], "cli", "tester", None)


def test_captions_are_written_frozen_trained_on_and_edited_in_fiftyone(
    ws: Workspace, catalog: Catalog, faces: Path, tiny_models, cli
) -> None:
    _approved_edits(ws, catalog, faces)
    character = ws.character("obama")
    vlm = runtime.vlm(ws, "cpu-tiny", "editor")
    try:
        written = caption_members(ws, catalog, character, lambda: vlm, None)
    finally:
        runtime.release_models()
    members = versions.selected_members(catalog, character, ws.prompt_library(character))
    rows = catalog.rows("SELECT * FROM captions ORDER BY seq")
    assert written == len(rows) == len(members) == 4  # 2 sources + 2 approved edits
    settings = ws.settings.captions
    for r in rows:
        params = json.loads(r["params"])
        assert r["model_ref"].endswith("text_encoder") and params["decoding"] == "greedy" and "raw" in params
        description = clean_description(params["raw"], names_of(character), settings.max_words)
        # what the random-weight model wrote decides the source; either way the caption starts with the trigger
        assert (r["source"], r["caption"]) == (
            ("vlm", training_caption("fw_obama", description)) if description else ("template", r["caption"])
        )
        assert r["caption"].startswith("photo of fw_obama")
    # nothing new to caption: a second pass writes nothing and loads no model
    assert caption_members(ws, catalog, character, lambda: (_ for _ in ()).throw(AssertionError("loaded")), None) == 0

    # the CLI freezes with the captions as they are now
    cli("dataset", "freeze", "obama")
    v1 = versions.latest_version(catalog, "obama")
    frozen = {m["image_id"]: m["caption"] for m in versions.version_members(catalog, v1)}
    assert frozen == {r["image_id"]: r["caption"] for r in rows}

    # a reviewer edits one caption in FiftyOne; the sync records it (trigger word put in front) as a new row
    from flenwheel.review.datasets import open_dataset, pull_captions, sync_candidates

    sync_candidates(ws, catalog, "obama")
    edited_id = sorted(frozen)[0]
    sample = open_dataset(ws, "obama").match({"image_id": edited_id}).first()
    assert sample.caption == frozen[edited_id] == sample.caption_catalog
    # what the App's built-in "Edit field values" operator runs for the selected sample (plugins/operators)
    import fiftyone.utils.data as foud

    edit_view = open_dataset(ws, "obama").select(sample.id)
    foud.map_values(edit_view, "caption", {frozen[edited_id]: "smiling, dark suit, blue wall"})
    sync_candidates(ws, catalog, "obama")  # a sync before the pull keeps the edit
    assert open_dataset(ws, "obama").match({"image_id": edited_id}).first().caption == "smiling, dark suit, blue wall"
    assert pull_captions(ws, catalog, "obama", None, reviewer="ann") == 1
    assert pull_captions(ws, catalog, "obama", None) == 0  # synced once
    synced = cli("review", "sync", "obama")  # the CLI's sync: the same pull, then the push
    assert synced.exit_code == 0 and "0 sample(s) added, 0 decision(s) and 0 caption edit(s)" in synced.output
    history = catalog.caption_history(edited_id)
    assert [h["source"] for h in history][-1] == "fiftyone" and history[-1]["author"] == "ann"
    assert history[-1]["caption"] == "fw_obama, smiling, dark suit, blue wall"
    assert open_dataset(ws, "obama").match({"image_id": edited_id}).first().caption == history[-1]["caption"]

    # the next version holds the edit; the old one keeps what it was frozen with
    cli("dataset", "freeze", "obama", "--no-captions")
    v2 = versions.latest_version(catalog, "obama")
    assert v2 != v1 and versions.diff(catalog, v1, v2)["recaptioned"][0]["image_id"] == edited_id
    assert {m["image_id"]: m["caption"] for m in versions.version_members(catalog, v1)} == frozen
    # the FLUX trainer reads the frozen captions
    examples = {e.key: e.text for e in version_examples(ws, catalog, v2)}
    assert examples[edited_id] == "fw_obama, smiling, dark suit, blue wall"

    # the editor trainer reads the instruction and what the approved result shows
    triplets = approved_triplets(catalog, "obama", ops=("augment",))
    current = catalog.latest_captions()
    assert len(triplets) == 2 and all(t.after_caption == current[t.after_id]["caption"] for t in triplets)
    out = export_triplets(ws, triplets, "captioned")
    for line in (out / "musubi.jsonl").read_text().splitlines():
        entry = json.loads(line)
        t = next(t for t in triplets if t.after_id in entry["image_path"])
        assert entry["caption"] == f"{t.instruction.rstrip('. ')}. Result: {t.after_caption}"


def test_missing_caption_weights_give_one_line_and_write_nothing(
    ws: Workspace, catalog: Catalog, faces: Path, cli
) -> None:
    ingest_paths(ws, catalog, "obama", [faces / "obama" / "obama_1.jpg"], None)
    settings = ws.configs_dir / "flenwheel.yaml"
    settings.write_text(settings.read_text().replace("model: editor", f"model: {ws.root / 'no-such-vlm'}"))
    result = cli("dataset", "freeze", "obama")
    assert result.exit_code == 2, result.output  # a configuration the user must fix
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "VLM weights" in lines[0] and "no-such-vlm" in lines[0], result.output
    assert "captions.model: null" in lines[0]  # the way out
    assert catalog.rows("SELECT count(*) AS n FROM captions")[0]["n"] == 0
    assert versions.latest_version(catalog, "obama") is None
    assert cli("dataset", "freeze", "obama", "--no-captions").exit_code == 0  # templates need no model
