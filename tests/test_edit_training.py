"""Flywheel 2 on the tiny QwenImageEditPlusPipeline: triplets, loss, both LoRA formats, resume, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions
from PIL import Image
from safetensors.torch import load_file

from flenwheel import gate
from flenwheel.catalog import Catalog
from flenwheel.editing import AugmentEditor, EditJob, make_editor, run_edit_batch
from flenwheel.identity import filter_images
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace
from flenwheel.training import (
    Example,
    LoraTrainer,
    QwenEditBackend,
    TrainingInterrupted,
    approved_triplets,
    export_triplets,
    split_held_out,
    train_edit_lora,
)

pytestmark = pytest.mark.tiny

PROMPTS = ("angle-mirror", "bg-blue")
AUGMENT = ("edit", "augment")  # the tiny Qwen paints noise, so the CPU editor's approved edits stand in


def make_triplets(ws: Workspace, catalog: Catalog, faces: Path) -> list[str]:
    """Three Obama sources; approved augment edits of each (the held-out one's too, which training must skip)."""
    paths = [faces / "obama" / f"obama_{i}.jpg" for i in (1, 2, 3)]
    sources = [o.image_id for o in ingest_paths(ws, catalog, "obama", paths, None)]
    character = ws.character("obama")
    filter_images(ws, catalog, character, image_ids=None, run_id=None)
    library = ws.prompt_library(character)
    jobs = [EditJob(s, library[p], 0) for s in sorted(sources) for p in PROMPTS]
    made = run_edit_batch(ws, catalog, "obama", AugmentEditor(), jobs, None)
    gate.Gate(catalog, "obama", "enrich").decide([(i, "approved", None) for i in made], "cli", "test", None)
    return sources


def without_samples(ws: Workspace):
    """cpu-tiny without checkpoint samples: each tiny sample edit goes through the pipeline, which encodes its
    condition at ~1 MP whatever the profile's control_area (about 5 s on the CPU), and the sample path is covered
    once, in the test that trains with it."""
    profile = ws.profile("cpu-tiny")
    return profile.model_copy(update={"edit_trainer": profile.edit_trainer.model_copy(update={"sample_prompts": []})})


@pytest.fixture
def sources(ws: Workspace, catalog: Catalog, faces: Path) -> list[str]:
    return make_triplets(ws, catalog, faces)


def test_triplets_export_in_musubi_layout_and_as_folders(ws: Workspace, catalog: Catalog, sources) -> None:
    triplets = approved_triplets(catalog, "obama", AUGMENT)
    assert len(triplets) == 6 and not approved_triplets(catalog, "obama", ("edit",))
    assert {t.instruction for t in triplets} == {ws.prompt_library()[p].prompt for p in PROMPTS}
    out = export_triplets(ws, triplets, "obama_triplets_test")
    lines = [json.loads(x) for x in (out / "musubi.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(set(x) == {"image_path", "control_path_0", "caption"} for x in lines)
    for x, t in zip(lines, triplets, strict=True):
        assert Path(x["image_path"]).read_bytes() == (ws.root / t.after_path).read_bytes()
        assert Path(x["control_path_0"]).read_bytes() == (ws.root / t.before_path).read_bytes()
        assert Path(x["image_path"]).with_suffix(".txt").read_text().strip() == x["caption"] == t.instruction
    train, held = split_held_out(sources)
    assert len(held) == 1 and sorted(train + held) == sorted(sources)


def test_loss_falls_when_overfitting_and_only_the_target_tokens_count(ws: Workspace, catalog: Catalog, sources) -> None:
    profile = ws.profile("cpu-tiny")
    settings = profile.edit_trainer.model_copy(update={"learning_rate": 1e-2})
    backend = QwenEditBackend(ws, profile, settings, profile.editor.model)
    t = approved_triplets(catalog, "obama", AUGMENT)[0]
    example = Example("x", (ws.root / t.before_path, ws.root / t.after_path), t.instruction)
    data = backend.cache([example], ws.root / "cache" / "t")
    before = Image.open(ws.root / t.before_path)
    # cpu-tiny conditions at its 64-px training size (a 1 MP condition cost 8-12 s per triplet to cache and 5-7x
    # the step time, docs/benchmarks.md); the target at its 64-px bucket (vae x8)
    assert settings.control_area == 64 * 64 == profile.edit_trainer.resolutions[0] ** 2
    width, height = calculate_dimensions(64 * 64, before.width / before.height)
    assert data[0]["control"].shape[1:] == (height // 8, width // 8) and data[0]["latents"].shape[1] <= 10
    # the real profiles keep what QwenImageEditPlusPipeline gives the transformer at inference: ~1 MP
    assert {ws.profile(p).edit_trainer.control_area for p in ("gpu-24gb", "gpu-80gb")} == {1024 * 1024}
    trainer = LoraTrainer(ws, catalog, backend)
    transformer, params, _ = trainer.prepare_model(settings)
    assert all(".lora_A." in n or ".lora_B." in n for n, p in transformer.named_parameters() if p.requires_grad)

    def fixed_loss(batch: list) -> float:
        with torch.no_grad():
            return float(backend.loss(transformer, batch, torch.Generator().manual_seed(7)))

    start = fixed_loss(data)
    # the condition steers the prediction: another control image gives another loss on the same target and noise
    swapped = [{**data[0], "control": torch.flip(data[0]["control"], dims=[-1])}]
    assert fixed_loss(swapped) != start
    optimizer = trainer.optimizer(params)
    for step in range(80):
        trainer.train_step(transformer, params, optimizer, data, lambda _k: [0], torch.Generator().manual_seed(7), step)
    assert fixed_loss(data) < 0.7 * start


def test_train_edit_lora_saves_both_formats_that_load_and_change_the_edit(
    ws: Workspace, catalog: Catalog, sources
) -> None:
    from diffusers import QwenImageEditPlusPipeline

    with catalog.run("test:train-edit", {}) as run_id:
        result = train_edit_lora(ws, catalog, ws.character("obama"), ws.profile("cpu-tiny"), run_id, ops=AUGMENT)
    row = catalog.rows("SELECT * FROM loras")[0]
    assert row["kind"] == "qwen_edit" and row["lora_id"] == result.lora_id and row["sha256"] == result.sha256
    hyper = json.loads(row["hyperparams"])
    _, held = split_held_out(sources)
    assert hyper["held_out_sources"] == held and hyper["ops"] == list(AUGMENT)
    assert {s.step for s in result.scores} == {4, 8} and all(s.n_samples == 1 for s in result.scores)
    exports = list((ws.root / "exports").glob("obama_triplets_*/musubi.jsonl"))
    assert len(exports) == 1 and len(exports[0].read_text().splitlines()) == 4  # held-out source's edits left out

    comfy = load_file(str(result.comfy_weights))
    assert comfy and all(k.startswith("diffusion_model.") for k in comfy)
    assert {k.rsplit(".", 2)[-2] if k.endswith(".weight") else "alpha" for k in comfy} == {
        "lora_down",
        "lora_up",
        "alpha",
    }
    diffusers_sd = load_file(str(result.weights))
    assert all(k.startswith("transformer.") for k in diffusers_sd)

    pipe = QwenImageEditPlusPipeline.from_pretrained(ws.root / "models" / "tiny" / "qwen-image-edit")
    source = Image.open(ws.root / catalog.source_images("obama")[0]["path"]).convert("RGB").resize((64, 64))

    def edit() -> np.ndarray:
        out = pipe(
            image=[source],
            prompt="将镜头向左旋转45度 Rotate the camera 45 degrees to the left.",
            negative_prompt=" ",
            true_cfg_scale=1.0,
            num_inference_steps=2,
            height=64,
            width=64,
            generator=torch.Generator().manual_seed(0),
        )
        return np.asarray(out.images[0])

    base = edit()
    outputs = {}
    for name, path in (("diffusers", result.weights), ("comfy", result.comfy_weights)):
        pipe.load_lora_weights(str(path), adapter_name=name)
        pipe.set_adapters([name])
        outputs[name] = edit()
        assert not np.array_equal(outputs[name], base), name
    # both files hold the same LoRA
    assert np.abs(outputs["comfy"].astype(int) - outputs["diffusers"].astype(int)).max() <= 2


def test_killed_edit_training_resumes_to_identical_weights(
    ws: Workspace, catalog: Catalog, sources, tmp_path: Path, configs_dir: Path, tiny_models, faces: Path
) -> None:
    whole_ws = Workspace(root=tmp_path / "whole", configs=configs_dir)
    (whole_ws.root / "models").mkdir(parents=True)
    (whole_ws.root / "models" / "tiny").symlink_to(next(iter(tiny_models.values())).parent)
    whole_cat = Catalog(whole_ws.catalog_path)
    make_triplets(whole_ws, whole_cat, faces)
    profile = without_samples(ws)
    uninterrupted = train_edit_lora(whole_ws, whole_cat, whole_ws.character("obama"), profile, None, ops=AUGMENT)
    with pytest.raises(TrainingInterrupted):
        train_edit_lora(ws, catalog, ws.character("obama"), profile, None, ops=AUGMENT, stop_after=6)
    resumed = train_edit_lora(ws, catalog, ws.character("obama"), profile, None, ops=AUGMENT)
    assert resumed.resumed_from == 4 and resumed.lora_id == uninterrupted.lora_id
    a, b = load_file(str(uninterrupted.weights)), load_file(str(resumed.weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_enrichment_selects_the_editor_lora_by_config(ws: Workspace, catalog: Catalog, sources) -> None:
    from flenwheel.models.loading import ModelManager

    result = train_edit_lora(ws, catalog, ws.character("obama"), without_samples(ws), None, ops=AUGMENT)
    path = ws.configs_dir / "characters" / "obama.yaml"
    plain = make_editor("qwen", ws, ModelManager(ws, ws.profile("cpu-tiny")), catalog, ws.character("obama"))
    path.write_text(path.read_text() + "editor_lora: latest\n")
    chosen = make_editor("qwen", ws, ModelManager(ws, ws.profile("cpu-tiny")), catalog, ws.character("obama"))
    prompt = ws.prompt_library()["angle-left-45"]
    assert [x[0] for x in chosen.fingerprint(prompt)["loras"]] == [result.lora_id]
    assert plain.fingerprint(prompt)["loras"] == []
    job = EditJob(sources[0], prompt, 0)
    assert chosen.key(job) != plain.key(job)  # a new LoRA makes new jobs, never reuses old images


def test_train_edit_and_eval_edit_commands_compare_both_arms(cli, ws: Workspace, catalog: Catalog, sources) -> None:
    none = cli("train-edit", "obama", "--profile", "cpu-tiny")
    assert none.exit_code == 2 and "no approved triplets" in none.stderr and "--ops augment" in none.stderr
    path = ws.configs_dir / "profiles" / "cpu-tiny.yaml"  # no checkpoint samples here: see without_samples
    path.write_text(path.read_text().replace('sample_prompts: ["将镜头', 'sample_prompts: [] # ["将镜头'))
    trained = cli("train-edit", "obama", "--profile", "cpu-tiny", "--ops", "edit,augment", "--steps", "4")
    assert trained.exit_code == 0, trained.stderr
    lora_id = trained.stdout.split("--lora ")[1].split()[0]
    ev = cli("eval-edit", "obama", "--lora", lora_id, "--prompts", "angle-left-45")
    assert ev.exit_code == 0, ev.stderr
    assert "base : 1 edit(s)" in ev.stdout and "lora : 1 edit(s)" in ev.stdout and "report:" in ev.stdout

    # what the evaluation recorded: held-out input, same prompt and seed in both arms, only the LoRA differs
    rows = json.loads((ws.root / "evals" / lora_id / "evaluation.json").read_text())
    _, held = split_held_out(sources)
    assert len(rows) == 2 and {r["source_id"] for r in rows} == set(held)
    base, lora = (next(r for r in rows if r["arm"] == arm) for arm in ("base", "lora"))
    assert (base["prompt_id"], base["seed"]) == (lora["prompt_id"], lora["seed"]) == ("angle-left-45", 0)
    assert not base["loras"] and lora["loras"][0]["ref"].startswith(f"catalog:{lora_id}")
    a, b = (np.asarray(Image.open(ws.root / "evals" / lora_id / r["file"])) for r in (base, lora))
    assert not np.array_equal(a, b)
    metrics = {
        (r["scope_id"], r["name"]): r["value"]
        for r in catalog.rows("SELECT scope_id, name, value FROM metrics WHERE scope = 'edit_eval'")
    }
    for arm in ("base", "lora"):
        assert metrics[(f"{lora_id}:{arm}", "n")] == 1
        assert metrics[(f"{lora_id}:{arm}", "pass_rate")] == 0.0  # tiny weights: noise, no face
    report = Path(ev.stdout.split("report: ")[1].split()[0])
    assert report.is_file() and "base editor" in report.read_text() and any(report.parent.glob("side_by_side_*.png"))

    from flenwheel.report import iteration_report  # the flywheel report carries the comparison too

    page = iteration_report(ws.root, catalog, "obama", 1).path.read_text()
    assert "Editor LoRA (flywheel 2)" in page and f"../edit-eval-{lora_id}/side_by_side_" in page

    bad = cli("eval-edit", "obama", "--lora", "nope")
    assert bad.exit_code == 2 and "not a Qwen-Image-Edit LoRA" in bad.stderr


def test_editor_flywheel_flow_trains_evaluates_and_resumes(prefect_harness, ws: Workspace, catalog, sources) -> None:
    from prefect.exceptions import ParameterTypeError

    from flenwheel.flows.editor import EditorParams, editor_flywheel

    params = EditorParams(
        character="obama", profile="cpu-tiny", steps=4, ops=["edit", "augment"], eval_prompts=["angle-left-45"]
    )
    first = editor_flywheel(params, root=str(ws.root), configs=str(ws.configs_dir))
    assert first.lora.trained and first.evaluation.held_out and {"base", "lora"} <= set(first.evaluation.metrics)
    assert all(m["n"] == 1 for m in first.evaluation.metrics.values()) and first.evaluation.report.is_file()
    again = editor_flywheel(params, root=str(ws.root), configs=str(ws.configs_dir))
    assert not again.lora.trained and again.lora.lora_id == first.lora.lora_id  # found, not trained twice
    assert len(catalog.rows("SELECT * FROM loras")) == 1
    with pytest.raises(ParameterTypeError, match="ops"):
        editor_flywheel(params={"character": "obama", "ops": ["mirror"]})
