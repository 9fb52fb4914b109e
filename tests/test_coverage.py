"""Coverage on real photos (docs/coverage.md): bins mirror with the photo, gaps rank thinnest first, aimed enrichment
goes after a set's missing left views, an angle edit that stays frontal fails the landed check and is retried, and
the report shows coverage per version, the aimed gaps and the landed rate per prompt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flenwheel import gate
from flenwheel.catalog import Catalog
from flenwheel.core.config import ConfigError, CoverageSettings, IdentityBackendSettings, PromptEntry
from flenwheel.core.coverage import caption_names, rank_gaps
from flenwheel.core.types import MIRRORED_YAW
from flenwheel.dataset import versions
from flenwheel.dataset.coverage import assess_images, set_coverage
from flenwheel.editing import AugmentEditor, EditJob, run_edit_batch
from flenwheel.editing.checks import EditChecker
from flenwheel.editing.planning import plan_enrichment
from flenwheel.identity import filter_images, load_backend
from flenwheel.identity.attributes import measure_image
from flenwheel.report import iteration_report
from flenwheel.report.checks import per_prompt
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.objects import load_rgb
from flenwheel.store.workspace import Workspace


@pytest.mark.parametrize("name", ["kit_harington/kit_2.jpg", "obama/obama_2.jpg", "multi/two_people.jpg"])
def test_a_photo_and_its_mirror_land_in_mirrored_yaw_bins(faces: Path, name: str) -> None:
    backend = load_backend("dlib", IdentityBackendSettings())
    rgb = load_rgb(faces / name)
    photo, _, _ = measure_image(backend, rgb)
    mirror, _, _ = measure_image(backend, np.ascontiguousarray(rgb[:, ::-1]))
    assert photo.yaw_bin is not None and mirror.yaw_bin == MIRRORED_YAW[photo.yaw_bin]
    assert mirror.yaw == pytest.approx(-photo.yaw, abs=1e-6)  # the measure itself is mirror-symmetric
    # what a mirror keeps stays: pitch, framing, expression
    assert (mirror.pitch_bin, mirror.framing, mirror.expression) == (photo.pitch_bin, photo.framing, photo.expression)
    if name.startswith("kit"):  # Kit Harington looks to his own right in this photo
        assert photo.yaw_bin == "right_three_quarter" and mirror.yaw_bin == "left_three_quarter"


def test_gaps_rank_thinnest_first_and_captions_name_outfits_and_backgrounds() -> None:
    settings = CoverageSettings(targets={"yaw": {"frontal": 0.5, "left_profile": 0.3}, "light": {"low_key": 0.3}})
    counts = {"yaw": {"frontal": 2, "left_profile": 0}, "light": {"low_key": 1}}
    gaps = rank_gaps(counts, {}, 10, settings)
    # 0 of 3 before 1 of 3 before 2 of 5, whatever the axis order
    assert [(g.key, g.count, g.target) for g in gaps] == [
        ("yaw:left_profile", 0, 3),
        ("light:low_key", 1, 3),
        ("yaw:frontal", 2, 5),
    ]
    assert caption_names("photo of sks, a man wearing a dark suit and tie, in front of a blue background") == {
        "outfit": "dark suit",
        "background": "blue",
    }
    assert caption_names("photo of sks, outdoors in a park") == {"outfit": None, "background": "park"}
    with pytest.raises(ValueError, match="yaw: unknown bin 'left'"):
        PromptEntry(id="x", category="angles", prompt="turn", adds={"yaw": "left"})
    with pytest.raises(ValueError, match="unknown axis 'mood'"):
        PromptEntry(id="x", category="angles", prompt="turn", adds={"mood": "happy"})


def test_repo_library_adds_are_bins_and_a_bad_one_names_the_key(ws: Workspace) -> None:
    library = ws.prompt_library()
    assert library["angle-left-45"].aims == {"yaw": "left_three_quarter"}
    assert library["angle-mirror"].aims == {"yaw": "left_profile"} and library["outfit-red"].aims == {}
    path = ws.configs_dir / "prompts" / "enrich.yaml"
    path.write_text(path.read_text().replace("adds: {yaw: left_profile}", "adds: {yaw: sideways}"))
    with pytest.raises(ConfigError, match=r"adds.*sideways"):
        Workspace(root=ws.root, configs=ws.configs_dir).prompt_library()


@pytest.fixture
def sources(ws: Workspace, catalog: Catalog, faces: Path) -> dict[str, str]:
    """Two sources with no left-facing view (Kit looks to his right, Obama straight on), identity-scored and
    assessed as the enrich flow does before it plans."""
    files = {"kit": faces / "kit_harington" / "kit_2.jpg", "obama": faces / "obama" / "obama_1.jpg"}
    ids = {k: o.image_id for k, f in files.items() for o in ingest_paths(ws, catalog, "obama", [f], None)}
    filter_images(ws, catalog, ws.character("obama"))
    assess_images(ws, catalog, ws.character("obama"))
    return ids


def test_fill_gaps_aims_at_the_missing_left_views_first(ws: Workspace, catalog: Catalog, sources) -> None:
    character = ws.character("obama")
    coverage, _ = set_coverage(ws, catalog, "obama")
    assert coverage.counts["yaw"]["left_three_quarter"] == coverage.counts["yaw"]["left_profile"] == 0
    assert [g.key for g in coverage.gaps[:2]] == ["yaw:left_profile", "yaw:left_three_quarter"]
    everything = plan_enrichment(ws, catalog, character, "augment", None, None, 1)
    [(_, jobs)] = plan_enrichment(
        ws, catalog, character, "augment", None, None, 1, fill_gaps=True, budget=3, run_id="r"
    )
    assert len(jobs) == 3 < len(everything[0][1])
    assert [j.prompt.aims for j in jobs[:2]] in (
        [{"yaw": "left_profile"}, {"yaw": "left_three_quarter"}],
        [{"yaw": "left_three_quarter"}, {"yaw": "left_profile"}],
    )
    [plan] = catalog.plans("obama")
    assert plan["jobs"] == 3 and plan["budget"] == 3 and plan["coverage"]["coverage"]["yaw"]["frontal"] == 1
    assert [(a["axis"], a["bin"]) for a in plan["aims"][:2]] == [("yaw", "left_profile"), ("yaw", "left_three_quarter")]
    # the two aims went to different photos (spread over the sources), and never to one already in the bin
    assert len({a["source_id"] for a in plan["aims"][:2]}) == 2
    # a budget-less plan fills every gap some prompt can fill, and no more than the cross product
    [(_, all_aimed)] = plan_enrichment(ws, catalog, character, "augment", None, None, 1, fill_gaps=True)
    assert 3 < len(all_aimed) <= len(everything[0][1]) and all(j.prompt.adds for j in all_aimed)


def test_an_interrupted_aimed_enrichment_ends_where_an_uninterrupted_one_would_and_a_rerun_plans_nothing(
    ws: Workspace, catalog: Catalog, sources
) -> None:
    """The plan counts the aimed edits already made by what they aimed at, whatever became of them: planned again
    after a kill it is the rest of the first plan, and after the review nothing it tried before."""
    character = ws.character("obama")
    checker = EditChecker(ws.root, load_backend("dlib", ws.settings.identity), ws.settings.verify)

    def plan() -> list[EditJob]:
        [(_, jobs)] = plan_enrichment(ws, catalog, character, "augment", None, None, 1, fill_gaps=True)
        return jobs

    def keys(jobs: list[EditJob]) -> list[tuple[str, str]]:
        return [(j.parent_id, j.prompt.id) for j in jobs]

    first = plan()
    assert len(first) >= 3
    run_edit_batch(ws, catalog, "obama", AugmentEditor(), first[:1], None, checker)  # killed after one job
    again = plan()
    assert keys(again) == keys(first[1:])
    run_edit_batch(ws, catalog, "obama", AugmentEditor(), again, None, checker)
    gate.Gate(catalog, "obama", "enrich").auto_review(None)  # the augment stand-ins miss most aims: rejected
    assert plan() == []


def test_an_angle_edit_that_stays_frontal_fails_landed_is_retried_and_counts_against_its_prompt(
    ws: Workspace, catalog: Catalog, sources
) -> None:
    library = ws.prompt_library()
    obama = sources["obama"]
    checker = EditChecker(ws.root, load_backend("dlib", ws.settings.identity), ws.settings.verify)
    # the augment stand-in for "rotate the camera 45 degrees to the left" reframes: the head stays frontal
    jobs = [EditJob(obama, library["angle-left-45"], 0), EditJob(obama, library["angle-close-up"], 0)]
    made = run_edit_batch(ws, catalog, "obama", AugmentEditor(), jobs, None, checker)
    attempts = catalog.rows("SELECT * FROM edit_attempts ORDER BY prompt_id, attempt")
    left = [a for a in attempts if a["prompt_id"] == "angle-left-45"]
    assert [a["attempt"] for a in left] == [0, 1, 2] and all("landed" in a["failures"] for a in left)
    landed = catalog.rows("SELECT image_id, score, passed, params FROM verifications WHERE name = 'landed'")
    by_image = {r["image_id"]: json.loads(r["params"]) for r in landed}
    for a in left:
        assert by_image[a["image_id"]]["aimed"] == {"yaw": "left_three_quarter"}
        assert by_image[a["image_id"]]["measured"] == {"yaw": "frontal"}
    close = [a for a in attempts if a["prompt_id"] == "angle-close-up"]
    assert [(a["attempt"], a["passed"]) for a in close] == [(0, True)]  # the crop lands on close-up at once
    assert by_image[close[0]["image_id"]]["measured"] == {"framing": "close_up"}
    # shown to people as a failed check; the landed rate is a number per prompt
    filter_images(ws, catalog, ws.character("obama"), image_ids=made)
    assess_images(ws, catalog, ws.character("obama"), image_ids=made)
    [cand] = [c for c in gate.Gate(catalog, "obama", "enrich").candidates() if c["prompt_id"] == "angle-left-45"]
    assert "landed" in cand["failed_checks"]
    table = {r["prompt"]: r for r in per_prompt(catalog.edit_outcomes("obama"))}
    assert table["angle-left-45"]["landed pass"] == 0.0 and table["angle-close-up"]["landed pass"] == 1.0
    assert "flagged share" in table["angle-close-up"]
    # an edit is no near-duplicate of its own source, however alike (the crop of Obama's face is a crop of him)
    dup = catalog.rows(
        "SELECT passed FROM verifications WHERE name = 'flag:near_duplicate' AND image_id = ?", [close[0]["image_id"]]
    )
    assert dup == [{"passed": True}]


def test_report_shows_coverage_per_version_and_the_aimed_gaps(ws: Workspace, catalog: Catalog, sources) -> None:
    character = ws.character("obama")
    [(_, jobs)] = plan_enrichment(
        ws, catalog, character, "augment", None, None, 1, fill_gaps=True, budget=2, run_id="r"
    )
    checker = EditChecker(ws.root, load_backend("dlib", ws.settings.identity), ws.settings.verify)
    made = run_edit_batch(ws, catalog, "obama", AugmentEditor(), jobs, None, checker)
    filter_images(ws, catalog, character, image_ids=made)
    gate.Gate(catalog, "obama", "enrich").auto_review(None)
    v1 = versions.freeze(ws, catalog, character, None)
    catalog.update_iteration("obama", 1, None, dataset_version=v1.version_id)
    report = iteration_report(ws.root, catalog, "obama", 1, ws.settings.review, ws.settings.coverage)
    page = report.path.read_text()
    assert "Coverage per dataset version" in page and (report.path.parent / "coverage.png").is_file()
    assert "Coverage gaps of v1" in page and "yaw:left_profile" in page
    assert "Aimed enrichment" in page and "angle-mirror" in page
