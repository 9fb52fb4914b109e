"""FLUX LoRA trainer on the tiny FLUX: learning, LoRA-only updates, both output formats, resume, identity choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from flenwheel.catalog import Catalog
from flenwheel.dataset import versions
from flenwheel.identity import DlibBackend, build_reference_set, judge_image
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.objects import load_rgb
from flenwheel.store.workspace import Workspace
from flenwheel.training import (
    CheckpointScore,
    FluxBackend,
    LoraTrainer,
    TrainingInterrupted,
    TrainJob,
    bucket_size,
    choose_checkpoint,
    comfy_to_flux,
    export_version,
    flux_to_comfy,
    identity_judge,
    train_flux,
)
from flenwheel.training.data import version_examples

pytestmark = pytest.mark.tiny


@pytest.fixture
def v1(ws: Workspace, catalog: Catalog, faces: Path) -> str:
    paths = [faces / "obama" / f"obama_{i}.jpg" for i in (1, 2, 3)]
    ingest_paths(ws, catalog, "obama", paths, None)
    return versions.freeze(ws, catalog, ws.character("obama"), None).version_id


def test_buckets_never_upscale() -> None:
    assert bucket_size(1024, 1024, 512) == (512, 512)
    w, h = bucket_size(900, 1200, 512)
    assert w % 16 == 0 and h % 16 == 0 and h > w and abs(w * h - 512 * 512) < 0.1 * 512 * 512
    assert bucket_size(300, 200, 512) == (288, 192)  # smaller than the bucket: shrink the bucket, not upscale
    assert bucket_size(40, 40, 64) == (32, 32)


def test_export_is_the_common_folder_layout(ws: Workspace, catalog: Catalog, v1: str) -> None:
    out = export_version(ws, catalog, v1)
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3
    for png in pngs:
        assert png.with_suffix(".txt").read_text().strip() == "photo of fw_obama"
    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert {x["file_name"] for x in lines} == {p.name for p in pngs}


def test_loss_falls_and_only_lora_parameters_change(ws: Workspace, catalog: Catalog, v1: str) -> None:
    profile = ws.profile("cpu-tiny")
    settings = profile.trainer.model_copy(update={"learning_rate": 1e-2})
    backend = FluxBackend(ws, profile, settings, profile.generator.model)
    trainer = LoraTrainer(ws, catalog, backend)
    data = backend.cache(version_examples(ws, catalog, v1)[:1], ws.root / "cache" / "t")
    transformer, params, _ = trainer.prepare_model(settings)
    names = [n for n, p in transformer.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    base = {k: v.clone() for k, v in transformer.state_dict().items() if "lora" not in k}
    lora_before = {k: v.clone() for k, v in transformer.state_dict().items() if "lora_B" in k}

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(backend.loss(transformer, data, torch.Generator().manual_seed(123)))

    before = fixed_loss()
    optimizer = trainer.optimizer(params)
    for step in range(120):  # overfit one example on the same noise
        trainer.train_step(
            transformer, params, optimizer, data, lambda _k: [0], torch.Generator().manual_seed(123), step
        )
    after = fixed_loss()
    assert after < 0.7 * before, (before, after)
    state = transformer.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items())  # the base is untouched
    assert any(not torch.equal(state[k], v) for k, v in lora_before.items())


def test_train_saves_both_formats_that_load(ws: Workspace, catalog: Catalog, v1: str) -> None:
    from diffusers import FluxPipeline

    with catalog.run("test:train", {}) as run_id:
        result = train_flux(ws, catalog, ws.character("obama"), v1, ws.profile("cpu-tiny"), run_id)
    assert result.trained and result.chosen_step in (8, 16) and len(result.scores) == 2
    # metadata and registration
    with safe_open(str(result.weights), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["flenwheel.dataset_version"] == v1 and meta["flenwheel.trigger"] == "fw_obama"
    assert meta["flenwheel.base_model"].startswith("tiny:flux@") and "lora_adapter_metadata" in meta
    assert keys and all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    row = catalog.rows("SELECT * FROM loras")[0]
    assert (
        row["lora_id"] == result.lora_id
        and row["sha256"] == result.sha256
        and row["chosen_checkpoint"] == result.chosen_step
    )
    assert row["dataset_version"] == v1 and row["kind"] == "flux"
    checkpoint_metrics = catalog.rows("SELECT step, name FROM metrics WHERE scope = 'checkpoint' ORDER BY step")
    assert {(r["step"], r["name"]) for r in checkpoint_metrics} >= {(8, "pass_rate"), (16, "pass_rate")}
    assert (result.run_dir / "training.png").exists()
    assert (result.run_dir / "checkpoints" / f"step-{result.chosen_step:06d}" / "samples.png").exists()

    # the diffusers file loads into a fresh pipeline and changes its output
    pipe = FluxPipeline.from_pretrained(ws.root / "models" / "tiny" / "flux")

    def run() -> np.ndarray:
        out = pipe(
            "photo of fw_obama", height=64, width=64, num_inference_steps=2, generator=torch.Generator().manual_seed(0)
        )
        return np.asarray(out.images[0])

    base = run()
    pipe.load_lora_weights(str(result.weights), adapter_name="fw")
    assert not np.array_equal(run(), base)

    # the ComfyUI copy uses ComfyUI's FLUX names (the default targets include both feed-forwards) and converts
    # back to the same tensors
    comfy = load_file(str(result.comfy_weights))
    names = {k.split(".")[0] for k in comfy}
    assert {
        "lora_unet_double_blocks_0_img_attn_qkv",
        "lora_unet_double_blocks_0_txt_attn_qkv",
        "lora_unet_double_blocks_0_img_attn_proj",
        "lora_unet_double_blocks_0_txt_attn_proj",
        "lora_unet_double_blocks_0_img_mlp_0",
        "lora_unet_double_blocks_0_img_mlp_2",
        "lora_unet_double_blocks_0_txt_mlp_0",
        "lora_unet_double_blocks_0_txt_mlp_2",
        "lora_unet_single_blocks_0_linear1",
    } == names
    assert all(f"{n}.alpha" in comfy for n in names)
    back, alpha = comfy_to_flux(comfy, inner_dim=32, mlp_dim=128)
    original = load_file(str(result.weights))
    assert alpha == 4.0 and set(back) == set(original)
    assert all(torch.equal(back[k], original[k].float()) for k in original)


def test_fused_comfy_lora_computes_the_same_delta() -> None:
    """The block-diagonal qkv LoRA (rank 3r, alpha 3a) equals the three separate LoRAs."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for m in ("to_q", "to_k", "to_v"):
        sd[f"transformer.transformer_blocks.0.attn.{m}.lora_A.weight"] = torch.randn(2, 8, generator=g)
        sd[f"transformer.transformer_blocks.0.attn.{m}.lora_B.weight"] = torch.randn(8, 2, generator=g)
    comfy = flux_to_comfy(sd, alpha=1.0, inner_dim=8, mlp_dim=32)
    down = comfy["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"]
    up = comfy["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"]
    fused = up @ down * (float(comfy["lora_unet_double_blocks_0_img_attn_qkv.alpha"]) / down.shape[0])
    separate = torch.cat(
        [
            sd[f"transformer.transformer_blocks.0.attn.{m}.lora_B.weight"]
            @ sd[f"transformer.transformer_blocks.0.attn.{m}.lora_A.weight"]
            * (1.0 / 2)
            for m in ("to_q", "to_k", "to_v")
        ]
    )
    assert torch.allclose(fused, separate, atol=1e-6)


def test_killed_run_resumes_to_identical_weights(
    ws: Workspace, catalog: Catalog, v1: str, tmp_path: Path, configs_dir: Path, tiny_models, faces: Path
) -> None:
    whole_ws = Workspace(root=tmp_path / "whole", configs=configs_dir)  # the same photos in a second root
    (whole_ws.root / "models").mkdir(parents=True)
    (whole_ws.root / "models" / "tiny").symlink_to(next(iter(tiny_models.values())).parent)
    whole_cat = Catalog(whole_ws.catalog_path)
    ingest_paths(whole_ws, whole_cat, "obama", [faces / "obama" / f"obama_{i}.jpg" for i in (1, 2, 3)], None)
    whole_v1 = versions.freeze(whole_ws, whole_cat, whole_ws.character("obama"), None).version_id
    assert whole_v1 == v1
    profile = ws.profile("cpu-tiny")
    uninterrupted = train_flux(whole_ws, whole_cat, whole_ws.character("obama"), v1, profile, None)

    with pytest.raises(TrainingInterrupted):
        train_flux(ws, catalog, ws.character("obama"), v1, profile, None, stop_after=11)  # killed after step 11
    resumed = train_flux(ws, catalog, ws.character("obama"), v1, profile, None)
    assert resumed.resumed_from == 8 and resumed.lora_id == uninterrupted.lora_id
    a, b = load_file(str(uninterrupted.weights)), load_file(str(resumed.weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [x for _, x in resumed.losses] == [x for _, x in uninterrupted.losses]
    again = train_flux(ws, catalog, ws.character("obama"), v1, profile, None)
    assert not again.trained and again.sha256 == resumed.sha256


def test_choice_follows_identity_not_the_last_checkpoint(ws: Workspace, catalog: Catalog, v1: str, faces: Path) -> None:
    """The editor LoRA's rule (identity only), on real identity verdicts per checkpoint: the second of three
    checkpoints keeps the identity best."""
    backend_dlib = DlibBackend(ws.settings.identity)
    refs = [faces / "obama" / "obama_1.jpg", faces / "obama" / "obama_2.jpg"]
    refset = build_reference_set(backend_dlib, "obama", [(str(p), load_rgb(p)) for p in refs])
    from flenwheel.identity import Judge

    judge = Judge("dlib", ws.settings.identity, refset.embeddings, 0.4)
    # what each checkpoint's samples look like: step 4 half right, step 8 all right, step 12 drifted away
    per_checkpoint = iter(
        [
            [faces / "obama" / "obama_3.jpg", faces / "biden" / "biden_1.jpg"],
            [faces / "obama" / "obama_3.jpg", faces / "obama" / "obama_small.jpg"],
            [faces / "rose_leslie" / "rose_1.jpg", faces / "kit_harington" / "kit_1.jpg"],
        ]
    )

    def score(images: list[Image.Image]) -> list:
        return [judge_image(backend_dlib, judge, load_rgb(p)) for p in next(per_checkpoint)]

    profile = ws.profile("cpu-tiny")
    settings = profile.trainer.model_copy(update={"steps": 12, "checkpoint_every": 4, "keep_last": 1})
    backend = FluxBackend(ws, profile, settings, profile.generator.model)
    job = TrainJob("obama", v1, version_examples(ws, catalog, v1), settings, "fw_obama", backend.model.ref)
    with catalog.run("test:choice", {}) as run_id:
        result = LoraTrainer(ws, catalog, backend, run_id).train(job, identity_judge(score))
    assert [(s.step, s.pass_rate) for s in sorted(result.scores, key=lambda s: s.step)] == [
        (4, 0.5),
        (8, 1.0),
        (12, 0.0),
    ]
    assert result.chosen_step == 8
    kept = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert kept == ["step-000008", "step-000012"]  # the best survives pruning beside the last one
    chosen = load_file(str(result.run_dir / "checkpoints" / "step-000008" / "adapter.safetensors"))
    exported = load_file(str(result.weights))
    assert all(torch.equal(exported[f"transformer.{k}"], v) for k, v in chosen.items())
    metrics = {
        (r["step"], r["name"]): r["value"] for r in catalog.rows("SELECT * FROM metrics WHERE scope = 'checkpoint'")
    }
    assert metrics[(8, "pass_rate")] == 1.0 and metrics[(12, "pass_rate")] == 0.0


def test_choose_checkpoint_ties() -> None:
    scores = [CheckpointScore(250, 0.5, 0.4, 8), CheckpointScore(500, 0.5, 0.45, 8), CheckpointScore(750, 0.25, 0.6, 8)]
    assert choose_checkpoint(scores).step == 500
    assert choose_checkpoint([CheckpointScore(1, None, None, 0), CheckpointScore(2, None, None, 0)]).step == 2
    # by composite: ties go to fewer copies, then more likeness, then the earlier (less memorised) step
    same = dict(pass_rate=None, mean_similarity=None, n_samples=4, composite=0.5)
    assert (
        choose_checkpoint([CheckpointScore(1, **same, copy_rate=0.25), CheckpointScore(2, **same, copy_rate=0.0)]).step
        == 2
    )
    assert choose_checkpoint([CheckpointScore(1, **same), CheckpointScore(2, **same)]).step == 1


def test_train_command(cli, ws: Workspace, v1: str, monkeypatch) -> None:
    result = cli("train", "obama", "--profile", "cpu-tiny", "--steps", "8")
    assert result.exit_code == 0, result.stderr
    assert "chosen checkpoint step 8" in result.stdout and "ComfyUI:" in result.stdout
    again = cli("train", "obama", "--profile", "cpu-tiny", "--steps", "8")
    assert "already trained" in again.stdout
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the refusal a machine without a GPU gives
    bad = cli("train", "obama", "--profile", "gpu-24gb")
    assert bad.exit_code == 2 and "needs a CUDA GPU" in bad.stderr


def test_later_checkpoints_that_copy_training_photos_are_not_exported(
    ws: Workspace, catalog: Catalog, faces: Path
) -> None:
    """The character LoRA's rule on real photos standing in for samples: step 4's samples are another photo of the
    person (good) and someone else (weak); step 8's are near-copies of both training photos, more like the person
    than anything step 4 made; step 12 copies one of them. Identity alone would export step 8; the composite
    exports step 4, says why, and the report's chart marks it."""
    from bench.nearcopies import grid
    from flenwheel.evaluation import SampleScorer
    from flenwheel.training import evaluation_judge

    ingest_paths(ws, catalog, "obama", [faces / "obama" / f"obama_{i}.jpg" for i in (1, 2)], None)
    version = versions.freeze(ws, catalog, ws.character("obama"), None).version_id
    photo = lambda person, name: load_rgb(faces / person / name)  # noqa: E731
    stand_ins = iter(
        [
            [photo("obama", "obama_3.jpg"), photo("biden", "biden_1.jpg")],
            [grid(photo("obama", "obama_1.jpg"))["crop15-all-round"], grid(photo("obama", "obama_2.jpg"))["mirror"]],
            [photo("obama", "obama_3.jpg"), grid(photo("obama", "obama_1.jpg"))["combined"]],
        ]
    )
    real = evaluation_judge(SampleScorer(ws, catalog, ws.character("obama"), version))

    def judge(step: int, samples: list[Image.Image], specs: list) -> tuple:
        return real(step, [Image.fromarray(p) for p in next(stand_ins)], specs)

    profile = ws.profile("cpu-tiny")
    settings = profile.trainer.model_copy(update={"steps": 12, "checkpoint_every": 4, "keep_last": 1})
    backend = FluxBackend(ws, profile, settings, profile.generator.model)
    job = TrainJob("obama", version, version_examples(ws, catalog, version), settings, "fw_obama", backend.model.ref)
    with catalog.run("test:copies", {}) as run_id:
        result = LoraTrainer(ws, catalog, backend, run_id).train(job, judge)
    by_step = {s.step: s for s in result.scores}
    assert [(s, by_step[s].good_rate, by_step[s].copy_rate, by_step[s].weak_rate) for s in (4, 8, 12)] == [
        (4, 0.5, 0.0, 0.5),
        (8, 0.0, 1.0, 0.0),
        (12, 0.5, 0.5, 0.0),
    ]
    assert by_step[8].mean_likeness > by_step[12].mean_likeness > by_step[4].mean_likeness  # copies look alike
    assert by_step[8].pass_rate == 1.0 > by_step[4].pass_rate  # so identity alone would export a copying step
    assert result.chosen_step == 4
    assert "step 4: the highest composite (+0.50)" in result.choice
    assert "later checkpoints copy training images (step 8 100%, step 12 50%" in result.choice
    chosen = load_file(str(result.run_dir / "checkpoints" / "step-000004" / "adapter.safetensors"))
    exported = load_file(str(result.weights))
    assert all(torch.equal(exported[f"transformer.{k}"], v) for k, v in chosen.items())
    recorded = json.loads((result.run_dir / "result.json").read_text())
    assert recorded["choice"] == result.choice and recorded["scores"][0]["composite"] is not None
    assert (result.run_dir / "checkpoints.png").is_file()
    metrics = {
        (r["step"], r["name"]): r["value"] for r in catalog.rows("SELECT * FROM metrics WHERE scope = 'checkpoint'")
    }
    assert metrics[(8, "copy_rate")] == 1.0 and metrics[(4, "composite")] == 0.5 and (4, "adherence") not in metrics
