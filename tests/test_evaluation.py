"""Samples judged by the evaluation engine (docs/evaluation.md), with real photos standing in for samples: near-copies
of training photos are copies, other photos of the person good, other people weak; adherence on the tiny critic;
``flenwheel evaluate`` on a folder and on a kohya-format LoRA file; copies kept out of the next version.

The photos of alex_lacamoire are used by no test and no calibration (bench/evaluate_held_out.py checks them)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from bench.nearcopies import grid, random_near_copy
from flenwheel import gate
from flenwheel.catalog import Catalog, DerivationRecord
from flenwheel.core.config import Check, ConfigError, EvaluationSettings
from flenwheel.dataset import iteration, versions
from flenwheel.dataset.admission import check_synthetics
from flenwheel.evaluation import BANDS, SampleScorer, band_for, summarise
from flenwheel.evaluation.scoring import configured_critic
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.objects import load_rgb
from flenwheel.store.outputs import store_outputs
from flenwheel.store.workspace import Workspace
from flenwheel.training import export_version
from tests.conftest import noise_image


def frozen_obama(ws: Workspace, catalog: Catalog, faces: Path) -> tuple[str, dict[str, str]]:
    """obama_1 and obama_2 as the training version; returns its id and the members' ids by file name."""
    done = ingest_paths(ws, catalog, "obama", [faces / "obama" / f"obama_{i}.jpg" for i in (1, 2)], None)
    ids = {f"obama_{i}.jpg": o.image_id for i, o in zip((1, 2), done, strict=True)}
    return versions.freeze(ws, catalog, ws.character("obama"), None).version_id, ids


def save(folder: Path, name: str, rgb: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(folder / name)
    return folder / name


def test_evaluate_images_copies_good_weak_and_no_single_face(cli, ws: Workspace, catalog: Catalog, faces: Path) -> None:
    """``flenwheel evaluate --images --json``: near-copies of either training photo (cropped, mirrored, re-coloured,
    re-encoded, resized) are copies of it; another photo of the person is good; other people are weak; two people
    are multi_face, noise no_face; an exported training image is not a copy of itself (leave-one-out)."""
    version, members = frozen_obama(ws, catalog, faces)
    folder = ws.root.parent / "samples"
    o1, o2 = load_rgb(faces / "obama" / "obama_1.jpg"), load_rgb(faces / "obama" / "obama_2.jpg")
    expected = {
        save(folder, "o1-crop15.png", grid(o1)["crop15-all-round"]).name: ("copy", "obama_1.jpg"),
        save(folder, "o1-combined.jpg", grid(o1)["combined"]).name: ("copy", "obama_1.jpg"),
        save(folder, "o2-random.jpg", random_near_copy(o2, np.random.default_rng(3))[1]).name: ("copy", "obama_2.jpg"),
        save(folder, "obama_3.png", load_rgb(faces / "obama" / "obama_3.jpg")).name: ("good", None),
        save(folder, "biden.png", load_rgb(faces / "biden" / "biden_2.jpg")).name: ("weak", None),
        save(folder, "rose.png", load_rgb(faces / "rose_leslie" / "rose_2.jpg")).name: ("weak", None),
        save(folder, "two.png", load_rgb(faces / "multi" / "two_people.jpg")).name: ("multi_face", None),
        save(folder, "noise.png", np.asarray(noise_image(1, (256, 256)))).name: ("no_face", None),
    }
    exported = export_version(ws, catalog, version) / f"{members['obama_1.jpg']}.png"
    (folder / "member.png").write_bytes(exported.read_bytes())  # the stored bytes: recognised as the member
    expected["member.png"] = ("good", "obama_2.jpg")

    result = cli("evaluate", "obama", "--images", str(folder), "--json")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    by_file, summary = {r["file"]: r for r in lines[:-1]}, lines[-1]
    assert {f: r["verdict"] for f, r in by_file.items()} == {f: v for f, (v, _) in expected.items()}
    band = BANDS["dlib"]
    for name, (verdict, nearest) in expected.items():
        r = by_file[name]
        if nearest is not None:
            assert r["nearest"] == members[nearest], name
        if verdict == "copy":
            assert r["copy_score"] >= band.copy_ceiling and r["composition"] > 0.9, r
        if verdict == "good":
            assert r["likeness"] >= band.likeness_floor and r["copy_score"] < band.copy_ceiling, r
        if verdict == "weak":
            assert r["likeness"] < band.likeness_floor, r
    assert summary["summary"] and summary["n"] == 9 and summary["version"] == version
    assert summary["copy_rate"] == pytest.approx(3 / 9) and summary["good_rate"] == pytest.approx(2 / 9)
    assert "adherence" not in summary  # no prompts, no checks: not measured
    one = ws.root.parent / "one"
    one.mkdir()
    (one / "o1-crop15.png").write_bytes((folder / "o1-crop15.png").read_bytes())
    plain = cli("evaluate", "obama", "--images", str(one), "--version", "v1")
    assert plain.exit_code == 0
    assert "o1-crop15.png: copy, likeness" in plain.stdout and "summary against obama@v1: 1 sample(s)" in plain.stdout


def test_evaluate_refuses_usage_errors_in_one_line(cli, ws: Workspace, catalog: Catalog, faces: Path) -> None:
    folder = ws.root.parent / "one"
    save(folder, "a.png", np.asarray(noise_image(2, (128, 128))))
    for args, words in (
        (("nobody", "--images", str(folder)), "unknown character 'nobody'"),
        (("obama", "--images", str(folder)), "obama has no frozen dataset version to compare samples with"),
        (("obama",), "give --images DIR"),
        (("obama", "--images", str(folder), "--lora", "x"), "one of them"),
    ):
        result = cli("evaluate", *args)
        assert result.exit_code == 2 and words in result.stderr and result.stderr.count("\n") == 1, result.stderr
    frozen_obama(ws, catalog, faces)
    (ws.root.parent / "empty").mkdir()
    for args, words in (
        (("--images", str(ws.root.parent / "empty")), "no image files in it"),
        (("--images", str(folder), "--version", "v9"), "--version v9: obama has no such dataset version"),
        (("--lora", "nothing-here"), "not a lora_id of the catalog"),
    ):
        result = cli("evaluate", "obama", *args)
        assert result.exit_code == 2 and words in result.stderr, result.stderr


def test_band_per_backend_is_data_and_overridable(ws: Workspace) -> None:
    assert band_for("dlib", EvaluationSettings()) == BANDS["dlib"]
    custom = band_for("dlib", EvaluationSettings.model_validate({"bands": {"dlib": {"copy_ceiling": 0.8}}}))
    assert (custom.likeness_floor, custom.copy_ceiling) == (BANDS["dlib"].likeness_floor, 0.8)
    settings = ws.configs_dir / "flenwheel.yaml"
    settings.write_text(settings.read_text() + "evaluation:\n  bands:\n    dlib: {copy_celing: 0.8}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'evaluation\.bands\.dlib\.copy_celing'"):
        Workspace(root=ws.root, configs=ws.configs_dir)
    assert configured_critic(ws, None) is None  # verify.critic is null: adherence is not measured


@pytest.mark.tiny
def test_adherence_is_the_share_of_checks_the_tiny_critic_passes(
    tiny_models, ws: Workspace, catalog: Catalog, faces: Path
) -> None:
    """A prompt's checks answered by the (random-weight) critic: each answer is p(yes) against its threshold, the
    adherence the share passed, and the composite weighs a good sample by it."""
    from flenwheel.models.critic import Critic

    version, _ = frozen_obama(ws, catalog, faces)
    critic = Critic.from_pretrained(tiny_models["qwen-image-edit"])
    photo = Image.fromarray(load_rgb(faces / "obama" / "obama_3.jpg"))
    p_yes = critic.p_yes(photo, "Is the person wearing a yellow raincoat?")
    checks = [
        Check(id="low", question="Is the person wearing a yellow raincoat?", threshold=p_yes / 2),
        Check(id="high", question="Is the person wearing a yellow raincoat?", threshold=min(0.99, p_yes * 1.5 + 0.01)),
        Check(id="not", question="Is the person wearing a yellow raincoat?", threshold=p_yes / 2, expect=False),
    ]
    scorer = SampleScorer(ws, catalog, ws.character("obama"), version, critic)
    score = scorer.score(photo, "obama_3", prompt_id="eval-raincoat", checks=checks)
    assert score.verdict == "good" and [a.passed for a in score.answers] == [True, False, False]
    assert score.adherence == pytest.approx(1 / 3) and score.critic == critic.source
    without = SampleScorer(ws, catalog, ws.character("obama"), version).score(photo, "obama_3", checks=checks)
    assert without.adherence is None and without.answers == ()  # no critic: not measured, never made up
    summary = summarise([score, without])
    assert summary.adherence == pytest.approx(1 / 3)
    assert summary.composite == pytest.approx((1 / 3 + 1.0) / 2)  # a good sample earns its adherence (1 unmeasured)
    row = score.verifications("x", scorer.band, version, None)[1]
    assert row["name"] == "critic:low" and row["passed"] and row["params"]["model"] == critic.source
    # an evaluation prompt that is a training caption would measure recall, not generalisation: it is named
    assert scorer.in_training_captions({"same": "Photo of fw_obama", "new": "photo of fw_obama in a lab"}) == ["same"]


def kohya_flux_lora(path: Path, tiny_models: dict[str, Path]) -> Path:
    """A FLUX LoRA in kohya's layout (``lora_unet_<BFL module>.lora_down/lora_up/alpha``) as sd-scripts and
    ai-toolkit's ComfyUI export write it, for the tiny twin's widths: the double block's fused qkv of both streams,
    their output projections and the image MLP, and the single block's output. (diffusers' converter hard-codes
    FLUX.1's widths only for the single blocks' fused ``linear1``, which this file leaves out.)"""
    config = json.loads((tiny_models["flux"] / "transformer" / "config.json").read_text())
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    gen, rank = torch.Generator().manual_seed(0), 4
    shapes = {
        "double_blocks_0_img_attn_qkv": (inner, 3 * inner),
        "double_blocks_0_txt_attn_qkv": (inner, 3 * inner),
        "double_blocks_0_img_attn_proj": (inner, inner),
        "double_blocks_0_txt_attn_proj": (inner, inner),
        "double_blocks_0_img_mlp_0": (inner, 4 * inner),
        "single_blocks_0_linear2": (inner + 4 * inner, inner),
    }
    state = {}
    for name, (fan_in, fan_out) in shapes.items():
        state[f"lora_unet_{name}.lora_down.weight"] = torch.randn(rank, fan_in, generator=gen) * 0.5
        state[f"lora_unet_{name}.lora_up.weight"] = torch.randn(fan_out, rank, generator=gen) * 0.5
        state[f"lora_unet_{name}.alpha"] = torch.tensor(float(rank))
    save_file(state, path, metadata={"ss_network_module": "networks.lora_flux", "ss_network_dim": str(rank)})
    return path


@pytest.mark.tiny
def test_evaluate_a_kohya_lora_file_on_the_tiny_twin(
    cli, tiny_models, ws: Workspace, catalog: Catalog, faces: Path
) -> None:
    """``--lora FILE``: an external kohya-format FLUX LoRA loads through diffusers' own converter and generates the
    character's evaluation set (a library prompt and the character's own, with its seed); every sample is scored
    (the tiny twin paints noise: no face), the metrics are tied to the file's sha256, the page shows a grid per
    prompt, and the file's LoRA did change the pictures."""
    from flenwheel.models import runtime
    from flenwheel.models.generate import text_to_image

    frozen_obama(ws, catalog, faces)
    (ws.configs_dir / "characters" / "obama.yaml").write_text(
        "name: obama\ntrigger: fw_obama\nidentity:\n  backend: dlib\n"
        "evaluation:\n  seeds: [7]\n  prompts:\n"
        "    - {id: eval-lab, category: scene, prompt: 'photo of {trigger} in a lab coat in a laboratory',"
        " checks: [{id: lab-coat, question: 'Is the person wearing a lab coat?'}]}\n"
    )
    lora = kohya_flux_lora(ws.root.parent / "someone_else_trained.safetensors", tiny_models)
    library = ws.configs_dir / "prompts" / "evaluation.yaml"
    library.write_text(library.read_text().split("  - id: eval-chef")[0])  # the first prompt only: a short run
    result = cli("evaluate", "obama", "--lora", str(lora), "--profile", "cpu-tiny")
    assert result.exit_code == 0, result.stderr
    key = catalog.rows("SELECT DISTINCT split_part(scope_id, ':', 1) AS k FROM metrics WHERE scope = 'lora_eval'")
    assert [r["k"] for r in key] == [f"file-{hashlib.sha256(lora.read_bytes()).hexdigest()[:16]}"]
    key = key[0]["k"]
    out = ws.root / "evals" / f"lora-{key}"
    record = json.loads((out / "samples.json").read_text())
    jobs = {(s["prompt_id"], s["seed"]) for s in record["samples"]}
    assert jobs == {("eval-raincoat", 7), ("eval-lab", 7)}
    assert all(s["verdict"] == "no_face" and s["loras"][0]["ref"].startswith(str(lora)) for s in record["samples"])
    metrics = {
        (r["scope_id"], r["name"]): r["value"] for r in catalog.rows("SELECT * FROM metrics WHERE scope = 'lora_eval'")
    }
    assert metrics[(key, "n")] == 2 and metrics[(key, "no_face_rate")] == 1.0 and (key, "adherence") not in metrics
    assert metrics[(f"{key}:eval-lab", "n")] == 1
    page = ws.root / "reports" / "obama" / f"lora-eval-{key}" / "index.html"
    assert page.is_file() and {p.name for p in page.parent.glob("samples-*.png")} == {
        "samples-eval-raincoat.png",
        "samples-eval-lab.png",
    }
    assert (
        "eval-raincoat-seed7.png: no_face" in result.stdout and "summary against obama@v1: 2 sample(s)" in result.stdout
    )
    # the file's LoRA was applied: the base pipeline paints another image for the same job
    manager = runtime.model_manager(ws, "cpu-tiny")
    base = text_to_image(manager, [], record["samples"][0]["prompt"], None, record["samples"][0]["seed"])
    runtime.release_models()
    assert not np.array_equal(np.asarray(base.image), np.asarray(Image.open(out / record["samples"][0]["file"])))


def test_synthetic_copies_fail_check_copy_and_never_enter_the_next_version(
    ws: Workspace, catalog: Catalog, faces: Path
) -> None:
    """Generated images of a LoRA trained on obama@v1, real photos standing in: a mirrored training photo is a copy
    (failed check 'copy' at the gate, rejected by the policy, kept out of v2 even when a person approves it); another
    photo of the person and someone else are not."""
    version, _ = frozen_obama(ws, catalog, faces)
    weights = ws.root / "loras" / "x.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"stand-in")
    catalog.register_lora(
        lora_id="obama-v1-flux-x",
        character="obama",
        kind="flux",
        base_model_ref="tiny:flux",
        dataset_version=version,
        hyperparams={},
        steps=1,
        path="loras/x.safetensors",
        sha256="0" * 64,
        comfy_path=None,
        chosen_checkpoint=1,
        run_id=None,
    )
    stand_ins = [
        grid(load_rgb(faces / "obama" / "obama_1.jpg"))["mirror"],
        load_rgb(faces / "obama" / "obama_3.jpg"),
        load_rgb(faces / "kit_harington" / "kit_1.jpg"),
    ]
    outputs = [
        (
            Image.fromarray(rgb),
            DerivationRecord(
                "",
                None,
                "generate",
                prompt="photo of fw_obama",
                prompt_id="pose-portrait",
                seed=i,
                params={"lora_id": "obama-v1-flux-x"},
                job_key=f"k{i}",
            ),
        )
        for i, rgb in enumerate(stand_ins)
    ]
    copy_id, good_id, weak_id = store_outputs(ws, catalog, "obama", "generate", outputs, None)
    character = ws.character("obama")
    counts = check_synthetics(ws, catalog, character, "obama-v1-flux-x", [copy_id, good_id, weak_id], None)
    assert counts == {"copy": 1, "good": 1, "weak": 1}
    assert check_synthetics(ws, catalog, character, "obama-v1-flux-x", [copy_id, good_id, weak_id], None) == {}
    candidates = {c["image_id"]: c for c in gate.Gate(catalog, "obama", "synthetic").candidates()}
    assert list(candidates[copy_id]["failed_checks"]) == ["copy"] and not candidates[good_id]["failed_checks"]
    decision, why = gate.policy_decision(candidates[copy_id], 0.02)
    assert decision == "rejected" and "failed checks: copy" in why
    summary = catalog.sample_summary([copy_id, good_id, weak_id])
    assert summary["judged"] == 3 and summary["copy_rate"] == pytest.approx(1 / 3) and summary["adherence"] is None

    gate.Gate(catalog, "obama", "synthetic").decide([(i, "approved", None) for i in candidates], "cli", "t", None)
    members, selection = iteration.next_version_members(ws, catalog, character, version, "obama-v1-flux-x", 0.9, 6)
    assert selection.candidates == 3 and selection.copies == [copy_id]
    assert copy_id not in {m.image_id for m in members} and set(selection.added) == {good_id, weak_id}
