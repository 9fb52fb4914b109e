"""Quality flags on real photos (docs/coverage.md): the calibration's degraded copies of the shared faces get their
flag and the originals none; photos no calibration used (bench/calibrate_quality.py HELD_OUT) through the real
``flenwheel dataset audit --json``, whose objects match SQL over the catalog; near-duplicates; who a flag rejects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.calibrate_quality import HELD_OUT, degrade, ingested
from flenwheel import gate
from flenwheel.catalog import Catalog, ImageRecord
from flenwheel.core.config import IdentityBackendSettings, QualitySettings, ReviewSettings
from flenwheel.core.types import MIRRORED_YAW, QUALITY_FLAGS
from flenwheel.dataset.quality import judge, measure_quality
from flenwheel.identity.attributes import measure_image
from flenwheel.identity.backends import DlibBackend
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace
from tests.conftest import encode

EXPECTED = {
    "blur": "blur",
    "darken": "underexposed",
    "brighten": "overexposed",
    "noise": "noise",
    "jpeg10": "noise",
    "bars": "letterbox",
    "pillarbox": "letterbox",
    "quarter": "small_face",
}


@pytest.fixture(scope="module")
def dlib() -> DlibBackend:
    return DlibBackend(IdentityBackendSettings())


def raised(backend: DlibBackend, rgb: np.ndarray) -> set[str]:
    _, face, _ = measure_image(backend, rgb)
    settings = QualitySettings()
    return {f.name for f in judge(measure_quality(rgb, face.box if face else None, settings.train_side), settings, None)
            if f.raised}  # fmt: skip


@pytest.mark.parametrize("name", ["obama/obama_1.jpg", "rose_leslie/rose_2.jpg"])
def test_each_degraded_copy_gets_its_flag_and_the_original_none(faces: Path, dlib: DlibBackend, name: str) -> None:
    rgb = ingested((faces / name).read_bytes())
    assert raised(dlib, rgb) == set()
    _, face, _ = measure_image(dlib, rgb)
    for kind, flag in EXPECTED.items():
        assert raised(dlib, degrade(rgb, kind, face.box[3] - face.box[1])) == {flag}, kind


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory, faces: Path):
    """The held-out photos, three degraded copies and a mirror of each, ingested for one character and audited by
    the real CLI; returns the workspace, the catalog, the files by image id and the JSON objects printed."""
    from typer.testing import CliRunner

    from flenwheel.cli import app
    from tests.conftest import PROJECT

    base = tmp_path_factory.mktemp("held-out")
    configs = base / "configs"
    import shutil

    shutil.copytree(PROJECT / "configs", configs)
    (configs / "characters" / "tester.yaml").write_text(
        "name: tester\ntrigger: fw_tester\nidentity:\n  backend: dlib\n"
    )
    ws = Workspace(root=base / "data", configs=configs)
    catalog = Catalog(ws.catalog_path)
    backend = DlibBackend(IdentityBackendSettings())
    files = []
    for name in HELD_OUT:
        rgb = ingested((faces / name).read_bytes())
        _, face, _ = measure_image(backend, rgb)
        stem = Path(name).stem
        variants = {"original": rgb, "mirror": np.ascontiguousarray(rgb[:, ::-1])}
        variants |= {kind: degrade(rgb, kind, face.box[3] - face.box[1]) for kind in ("blur", "darken", "bars")}
        for kind, pixels in variants.items():
            path = base / "in" / f"{stem}-{kind}.png"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(encode(Image.fromarray(pixels)))
            files.append(path)
    # the originals first: of two near-duplicates the later one is flagged
    originals = [f for f in files if f.stem.endswith("-original")]
    outcomes = ingest_paths(ws, catalog, "tester", originals, None)
    outcomes += ingest_paths(ws, catalog, "tester", [f for f in files if f not in originals], None)
    by_id = {o.image_id: o.path.stem for o in outcomes}
    result = CliRunner().invoke(
        app, ["--root", str(ws.root), "--configs", str(configs), "dataset", "audit", "tester", "--json"]
    )
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    return ws, catalog, by_id, objects


def test_held_out_photos_acceptance_blurred_darkened_letterboxed_flagged_originals_not(audited) -> None:
    """On photos no calibration and no other test used: each degraded copy carries its flag, each original none; a
    photo and its mirror get mirrored yaw bins."""
    _, _, by_id, objects = audited
    images = {by_id[o["image_id"]]: o for o in objects if "summary" not in o}
    assert len(images) == 5 * len(HELD_OUT)
    for name in HELD_OUT:
        stem = Path(name).stem
        assert images[f"{stem}-original"]["flags"] == [], stem
        for kind, flag in (("blur", "blur"), ("darken", "underexposed"), ("bars", "letterbox")):
            # a copy may also be found a near-duplicate of its original (ORB finds no features left in a blur)
            assert set(images[f"{stem}-{kind}"]["flags"]) - {"near_duplicate"} == {flag}, (stem, kind)
        original, mirror = images[f"{stem}-original"], images[f"{stem}-mirror"]
        assert original["yaw_bin"] and mirror["yaw_bin"] == MIRRORED_YAW[original["yaw_bin"]], stem
        assert mirror["yaw"] == pytest.approx(-original["yaw"], abs=0.05)
    turned = {images[f"{Path(n).stem}-original"]["yaw_bin"] for n in HELD_OUT}
    assert turned - {"frontal"}, "one held-out photo is turned, so mirroring changes its bin"


def test_audit_json_matches_sql_over_the_catalog(audited) -> None:
    _, catalog, _, objects = audited
    *images, summary = objects
    assert summary["summary"] is True and summary["images"] == len(images)
    flags = {
        r["image_id"]: r["flags"]
        for r in catalog.rows(
            "SELECT image_id, list(substr(name, 6) ORDER BY name) FILTER (WHERE NOT passed) AS flags"
            " FROM verifications WHERE name LIKE 'flag:%' GROUP BY image_id"
        )
    }
    bins = {r["image_id"]: r for r in catalog.rows("SELECT * FROM image_attributes")}
    for o in images:
        assert o["flags"] == (flags[o["image_id"]] or []) and o["yaw_bin"] == bins[o["image_id"]]["yaw_bin"]
    per_bin = catalog.rows(
        "SELECT coalesce(yaw_bin, 'unknown') AS bin, count(*) AS n FROM images JOIN image_attributes USING (image_id)"
        " WHERE character = 'tester' GROUP BY ALL"
    )
    assert {r["bin"]: r["n"] for r in per_bin} == {k: v for k, v in summary["coverage"]["yaw"].items() if v}
    flagged = catalog.rows(
        "SELECT substr(name, 6) AS flag, count(*) AS n FROM verifications WHERE name LIKE 'flag:%' AND NOT passed"
        " GROUP BY ALL"
    )
    assert summary["flagged"] == {r["flag"]: r["n"] for r in flagged}
    assert {g["axis"] for g in summary["gaps"]} and summary["gaps"][0]["count"] < summary["gaps"][0]["target"]
    every = catalog.rows(
        "SELECT count(DISTINCT name) AS n FROM verifications WHERE name LIKE 'flag:%' GROUP BY image_id"
    )
    assert {r["n"] for r in every} == {len(QUALITY_FLAGS)}  # every flag judged on every image, raised or not


def test_near_duplicates_survive_reencoding_and_crops_but_not_other_photos(
    ws: Workspace, catalog: Catalog, faces: Path, write_file
) -> None:
    from flenwheel.dataset.coverage import assess_images

    original = Image.open(faces / "obama" / "obama_2.jpg").convert("RGB")
    w, h = original.size
    cropped = original.crop((round(0.05 * w), round(0.05 * h), w - round(0.05 * w), h - round(0.05 * h)))
    files = [
        faces / "obama" / "obama_2.jpg",
        write_file("recrop.jpg", encode(cropped, "JPEG", quality=80)),
        faces / "kit_harington" / "kit_2.jpg",
    ]
    ids = [o.image_id for f in files for o in ingest_paths(ws, catalog, "obama", [f], None)]  # in this order
    assess_images(ws, catalog, ws.character("obama"))
    rows = {
        r["image_id"]: r
        for r in catalog.rows(
            "SELECT image_id, passed, score, params FROM verifications WHERE name = 'flag:near_duplicate'"
        )
    }
    assert rows[ids[0]]["passed"] and rows[ids[2]]["passed"]  # the first of a pair, and an unrelated photo
    assert not rows[ids[1]]["passed"] and json.loads(rows[ids[1]]["params"])["of"] == ids[0]
    assert rows[ids[1]]["score"] >= ws.settings.quality.near_duplicate > rows[ids[2]]["score"]


def test_a_flag_rejects_only_when_review_auto_reject_lists_it(catalog: Catalog) -> None:
    """Flags are shown (image_checks.flags, the queue's why) but count as failed checks only when listed."""
    source, edit = f"{1:064x}", f"{2:064x}"
    catalog.add_images([ImageRecord(source, "tester", "source", "objects/a.png", 64, 64)], None)
    catalog.add_images([ImageRecord(edit, "tester", "augment", "objects/b.png", 64, 64)], None)
    catalog.add_identity_scores(
        [{"image_id": edit, "backend": "dlib", "reference_set_id": "r", "verdict": "pass", "matched": True,
          "similarity": 0.9, "threshold": 0.4}], None
    )  # fmt: skip
    rows = [
        {"image_id": edit, "name": "change", "score": 0.2, "threshold": 0.01, "passed": True, "mask_id": None,
         "params": {}, "run_id": None},
        {"image_id": edit, "name": "flag:blur", "score": 0.8, "threshold": 0.65, "passed": False, "mask_id": None,
         "params": {}, "run_id": None},
    ]  # fmt: skip
    catalog.add_checks({"verifications": rows})
    [c] = gate.Gate(catalog, "tester", "enrich").candidates()
    assert c["failed_checks"] == [] and c["flags"] == ["blur"] and c["verified"] is True
    shown = ReviewSettings()
    rejecting = ReviewSettings(auto_reject=["blur"])
    assert gate.policy_decision(c, shown.auto_margin, shown.auto_reject)[0] == "approved"
    decision, why = gate.policy_decision(c, rejecting.auto_margin, rejecting.auto_reject)
    assert decision == "rejected" and "blur" in why
    assert "flags: blur" in gate.triage(c, shown).why and gate.triage(c, shown).clear == "approved"
    assert gate.triage(c, rejecting).clear == "rejected"
    assert gate.Gate(catalog, "tester", "enrich", rejecting).auto_review(None) == (0, 1)


def test_review_auto_reject_names_a_bad_flag_in_one_line(cli, ws: Workspace) -> None:
    settings = ws.configs_dir / "flenwheel.yaml"
    settings.write_text(settings.read_text().replace("auto_reject: []", "auto_reject: [blurry]"))
    result = cli("dataset", "audit", "tester")
    assert result.exit_code == 2 and "review.auto_reject" in result.output and "blurry" in result.output
