"""Masks and the preservation verifier on real faces, and verified enrichment with automatic retries.

The verifier's behaviour is shown with the augment editor's real edits of ../shared/faces: a mirror changes the
image and fails "keep the background"; an unchanged image fails "change"; a photo of two people fails the face
count. Retries: an editor whose first attempt hands back its input is retried with the next seed, and both
attempts are images with lineage, scores and masks in the catalog.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flenwheel import gate
from flenwheel.catalog import Catalog
from flenwheel.core.config import VerifySettings
from flenwheel.editing import AugmentEditor, EditJob, EditResult, pending_jobs, retry_jobs, run_edit_batch
from flenwheel.editing.checks import EditChecker
from flenwheel.editing.jobs import RETRY_SEED_STRIDE
from flenwheel.editing.masks import MaskError, propose, read_mask
from flenwheel.editing.verify import count_faces, verifier_for, verify
from flenwheel.identity import load_backend
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace


def photo(faces: Path, name: str) -> Image.Image:
    with Image.open(faces / name) as im:
        return im.convert("RGB")


@pytest.fixture(scope="module")
def dlib(faces: Path):
    from flenwheel.core.config import IdentityBackendSettings

    return load_backend("dlib", IdentityBackendSettings())


def face_box(backend, image: Image.Image) -> tuple[float, float, float, float]:
    [face] = backend.detect(np.asarray(image))
    return tuple(face.box)


def test_masks_follow_the_prompt_category(faces: Path, dlib) -> None:
    image = photo(faces, "obama/obama_1.jpg")
    box = face_box(dlib, image)
    background = propose(image, "background", box)
    face = propose(image, "expression", box)
    whole = propose(image, "lighting", box)
    assert background.kind == "background" and 0.2 < background.fraction < 0.9 and background.confidence > 0
    x0, y0, x1, y1 = (int(v) for v in box)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    assert background.array[cy, cx] == 0 and face.array[cy, cx] == 255  # the face is kept / is the region
    assert face.kind == "face" and face.fraction < background.fraction
    assert whole.kind == "whole" and whole.fraction == 1.0 and whole.confidence == 1.0


def test_mirror_changes_the_image_and_breaks_the_background(faces: Path, dlib) -> None:
    image = photo(faces, "obama/obama_1.jpg")
    box = face_box(dlib, image)
    mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    region = propose(image, "background", box)
    as_angle = verify(image, mirrored, propose(image, "angles", box), verifier_for("angles"), 1)
    as_background = verify(image, mirrored, region, verifier_for("background"), 1)
    assert as_angle.passed and "change" not in as_background.failures  # a camera move may change every pixel
    assert "preserve" in as_background.failures  # a background edit must keep the person where they were

    unchanged = verify(image, image.copy(), region, verifier_for("background"), 1)
    assert unchanged.failures == ["change"] and unchanged.ssim_outside == 1.0  # the input handed back


def test_augment_background_edit_passes_and_two_people_fail_the_face_count(faces: Path, dlib) -> None:
    image = photo(faces, "obama/obama_1.jpg")
    box = face_box(dlib, image)
    library = Workspace(root=faces.parent / "unused", configs=Path(__file__).parents[1] / "configs").prompt_library()
    prompt = library["bg-blue"]
    edited = AugmentEditor().edit(image, EditJob("p", prompt, 0), box).image
    faces_in_edit = count_faces(dlib, np.asarray(edited))
    result = verify(image, edited, propose(image, "background", box), verifier_for("background"), faces_in_edit)
    assert result.passed, result
    two = photo(faces, "multi/two_people.jpg")
    assert count_faces(dlib, np.asarray(two)) == 2
    crowded = verify(image, two.resize(image.size), propose(image, "angles", box), verifier_for("angles"), 2)
    assert "faces" in crowded.failures


def test_unreadable_mask_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "m.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(MaskError, match=r"is not a readable mask image") as e:
        read_mask(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(MaskError, match="cannot read mask file"):
        read_mask(tmp_path / "missing.png")


def test_retry_plan_next_seeds_then_lower_strength(ws: Workspace) -> None:
    prompt = ws.prompt_library()["bg-blue"].model_copy(update={"strength": 0.8})
    plan = retry_jobs(EditJob("p", prompt, 1), VerifySettings(retries=3, seed_retries=1, strength_factor=0.5))
    assert [j.seed for j in plan] == [1 + RETRY_SEED_STRIDE, 1 + 2 * RETRY_SEED_STRIDE, 1 + 3 * RETRY_SEED_STRIDE]
    assert [j.prompt.strength for j in plan] == [0.8, 0.4, 0.2]
    assert retry_jobs(EditJob("p", prompt, 0), VerifySettings(retries=0)) == []


class FirstAttemptReturnsInput(AugmentEditor):
    """The augment editor, except that a job's first seed hands back the input unchanged (a forced failure)."""

    def edit(self, image: Image.Image, job: EditJob, face_box) -> EditResult:
        result = super().edit(image, job, face_box)
        if job.seed < RETRY_SEED_STRIDE:
            result.image = image.copy()
        return result


def test_a_failed_edit_is_retried_with_the_next_seed_and_recorded(
    ws: Workspace, catalog: Catalog, faces: Path, dlib
) -> None:
    [source] = ingest_paths(ws, catalog, "obama", [faces / "obama" / "obama_1.jpg"], None)
    from flenwheel.identity import filter_images

    filter_images(ws, catalog, ws.character("obama"), image_ids=None, run_id=None)  # the source's face box
    editor = FirstAttemptReturnsInput()
    prompt = ws.prompt_library()["bg-blue"]
    checker = EditChecker(ws.root, dlib, VerifySettings(retries=2))
    jobs = pending_jobs(catalog, "obama", editor, [prompt], [0])
    with catalog.run("test:verify", {}) as run_id:
        made = run_edit_batch(ws, catalog, "obama", editor, jobs, run_id, checker)
    assert len(made) == 2  # the failed first attempt and the passing retry: both are images
    attempts = catalog.rows("SELECT * FROM edit_attempts ORDER BY attempt")
    assert [(a["attempt"], a["seed"], a["passed"], a["chosen"]) for a in attempts] == [
        (0, 0, False, False),
        (1, RETRY_SEED_STRIDE, True, True),
    ]
    assert attempts[0]["failures"] == ["change"] and attempts[0]["job_key"] == editor.key(jobs[0])
    first, retry = attempts[0]["image_id"], attempts[1]["image_id"]
    lineage = {r["child_id"]: r for r in catalog.rows("SELECT * FROM derivations")}
    assert lineage[first]["parent_id"] == lineage[retry]["parent_id"] == source.image_id
    assert json.loads(lineage[retry]["params"])["attempt"] == 1 and lineage[retry]["seed"] == RETRY_SEED_STRIDE
    checks = {(r["image_id"], r["name"]): r for r in catalog.rows("SELECT * FROM verifications")}
    assert checks[(first, "change")]["passed"] is False and checks[(retry, "change")]["passed"] is True
    assert checks[(retry, "preserve_ssim")]["threshold"] == verifier_for("background").min_ssim
    [mask] = catalog.rows("SELECT * FROM masks")
    assert mask["image_id"] == source.image_id and mask["category"] == "background"
    assert mask["mask_id"] == checks[(retry, "change")]["mask_id"]
    [size] = catalog.rows("SELECT width, height FROM images WHERE image_id = ?", [source.image_id])
    assert read_mask(ws.root / mask["path"]).shape == (size["height"], size["width"])
    # Only the passing attempt is a review candidate; the job is done (a re-run makes nothing).
    assert [c["image_id"] for c in gate.Gate(catalog, "obama", "enrich").candidates()] == [retry]
    assert pending_jobs(catalog, "obama", editor, [prompt], [0]) == []
    per_prompt = catalog.rows("SELECT * FROM attempts_per_prompt")
    assert [(r["prompt_id"], r["jobs"], r["attempts"], r["jobs_passed"]) for r in per_prompt] == [("bg-blue", 1, 2, 1)]


# --------------------------------------------------------------------------- the VLM critic


@pytest.mark.tiny
def test_critic_reuses_the_editor_text_encoder_and_reads_yes_against_no(tiny_models, faces: Path, tmp_path) -> None:
    from flenwheel.core.config import Check
    from flenwheel.models.critic import Critic, CriticWeightsMissing, critic_source

    snapshot = tiny_models["qwen-image-edit"]
    source = critic_source(snapshot)
    assert source.reused and source.model == str(snapshot / "text_encoder") and "lm_head" in source.reason
    critic = Critic.from_pretrained(snapshot)
    image = photo(faces, "obama/obama_1.jpg")
    p_yes, p_no = critic.yes_no(image, "Is there exactly one person in the image?")
    assert 0 < p_yes < 1 and abs(p_yes + p_no - 1) < 1e-6
    assert critic.p_yes(image, "Is there exactly one person in the image?") == p_yes  # one pass, deterministic
    assert critic.p_yes(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "Is the person facing left?") != p_yes
    [low, high] = critic.answer(
        image,
        [
            Check(id="a", question="Is it a photo?", threshold=min(p_yes, 0.5) / 2),
            Check(id="b", question="Is it a photo?", threshold=0.99),
        ],
    )
    assert low.passed and not high.passed  # the threshold decides: calibratable, no text parsing

    encoder_only = tmp_path / "encoder"
    encoder_only.mkdir()
    (encoder_only / "config.json").write_text("{}")
    with pytest.raises(CriticWeightsMissing, match=r"has no lm_head\.weight") as e:
        Critic.from_pretrained(encoder_only)
    assert "\n" not in str(e.value) and "Qwen/Qwen2.5-VL-7B-Instruct" in str(e.value)


@pytest.mark.tiny
def test_verified_enrichment_records_masks_checks_retries_and_critic_answers(
    prefect_harness, ws: Workspace, faces: Path
) -> None:
    from flenwheel.flows.enrich import EnrichParams, enrich

    settings = ws.configs_dir / "flenwheel.yaml"
    settings.write_text(
        settings.read_text()
        .replace("enabled: true", "enabled: true\n  critic: editor")
        .replace(
            "strength_factor: 0.7",
            "strength_factor: 0.7\n  critic_checks: [{id: photo, question: 'Is this a photo?', threshold: 0.05}]",
        )
    )
    # bg-blue asks one more question, whose bar the tiny random critic cannot reach: it fails and is retried.
    (ws.configs_dir / "characters" / "obama.yaml").write_text(
        "name: obama\ntrigger: fw_obama\nidentity:\n  backend: dlib\nprompts:\n"
        "  - {id: bg-blue, category: background, prompt: 'Replace the background with a deep blue wall.',"
        " augment: {op: background, color: [30, 60, 140]},"
        " checks: [{id: blue-wall, question: 'Is the background a blue wall?', threshold: 0.99}]}\n"
    )
    catalog = Catalog(ws.catalog_path)
    ingest_paths(ws, catalog, "obama", [faces / "obama" / "obama_1.jpg", faces / "obama" / "obama_2.jpg"], None)
    params = EnrichParams(
        character="obama", editor="augment", prompts=["bg-blue", "light-golden-hour"], seeds=1, review="auto"
    )
    result = enrich(params, root=str(ws.root), configs=str(ws.configs_dir))
    attempts = catalog.rows("SELECT * FROM edit_attempts ORDER BY prompt_id, job_key, attempt")
    by_prompt = {p: [a for a in attempts if a["prompt_id"] == p] for p in ("bg-blue", "light-golden-hour")}
    assert [a["attempt"] for a in by_prompt["bg-blue"]] == [0, 1, 2] * 2  # 2 sources x (1 + 2 retries)
    assert all("critic:blue-wall" in a["failures"] for a in by_prompt["bg-blue"])
    assert [a["attempt"] for a in by_prompt["light-golden-hour"]] == [0, 0]  # passed at once: no retry
    assert all(a["passed"] and a["chosen"] for a in by_prompt["light-golden-hour"])
    assert result.images == len(attempts) == 8

    answers = catalog.rows("SELECT * FROM verifications WHERE name LIKE 'critic:%'")
    assert {r["name"] for r in answers} == {"critic:photo", "critic:blue-wall"}
    assert len([r for r in answers if r["name"] == "critic:photo"]) == 8  # every attempt is asked
    assert all(0 < r["score"] < 1 and json.loads(r["params"])["model"].endswith("text_encoder#fp32") for r in answers)
    assert {m["category"] for m in catalog.rows("SELECT * FROM masks")} == {"background", "lighting"}

    # One candidate per job; the failed bg-blue jobs' least bad attempt is shown to people with its failures,
    # and the auto policy rejects it for them.
    candidates = gate.Gate(catalog, "obama", "enrich").candidates()
    assert len(candidates) == 4
    failed = [c for c in candidates if c["prompt_id"] == "bg-blue"]
    assert all(c["verified"] is False and "critic:blue-wall" in c["failed_checks"] for c in failed)
    notes = {r["image_id"]: r for r in catalog.rows("SELECT * FROM review_state")}
    assert all(
        notes[c["image_id"]]["decision"] == "rejected"
        and "failed checks: critic:blue-wall" in notes[c["image_id"]]["note"]
        for c in failed
    )
    chosen = failed[0]["image_id"]
    lineage = catalog.attempts_of(chosen)
    assert [a["attempt"] for a in lineage] == [0, 1, 2] and sum(a["chosen"] for a in lineage) == 1
    assert [a["seed"] for a in lineage] == [0, 1000, 2000]

    # FiftyOne: one sample per source and per chosen attempt; the failed checks as a field and as tags to filter on
    from flenwheel.review.datasets import open_dataset, sync_candidates

    assert sync_candidates(ws, catalog, "obama") == 2 + 4
    sample = open_dataset(ws, "obama").match({"image_id": chosen}).first()
    assert sample.verified is False and "critic:blue-wall" in sample.failed_checks and sample.attempts == 3
    assert "check:critic:blue-wall" in sample.tags


def test_the_critic_is_the_resident_editors_text_encoder_when_it_is_loaded(
    ws: Workspace, faces: Path, tiny_models
) -> None:
    """With the qwen editor loaded, checks use its text encoder in memory (no second 7B copy beside it on a 24 GB
    card); the answers equal those of the critic loaded on its own from the same snapshot."""
    from flenwheel.models import runtime
    from flenwheel.models.critic import Critic

    image = Image.open(faces / "obama" / "obama_1.jpg")
    question = "Is there exactly one person in the image?"
    try:
        alone = runtime.vlm(ws, "cpu-tiny", "editor")
        expected = alone.p_yes(image, question)
        runtime.release_models()
        loaded = runtime.model_manager(ws, "cpu-tiny").get("qwen-image-edit")
        shared = runtime.vlm(ws, "cpu-tiny", "editor")
        assert shared.model is loaded.pipe.text_encoder and shared.source == alone.source
        assert runtime.vlm(ws, "cpu-tiny", "editor") is shared  # built once per resident pipeline, not per check
        assert shared.p_yes(image, question) == expected
        assert isinstance(alone, Critic) and alone.model is not shared.model
    finally:
        runtime.release_models()
