"""Flywheel 1 end to end on cpu-tiny: generation, iterations, report, deployments, nightly enrichment, lock."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from flenwheel import gate
from flenwheel.catalog import Catalog, DerivationRecord
from flenwheel.dataset import iteration as flywheel_policy
from flenwheel.dataset import versions
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.outputs import store_outputs
from flenwheel.store.workspace import Workspace
from tests.conftest import ARTIFACTS, PROJECT, snapshot

pytestmark = pytest.mark.tiny

OBAMA = ("obama_1.jpg", "obama_2.jpg")


def flywheel_params(**overrides: object):
    from flenwheel.flows.flywheel import FlywheelParams

    values = dict(
        character="obama",
        iterations=2,
        profile="cpu-tiny",
        editor="augment",
        review="auto",
        enrich_prompts=["angle-mirror", "light-golden-hour", "bg-blue"],
        enrich_seeds=1,
        synthetic_prompts=["pose-portrait", "scene-park"],
        synthetic_seeds=1,
        min_new_synthetics=0,
    )
    return FlywheelParams(**{**values, **overrides})


@pytest.fixture(scope="module")
def two_iterations(prefect_harness, tmp_path_factory: pytest.TempPathFactory, tiny_models, faces: Path):
    """One two-iteration flywheel on cpu-tiny with auto review, shared by the tests that inspect its results."""
    from flenwheel.flows.flywheel import flywheel

    base = tmp_path_factory.mktemp("flywheel")
    configs = base / "configs"
    shutil.copytree(PROJECT / "configs", configs)
    (configs / "characters" / "obama.yaml").write_text("name: obama\ntrigger: fw_obama\nidentity:\n  backend: dlib\n")
    ws = Workspace(root=base / "data", configs=configs)
    (ws.root / "models").mkdir(parents=True)
    (ws.root / "models" / "tiny").symlink_to(next(iter(tiny_models.values())).parent)
    catalog = Catalog(ws.catalog_path)
    ingest_paths(ws, catalog, "obama", [faces / "obama" / f for f in OBAMA], None)
    result = flywheel(flywheel_params(), root=str(ws.root), configs=str(ws.configs_dir))
    return ws, catalog, result


def test_two_iterations_make_two_versions_two_loras_metrics_and_reports(two_iterations) -> None:
    ws, catalog, result = two_iterations
    assert result.status == "completed", result
    its = catalog.iterations("obama")
    assert [(r["number"], r["status"]) for r in its] == [(1, "completed"), (2, "completed")]
    assert [r["dataset_version"] for r in its] == ["obama@v1", "obama@v2"]
    loras = {r["lora_id"]: r for r in catalog.rows("SELECT * FROM loras")}
    assert len(loras) == 2 and {r["dataset_version"] for r in loras.values()} == {"obama@v1", "obama@v2"}
    assert [r["lora_id"] for r in its] == [
        next(k for k, v in loras.items() if v["dataset_version"] == f"obama@v{n}") for n in (1, 2)
    ]
    # v2 is v1 plus what the v1 LoRA's approved synthetics brought (none: tiny models paint noise), and says so
    manifest = json.loads(
        (
            ws.root
            / catalog.rows("SELECT manifest_path FROM dataset_versions WHERE version_id = 'obama@v2'")[0][
                "manifest_path"
            ]
        ).read_text()
    )
    assert manifest["parent_version"] == "obama@v1" and manifest["synthetic_from"] == its[0]["lora_id"]
    assert manifest["synthetic_admitted"] == 0
    assert versions.diff(catalog, "obama@v1", "obama@v2") == {"removed": [], "added": [], "recaptioned": []}

    for it in its:  # synthetic images of each LoRA: every parameter recorded, identity-scored, reviewed
        rows = catalog.rows(
            "SELECT d.*, s.verdict, r.decision, r.source FROM derivations d"
            " JOIN identity_scores s ON s.image_id = d.child_id JOIN review_state r ON r.image_id = d.child_id"
            " WHERE d.op = 'generate' AND json_extract_string(d.params, '$.lora_id') = ?",
            [it["lora_id"]],
        )
        assert len(rows) == 2
        for r in rows:
            params = json.loads(r["params"])
            assert r["parent_id"] is None and r["seed"] == 0 and r["steps"] == 2 and r["guidance"] == 3.5
            assert r["prompt"].startswith(("photo of fw_obama", "full body photo of fw_obama"))
            assert params["pipeline"] == "FluxPipeline" and params["category"] in ("pose", "scene")
            assert [x["ref"].split("@")[0] for x in json.loads(r["loras"])] == [f"catalog:{it['lora_id']}"]
            assert r["verdict"] == "no_face" and r["decision"] == "rejected" and r["source"] == "auto"
        metrics = {
            m["name"]: m["value"]
            for m in catalog.rows(
                "SELECT name, value FROM metrics WHERE scope = 'iteration' AND scope_id = ?", [f"obama:{it['number']}"]
            )
        }
        assert metrics["n"] == 2 and metrics["pass_rate"] == 0.0 and metrics["target_met"] == 0.0
        report = ws.root / it["report_path"]
        assert report.is_file() and "flywheel iteration" in report.read_text()
        assert {p.name for p in report.parent.glob("*.png")} >= {"pass_rates.png", "similarity.png", "training.png"}
    page = (ws.root / its[1]["report_path"]).read_text()
    assert "synthetic v1 0% → synthetic v2 0%" in page and "not met" in page
    # enrichment per prompt and who decided the gates are in the report too
    assert "Enrichment per prompt" in page and "Review: policy and people" in page
    # enrichment aimed at the set's gaps (the flywheel's default): the missing left profile and warm light; no
    # caption names a background before the first version is captioned, so no background gap is aimed at
    assert all(p in page for p in ("angle-mirror", "light-golden-hour")) and "bg-blue" not in page
    assert "Coverage per dataset version" in page and "Aimed enrichment" in page and "landed pass" in page
    [plan] = catalog.plans("obama")
    assert {(a["axis"], a["bin"]) for a in plan["aims"]} == {("yaw", "left_profile"), ("warmth", "warm")}
    # the FLUX.1 twin's LoRA base and dlib's 68-point landmarks are not for commercial use: the report says so
    assert "non-commercial models contributed" in page and "FLUX.1 [dev] Non-Commercial License" in page
    # every member of each version was captioned by the (tiny) VLM before it was frozen
    for version in ("obama@v1", "obama@v2"):
        members = versions.version_members(catalog, version)
        current = catalog.latest_captions([m["image_id"] for m in members])
        assert set(current) == {m["image_id"] for m in members}
        assert all(m["caption"] == current[m["image_id"]]["caption"] for m in members)
        assert all(current[m["image_id"]]["source"] in ("vlm", "template") for m in members)


def test_flywheel_records_prefect_artifacts(two_iterations) -> None:
    from prefect.client.orchestration import get_client

    # The REST filter directly: this Prefect client sends empty sub-filters that its own server reads as "none".
    with get_client(sync_client=True) as client:
        response = client._client.post(
            "/artifacts/filter",
            json={"artifacts": {"key": {"like_": "obama-iteration-"}}, "limit": 50, "offset": 0, "sort": "KEY_ASC"},
        )
    arts = {(a["key"], a["type"]): a for a in response.json()}
    assert {("obama-iteration-1", "markdown"), ("obama-iteration-2-identity", "table")} <= set(arts)
    table = arts[("obama-iteration-2-identity", "table")]["data"]
    rows = json.loads(table) if isinstance(table, str) else table
    assert [r["group"] for r in rows] == ["enrichment", "synthetic v1", "synthetic v2"]
    assert "target 70%: **not met**" in arts[("obama-iteration-2", "markdown")]["data"]


def test_rerunning_the_flywheel_adds_nothing(two_iterations) -> None:
    from flenwheel.flows.flywheel import flywheel

    ws, _catalog, _ = two_iterations
    before = snapshot(ws.catalog_path)
    again = flywheel(flywheel_params(), root=str(ws.root), configs=str(ws.configs_dir))
    assert again.status == "completed"
    assert [it.status for it in again.iterations] == ["already completed"] * 2
    assert again.enrichment.jobs == 0
    assert snapshot(ws.catalog_path) == before


def test_report_renders_in_headless_chromium(two_iterations) -> None:
    """Debian's chromium opens the page: every chart and grid decodes, and the screenshot is not blank."""
    ws, catalog, _ = two_iterations
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed: `apt-get install chromium` (.ci/run installs it)"
    page = ws.root / catalog.iterations("obama")[1]["report_path"]
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    total = int(dom.split('data-images-total="')[1].split('"')[0])
    loaded = int(dom.split('data-images-loaded="')[1].split('"')[0])
    assert total >= 9 and loaded == total
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "flywheel-report.png"
    subprocess.run(
        [*flags, "--window-size=1200,3800", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (3800, 1200) and pixels.std() > 20  # charts and photos, not an empty page


def test_invalid_flywheel_parameters_are_rejected_naming_the_field(prefect_harness) -> None:
    from prefect.exceptions import ParameterTypeError

    from flenwheel.flows.flywheel import flywheel

    with pytest.raises(ParameterTypeError, match="iterations"):
        flywheel(params={"character": "obama", "iterations": 0})
    with pytest.raises(ParameterTypeError, match="max_synthetic_share"):
        flywheel(params={"character": "obama", "max_synthetic_share": 3})
    with pytest.raises(ParameterTypeError, match="colour"):
        flywheel(params={"character": "obama", "colour": "red"})


def test_deployments_serve_flywheel_and_a_nightly_cron_with_cancel_new(prefect_harness, ws: Workspace) -> None:
    import asyncio

    from prefect.client.orchestration import get_client

    from flenwheel.flows.deployments import deployments, has_server

    assert has_server()  # the harness points Prefect at its server, as `prefect config set PREFECT_API_URL` does
    fly, editor, nightly = deployments(ws)
    assert (fly.name, editor.name, nightly.name) == ("flywheel", "editor-flywheel", "nightly-enrich")
    schedule = nightly.schedules[0].schedule
    assert schedule.cron == "0 3 * * *" and schedule.timezone == "UTC"
    assert nightly.concurrency_options.collision_strategy.value == "CANCEL_NEW" and nightly.concurrency_limit == 1
    assert nightly.parameters["root"] == str(ws.root)
    schema = fly._parameter_openapi_schema.model_dump()
    assert "iterations" in json.dumps(schema) and "max_synthetic_share" in json.dumps(schema)

    async def apply_and_read() -> object:
        deployment_id = await fly.apply()
        async with get_client() as client:
            return await client.read_deployment(deployment_id)

    stored = asyncio.run(apply_and_read())
    assert stored.name == "flywheel" and "FlywheelParams" in json.dumps(stored.parameter_openapi_schema)

    spec = (PROJECT / "prefect.yaml").read_text()
    import yaml

    declared = {d["name"]: d for d in yaml.safe_load(spec)["deployments"]}
    assert declared["nightly-enrich"]["schedules"][0]["cron"] == "0 3 * * *"
    assert declared["nightly-enrich"]["concurrency_limit"]["collision_strategy"] == "CANCEL_NEW"
    for d in declared.values():  # every entrypoint names a real flow
        module, name = d["entrypoint"].split(":")
        source = (PROJECT / module).read_text()
        assert f"def {name}(" in source and "@flow" in source


def test_nightly_enrichment_picks_up_new_inbox_photos_once(prefect_harness, ws: Workspace, faces: Path) -> None:
    from flenwheel.flows.enrich import NightlyParams, nightly_enrich

    inbox = ws.inbox_dir("obama")
    inbox.mkdir(parents=True)
    shutil.copy(faces / "obama" / OBAMA[0], inbox)
    params = NightlyParams(
        characters=["obama", "biden"], editor="augment", prompts=["angle-mirror", "bg-blue"], seeds=1, review="auto"
    )
    first = nightly_enrich(params, root=str(ws.root), configs=str(ws.configs_dir))
    by_name = {r.character: r for r in first}
    # two jobs; the mirror standing in for "rotate 90 degrees left" never lands on a profile: retried twice
    assert by_name["obama"].new_photos == 1 and by_name["obama"].enrichment.jobs == 2
    assert by_name["obama"].enrichment.images == 1 + 3
    assert by_name["obama"].pending_review == 0  # auto review decided them
    assert "no source photos" in by_name["biden"].skipped
    shutil.copy(faces / "obama" / OBAMA[1], inbox)  # a new photo arrives during the day
    second = {r.character: r for r in nightly_enrich(params, root=str(ws.root), configs=str(ws.configs_dir))}
    assert second["obama"].new_photos == 1 and second["obama"].enrichment.jobs == 2
    third = {r.character: r for r in nightly_enrich(params, root=str(ws.root), configs=str(ws.configs_dir))}
    assert third["obama"].new_photos == 0 and third["obama"].enrichment.images == 0


def test_two_runs_of_one_character_never_work_at_once(ws: Workspace) -> None:
    from flenwheel.store.locks import CharacterBusy, character_lock

    with character_lock(ws, "obama", "flow run A"):
        with pytest.raises(CharacterBusy, match="flow run A"):
            with character_lock(ws, "obama", "flow run B"):
                pass
        with character_lock(ws, "biden", "flow run B"):  # other characters are free
            pass
    with character_lock(ws, "obama", "flow run B"):  # released when A finished
        pass


def test_next_version_drops_near_duplicates_and_caps_the_synthetic_share(
    ws: Workspace, catalog: Catalog, faces: Path
) -> None:
    """Approved synthetics join the next version best-first, without near-duplicates, up to the share cap."""
    ingest_paths(ws, catalog, "obama", [faces / "obama" / f for f in OBAMA], None)
    photos = [Image.open(faces / "obama" / name).convert("RGB") for name in ("obama_3.jpg", *OBAMA)]
    fakes = [
        photos[0],
        ImageEnhance.Brightness(photos[0]).enhance(1.04),  # a near-duplicate of the first
        photos[1].transpose(Image.Transpose.FLIP_LEFT_RIGHT),  # mirrored sources: same person, other pictures
        photos[2].transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    ]
    outputs = [
        (
            img,
            DerivationRecord(
                "",
                None,
                "generate",
                prompt=f"photo of fw_obama {i}",
                prompt_id="pose-portrait",
                seed=i,
                params={"lora_id": "obama-v1-flux-x"},
                job_key=f"k{i}",
            ),
        )
        for i, img in enumerate(fakes)
    ]
    ids = store_outputs(ws, catalog, "obama", "generate", outputs, None)
    from flenwheel.identity import filter_images

    filter_images(ws, catalog, ws.character("obama"), image_ids=None, run_id=None)
    gate.Gate(catalog, "obama", "synthetic").decide([(i, "approved", None) for i in ids], "cli", "t", None)
    character = ws.character("obama")

    members, sel = flywheel_policy.next_version_members(ws, catalog, character, None, "obama-v1-flux-x", 0.9, 6)
    assert sel.candidates == 4 and sel.near_duplicates in ([ids[0]], [ids[1]])
    assert len(sel.added) == 3 and not sel.over_cap
    assert {m.image_id for m in members} >= set(sel.added)

    members, sel = flywheel_policy.next_version_members(ws, catalog, character, None, "obama-v1-flux-x", 0.5, 6)
    # 2 real photos: at most 2 synthetics at a 50% share; the rest are over the cap (or copies of those)
    assert len(sel.added) == 2 and sel.over_cap and len(sel.over_cap) + len(sel.near_duplicates) == 2
    sims = {r["image_id"]: r["similarity"] for r in catalog.rows("SELECT image_id, similarity FROM identity_scores")}
    admitted = [sims[i] for i in sel.added]
    assert admitted == sorted(admitted, reverse=True)  # best identity first
    assert all(sims[i] <= min(admitted) for i in sel.over_cap)


def test_flywheel_and_report_commands_refuse_bad_input_in_one_line(cli, ws: Workspace) -> None:
    bad = cli("flywheel", "obama", "--max-synthetic-share", "3")
    assert bad.exit_code == 2 and "--max-synthetic-share" in bad.stderr and "0.9" in bad.stderr
    unknown = cli("flywheel", "nobody")
    assert unknown.exit_code == 2 and "unknown character 'nobody'" in unknown.stderr
    early = cli("report", "obama")
    assert early.exit_code == 2 and "no flywheel iteration" in early.stderr
