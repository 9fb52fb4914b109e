"""The open stack end to end on its tiny twins (cpu-tiny-open): a two-iteration flywheel that enriches with the
Qwen-Image-Edit (2509/2511 class) twin, judges identity with the permissive sface backend, trains and generates with
the FLUX.2 [klein] twin, freezes v2 and writes a report whose licences all allow commercial use; its LoRA loads in
plain diffusers ``Flux2KleinPipeline`` and changes the output. The FLUX.1 profile's report warns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline

from flenwheel.catalog import Catalog
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace
from tests.conftest import PROJECT

pytestmark = pytest.mark.tiny


@pytest.fixture(scope="module")
def open_flywheel(prefect_harness, tmp_path_factory: pytest.TempPathFactory, tiny_models, faces: Path):
    from flenwheel.flows.flywheel import FlywheelParams, flywheel

    base = tmp_path_factory.mktemp("open-flywheel")
    configs = base / "configs"
    shutil.copytree(PROJECT / "configs", configs)
    # no backend named: the profile's (sface on cpu-tiny-open)
    (configs / "characters" / "obama.yaml").write_text("name: obama\ntrigger: fw_obama\n")
    # every edit is still checked; the tiny twins' noise fails the checks, and retrying noise only costs time here
    settings = configs / "flenwheel.yaml"
    settings.write_text(settings.read_text().replace("  retries: 2 ", "  retries: 0 "))
    ws = Workspace(root=base / "data", configs=configs)
    (ws.root / "models").mkdir(parents=True)
    (ws.root / "models" / "tiny").symlink_to(next(iter(tiny_models.values())).parent)
    catalog = Catalog(ws.catalog_path)
    ingest_paths(ws, catalog, "obama", [faces / "obama" / f for f in ("obama_1.jpg", "obama_2.jpg")], None)
    params = FlywheelParams(
        character="obama",
        iterations=2,
        profile="cpu-tiny-open",
        editor="qwen",
        review="auto",
        enrich_prompts=["light-golden-hour"],
        enrich_seeds=1,
        synthetic_prompts=["pose-portrait"],
        synthetic_seeds=1,
        min_new_synthetics=0,
    )
    result = flywheel(params, root=str(ws.root), configs=str(ws.configs_dir))
    return ws, catalog, result


def test_open_flywheel_runs_on_the_open_models(open_flywheel) -> None:
    _, catalog, result = open_flywheel
    assert result.status == "completed", result
    assert [r["dataset_version"] for r in catalog.iterations("obama")] == ["obama@v1", "obama@v2"]
    made = catalog.rows("SELECT op, model_ref FROM derivations")
    assert {r["model_ref"].split("@")[0] for r in made if r["op"] == "edit"} == {"tiny:qwen-image-edit"}
    assert {r["model_ref"].split("@")[0] for r in made if r["op"] == "generate"} == {"tiny:flux2-klein"}
    assert {r["backend"] for r in catalog.rows("SELECT DISTINCT backend FROM identity_scores")} == {"sface"}
    kinds = {r["kind"] for r in catalog.rows("SELECT kind FROM loras")}
    assert kinds == {"flux2_klein"}


def test_open_report_records_commercial_licences_only(open_flywheel) -> None:
    ws, catalog, _ = open_flywheel
    report = ws.root / catalog.iterations("obama")[-1]["report_path"]
    page = report.read_text()
    assert "every contributing model allows commercial use" in page and "non-commercial models" not in page
    rows = json.loads((report.parent / "licences.json").read_text())
    models = " ".join(r["model"] for r in rows)
    # the LoRA's base and the judge of the version's images (the twins' noisy edits fail identity: no editor)
    assert "FLUX.2-klein-4B" in models and "sface" in models
    assert all(r["commercial"] is True for r in rows)
    assert {r["role"] for r in catalog.version_licences("obama@v2")} == {"identity"}


def test_open_lora_loads_in_plain_diffusers_and_changes_the_output(open_flywheel, tiny_models) -> None:
    ws, catalog, _ = open_flywheel
    lora_id = catalog.iterations("obama")[-1]["lora_id"]
    weights = ws.root / catalog.lora(lora_id)["path"]
    pipe = Flux2KleinPipeline.from_pretrained(tiny_models["flux2-klein"])
    pipe.set_progress_bar_config(disable=True)

    def latents() -> np.ndarray:
        out = pipe(
            prompt="photo of fw_obama",
            height=64,
            width=64,
            num_inference_steps=2,
            guidance_scale=1.0,
            max_sequence_length=32,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="latent",
        )
        return out.images.float().numpy()

    before = latents()
    pipe.load_lora_weights(str(weights), adapter_name="obama")
    after = latents()
    assert np.abs(after - before).max() > 1e-4, np.abs(after - before).max()
