"""VLM captions: written by the (tiny, random-weight) Qwen2.5-VL, stored with history, frozen with versions,
read by both trainers, edited in FiftyOne and synced back as a new row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flenwheel import gate
from flenwheel.catalog import Catalog
from flenwheel.dataset import versions
from flenwheel.dataset.captions import caption_members, clean_description, names_of, training_caption
from flenwheel.editing import AugmentEditor, EditJob, run_edit_batch
from flenwheel.identity import filter_images
from flenwheel.models import runtime
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace
from flenwheel.training.data import version_examples
from flenwheel.training.triplets import approved_triplets, export_triplets


def test_a_description_is_cleaned_of_openers_names_and_excess() -> None:
    raw = (
        "The image shows Barack Obama smiling, looking at the camera, wearing a dark suit and a white shirt, "
        "in soft window light in front of a blue wall.\n\nHe appears confident."
    )
    text = clean_description(raw, ["barack_obama", "barack", "obama"], max_words=40)
    assert text.startswith("the person smiling, looking at the camera")
    assert "obama" not in text.lower() and "\n" not in text and "image shows" not in text
    # cut at the last clause boundary inside the first 12 words
    assert clean_description(raw, ["barack_obama"], max_words=12) == "the person smiling, looking at the camera"
    assert clean_description("\ufffd\x06\ufffdB3\ufffd\x0f", ["obama"], 40) == ""  # random weights: nothing usable
    assert clean_description("Yes.", ["obama"], 40) == ""
    assert training_caption("fw_obama", "smiling") == "photo of fw_obama, smiling"


# How Qwen2.5-VL and its peers open a description, and what must be left of it. The framing ("close-up of") is
# content and stays, without its article and the word for the medium; everything that only says "this is a photo"
# goes, whether or not a verb follows.
OPENINGS = [
    ("The picture is of a man in a suit", "a man in a suit"),
    ("A photo of a man smiling", "a man smiling"),
    ("The image shows a man in a dark suit, smiling at the camera.", "a man in a dark suit, smiling at the camera"),
    ("In this image, a man stands in front of a blue wall.", "a man stands in front of a blue wall"),
    ("In this image we can see a man wearing a grey jacket.", "a man wearing a grey jacket"),
    ("In the photo, there is a man wearing glasses.", "a man wearing glasses"),
    ("This is a photo of a man sitting on a bench in a park.", "a man sitting on a bench in a park"),
    ("A close-up photo of a man smiling, soft window light.", "close-up of a man smiling, soft window light"),
    ("A close-up of a man smiling, soft window light.", "close-up of a man smiling, soft window light"),
    ("This is a close-up photo of a man smiling.", "close-up of a man smiling"),
    ("The image is a close-up of a man looking to the left.", "close-up of a man looking to the left"),
    ("This image is a portrait of a man in a suit.", "portrait of a man in a suit"),
    ("A portrait photo of a man, looking at the camera.", "portrait of a man, looking at the camera"),
    ("The photograph depicts a man walking on a street at night.", "a man walking on a street at night"),
    ("Here we see a man standing at a podium.", "a man standing at a podium"),
    ("We can see a man sitting in an office.", "a man sitting in an office"),
    ("An image of a man wearing a white shirt.", "a man wearing a white shirt"),
    ("Photo of a man in a red sweater.", "a man in a red sweater"),
    ("This picture features a man in a blue tie against a grey wall.", "a man in a blue tie against a grey wall"),
    ("The image captures a man mid-speech with a raised hand.", "a man mid-speech with a raised hand"),
    ("The image displays a man in a suit.", "a man in a suit"),
    ("The scene shows a man outdoors in bright sunlight.", "a man outdoors in bright sunlight"),
    ("Pictured is a man in a black coat outdoors.", "a man in a black coat outdoors"),
    ("It appears to be a photograph of a man at a desk.", "a man at a desk"),
    ("Sure! Here is a description of the image: a man smiling under warm light.", "a man smiling under warm light"),
    ("The image shows Barack Obama smiling.", "the person smiling"),
    # not openers: kept as written (sentence case off, acronyms kept)
    ("The man is smiling and looking at the camera.", "the man is smiling and looking at the camera"),
    ("A black and white photo of a man in a hat.", "a black and white photo of a man in a hat"),
    ("In the image's background, a man walks.", "in the image's background, a man walks"),
    ("TV studio lights, a man at a desk.", "TV studio lights, a man at a desk"),
    # nothing but an opener: nothing usable
    ("The photo shows", ""),
    ("This is a photo of Barack Obama.", "the person"),  # two words: kept (the caption says nothing more)
]


@pytest.mark.parametrize(("raw", "expected"), OPENINGS, ids=[r[:32] for r, _ in OPENINGS])
def test_real_vlm_openings_are_dropped_and_framing_is_kept(raw: str, expected: str) -> None:
    assert clean_description(raw, ["barack_obama", "barack", "obama"], max_words=40) == expected


def _approved_edits(ws: Workspace, catalog: Catalog, faces: Path) -> None:
    character = ws.character("obama")
    ingest_paths(ws, catalog, "obama", [faces / "obama" / f"obama_{i}.jpg" for i in (1, 2)], None)
    filter_images(ws, catalog, character, image_ids=None, run_id=None)
    library = ws.prompt_library(character)
    sources = [r["image_id"] for r in catalog.source_images("obama")]
    jobs = [EditJob(s, library["angle-mirror"], 0) for s in sources]
    made = run_edit_batch(ws, catalog, "obama", AugmentEditor(), jobs, None)
    filter_images(ws, catalog, character, image_ids=made, run_id=None)
    gate.Gate(catalog, "obama", "enrich").decide([(i, "approved", None) for i in made], "cli", "tester", None)


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
        assert r["model_ref"].endswith("text_encoder#fp32") and params["decoding"] == "greedy" and "raw" in params
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
