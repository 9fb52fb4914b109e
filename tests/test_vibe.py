"""The vibe editor (VIBE: Sana + Qwen3-VL) on its tiny twin: loading, conditioning, guidance, sizes, job keys.

The twin is built once per module with the production builder and loaded from its saved folder. Until the
registry entries of docs/editing.md land in flenwheel.models, ``vibe_profile`` installs the same entries with
monkeypatch, so the production loader (``load_pipeline`` / ``ModelManager``) is what loads the folder.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flenwheel.catalog import Catalog
from flenwheel.core.config import Profile, StageSettings
from flenwheel.editing import EditError, EditJob, make_editor, pending_jobs, run_edit_batch
from flenwheel.editing.vibe import (
    ASPECT_BINS,
    EDIT_QUERY,
    KIND,
    VibeEditor,
    VibePipeline,
    VibeSampling,
    VibeSanaTransformer,
    bin_table,
    closest_size,
)
from flenwheel.models import families
from flenwheel.models.loading import ModelManager, load_pipeline
from flenwheel.models.twins import build_model
from flenwheel.models.vibe.twin import SANA_SCHEDULER
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace

PROMPT = "Relight with soft even studio lighting; keep the person unchanged."


def noise(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def vibe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model("vibe", tmp_path_factory.mktemp("vibe") / "vibe")


@pytest.fixture(scope="module")
def pipe(vibe_dir: Path) -> VibePipeline:
    p = VibePipeline.from_pretrained(vibe_dir, dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


def edit(pipe: VibePipeline, image: Image.Image, seed: int = 0, **kw: object) -> np.ndarray:
    kw = {"num_inference_steps": 2, **kw}
    out = pipe(image=image, prompt=PROMPT, generator=torch.Generator("cpu").manual_seed(seed), **kw)
    return np.asarray(out.images[0])


@pytest.fixture(scope="module")
def baseline(pipe: VibePipeline) -> np.ndarray:
    return edit(pipe, noise(0))


@pytest.fixture
def vibe_profile(ws: Workspace, vibe_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Profile:
    """cpu-tiny with a vibe stage loading the tiny twin's folder (the family registry knows ``vibe``)."""
    stage = StageSettings(model=str(vibe_dir), steps=2, true_cfg_scale=4.5)
    profile = ws.profile("cpu-tiny")
    assert families.family(KIND).serves == ("vibe_editor",)
    return profile.model_copy(update={"vibe_editor": stage})


# --------------------------------------------------------------------------- the twin and its loading


def test_twin_is_saved_with_the_production_classes_and_loads_back(vibe_dir: Path, pipe: VibePipeline) -> None:
    index = json.loads((vibe_dir / "model_index.json").read_text())
    assert index["transformer"] == [VibeSanaTransformer.__module__, "VibeSanaTransformer"]  # ours, by module path
    assert index["text_encoder"] == ["transformers", "Qwen3VLForConditionalGeneration"]
    assert index["tokenizer"] == ["transformers", "Qwen3VLProcessor"]
    assert index["vae"] == ["diffusers", "AutoencoderDC"]
    assert index["scheduler"] == ["diffusers", "DPMSolverMultistepScheduler"]
    assert isinstance(pipe.transformer, VibeSanaTransformer)
    assert pipe.transformer.config.in_channels == 2 * pipe.vae.config.latent_channels  # channel-concat condition
    assert pipe.vae_scale_factor == 32  # six DC-AE stages, as the real f32c32 autoencoder
    assert pipe.scheduler.config.flow_shift == SANA_SCHEDULER["flow_shift"]
    assert pipe.scheduler.config.prediction_type == "flow_prediction"


def test_production_loader_loads_the_twin(ws: Workspace, vibe_profile: Profile, vibe_dir: Path) -> None:
    stage = vibe_profile.vibe_editor
    loaded, resolved = load_pipeline(KIND, stage, vibe_profile, ws)
    assert isinstance(loaded, VibePipeline) and resolved.path == vibe_dir.resolve()
    assert resolved.ref.startswith(f"{vibe_dir.resolve()}@sha256:")


def test_reference_checkpoint_names_map_to_our_classes(vibe_dir: Path, pipe: VibePipeline, tmp_path: Path) -> None:
    """The reference checkpoint names its own transformer module; that name resolves to ours, for the load only."""
    folder = tmp_path / "reference-names"
    shutil.copytree(vibe_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(
        _class_name="VIBESanaEditingPipeline",
        transformer=["vibe.transformer.vibe_sana_editing", "VIBESanaEditingModel"],
    )
    (folder / "model_index.json").write_text(json.dumps(index))
    config = json.loads((folder / "transformer" / "config.json").read_text())
    (folder / "transformer" / "config.json").write_text(json.dumps({**config, "_class_name": "VIBESanaEditingModel"}))
    loaded = VibePipeline.from_pretrained(folder, dtype=torch.float32)
    assert isinstance(loaded.transformer, VibeSanaTransformer)
    assert "vibe.transformer.vibe_sana_editing" not in sys.modules
    ours, theirs = pipe.transformer.state_dict(), loaded.transformer.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_folder_saved_before_the_transformer_moved_still_loads(
    vibe_dir: Path, pipe: VibePipeline, tmp_path: Path
) -> None:
    """Twins and copies saved by an earlier flenwheel name the transformer's old module (``flenwheel.vibe_pipeline``);
    they load into the class where it lives now, and their memory is still counted."""
    from flenwheel.models.memory import meta_components

    folder = tmp_path / "saved-earlier"
    shutil.copytree(vibe_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(
        json.dumps({**index, "transformer": ["flenwheel.vibe_pipeline", "VibeSanaTransformer"]})
    )
    loaded = VibePipeline.from_pretrained(folder, dtype=torch.float32)
    assert isinstance(loaded.transformer, VibeSanaTransformer) and "flenwheel.vibe_pipeline" not in sys.modules
    assert set(meta_components(folder)) == {"text_encoder", "transformer", "vae"}


# --------------------------------------------------------------------------- conditioning and sampling


def test_vlm_path_is_qwen3vl_own_forward_plus_meta_tokens(pipe: VibePipeline) -> None:
    """Meta tokens appended after the prompt leave the prompt's states exactly what Qwen3-VL computes (image
    features scattered in, deepstack, M-RoPE positions), and add one state per meta token."""
    image = noise(3, (576, 416))
    hidden = pipe.vlm_hidden_states(image, "make it sunny")
    inputs = pipe.vlm_inputs(image, "make it sunny")
    own = pipe.text_encoder.model(**inputs, use_cache=False).last_hidden_state
    n = pipe.transformer.config.num_meta_queries
    assert hidden.shape[1] == own.shape[1] + n
    torch.testing.assert_close(hidden[:, : own.shape[1]], own)
    text = pipe.tokenizer.tokenizer.decode(inputs["input_ids"][0])
    assert EDIT_QUERY.format(instruction="make it sunny") in text and "<|vision_start|>" in text


def test_condition_image_changes_the_output(pipe: VibePipeline, baseline: np.ndarray) -> None:
    assert not np.array_equal(baseline, edit(pipe, noise(1)))


def test_same_seed_same_output_other_seed_other_output(pipe: VibePipeline, baseline: np.ndarray) -> None:
    assert np.array_equal(baseline, edit(pipe, noise(0)))
    assert not np.array_equal(baseline, edit(pipe, noise(0), seed=1))


def test_image_guidance_changes_the_output(pipe: VibePipeline, baseline: np.ndarray) -> None:
    assert not np.array_equal(baseline, edit(pipe, noise(0), image_guidance_scale=2.5))
    assert not np.array_equal(baseline, edit(pipe, noise(0), image_guidance_scale=0.5))  # two-branch CFG


def test_model_cpu_offload_gives_the_same_output(vibe_dir: Path, baseline: np.ndarray) -> None:
    """The VLM and the edit head are entered through their parts, not their forwards: the offload hooks must still
    move them in (here with the CPU as the execution device: the hooks run, the result must not change)."""
    offloaded = VibePipeline.from_pretrained(vibe_dir, dtype=torch.float32)
    offloaded.set_progress_bar_config(disable=True)
    offloaded.enable_model_cpu_offload(device="cpu")
    assert type(offloaded.text_encoder._hf_hook).__name__ == "CpuOffload"
    assert np.array_equal(baseline, edit(offloaded, noise(0)))


def test_binning_and_revert_resize_give_the_input_size(pipe: VibePipeline) -> None:
    image = noise(4, (150, 100))
    out = pipe(image=image, prompt=PROMPT, num_inference_steps=1, generator=torch.Generator("cpu").manual_seed(0))
    assert out.images[0].size == (150, 100) and out.input_size == (150, 100)
    width, height = out.canvas_size
    assert (height, width) == pipe.binned_size(100, 150) and width % 32 == 0 and height % 32 == 0
    assert abs(width / height - 1.5) < 0.05  # the closest aspect-ratio bin; the input is stretched to it
    assert out.content_box == (0, 0, width, height)  # no padding (tests/test_vibe_conditioning.py)

    kept = pipe(
        image=image,
        prompt=PROMPT,
        num_inference_steps=1,
        revert_resize=False,
        generator=torch.Generator("cpu").manual_seed(0),
    )
    assert kept.images[0].size == (width, height)  # the whole canvas, not resized back
    plain = pipe(
        image=image,
        prompt=PROMPT,
        num_inference_steps=1,
        resolution_binning=False,
        revert_resize=False,
        generator=torch.Generator("cpu").manual_seed(0),
    )
    assert plain.images[0].size == (128, 96)  # no binning: the VAE's multiple below the input


def test_bins_are_sanas_tables() -> None:
    assert all(len(t) == 40 for t in ASPECT_BINS.values())
    assert all(h % 32 == 0 and w % 32 == 0 for t in ASPECT_BINS.values() for h, w in t.values())
    assert ASPECT_BINS[512]["1.0"] == (512, 512) and ASPECT_BINS[1024]["1.0"] == (1024, 1024)
    assert [bin_table(h, w) for h, w in [(512, 512), (900, 900), (1024, 1024), (1600, 1600)]] == [512, 1024, 1024, 2048]
    # values the reference implementation gives for these inputs (height, width)
    assert closest_size(600, 800) == (416, 576)
    assert closest_size(1080, 1920) == (768, 1344)
    assert closest_size(3000, 4000) == (1664, 2304)


# --------------------------------------------------------------------------- the editor


def test_job_keys_differ_between_editors(ws: Workspace, catalog: Catalog, vibe_profile: Profile) -> None:
    qwen = make_editor("qwen", ws, ModelManager(ws, ws.profile("cpu-tiny")), catalog, ws.character("obama"))
    vibe = VibeEditor(ws, ModelManager(ws, vibe_profile), catalog)
    prompt = ws.prompt_library()["light-studio-soft"]
    job = EditJob("a" * 64, prompt, 0)
    assert vibe.fingerprint(prompt)["editor"] == "vibe" and qwen.fingerprint(prompt)["editor"] == "qwen"
    assert vibe.key(job) != qwen.key(job)
    stronger = VibeEditor(ws, ModelManager(ws, vibe_profile), catalog, sampling=VibeSampling(image_guidance_scale=2))
    assert stronger.key(job) != vibe.key(job)  # every sampling setting is part of the key
    assert not vibe.supports(ws.prompt_library()["angle-left-45"]) and vibe.supports(prompt)
    stage_name = "vibe_editor"
    with_loras = getattr(vibe_profile, stage_name).model_copy(update={"loras": {"default": [{"name": "x"}]}})
    with pytest.raises(EditError, match="applies none"):
        VibeEditor(ws, ModelManager(ws, vibe_profile.model_copy(update={stage_name: with_loras})), catalog)


def test_editor_records_every_parameter(ws: Workspace, vibe_profile: Profile, vibe_dir: Path, faces: Path) -> None:
    image = Image.open(faces / "obama" / "obama_small.jpg").convert("RGB")
    prompt = ws.prompt_library()["light-studio-soft"]
    with ModelManager(ws, vibe_profile) as manager:
        editor = VibeEditor(ws, manager)
        result = editor.edit(image, EditJob("p", prompt, 3), None)
        again = editor.edit(image, EditJob("p", prompt, 3), None)
    assert np.array_equal(np.asarray(result.image), np.asarray(again.image))
    assert result.image.size == image.size and result.op == "edit" and result.seed == 3
    assert result.model_ref.startswith(str(vibe_dir.resolve())) and result.steps == 2 and result.guidance == 4.5
    p = result.params
    assert (p["steps"], p["guidance_scale"], p["image_guidance_scale"]) == (2, 4.5, 1.2)
    assert p["resolution_binning"] is True and p["revert_resize"] is True
    assert p["input_size"] == [320, 240] == p["output_size"] and p["canvas_size"][0] % 32 == 0
    assert p["query"] == EDIT_QUERY and p["pipeline"] == "VibePipeline" and p["dtype"] == "float32"
    assert p["scheduler"]["lambda_min_clipped"] == "-inf"  # JSON has no infinity: the catalog column is JSON
    json.dumps(p, allow_nan=False)


def test_edit_batch_with_the_vibe_editor_is_recorded_once(
    ws: Workspace, catalog: Catalog, vibe_profile: Profile, faces: Path
) -> None:
    [source] = ingest_paths(ws, catalog, "obama", [faces / "obama" / "obama_small.jpg"], run_id=None)
    library = ws.prompt_library()
    prompts = [library["light-studio-soft"], library["angle-left-45"]]
    with ModelManager(ws, vibe_profile) as manager:
        editor = VibeEditor(ws, manager, catalog)
        jobs = pending_jobs(catalog, "obama", editor, prompts, [0])
        assert [j.prompt.id for j in jobs] == ["light-studio-soft"]  # angles stay with the qwen editor
        with catalog.run("test:vibe", {}) as run_id:
            made = run_edit_batch(ws, catalog, "obama", editor, jobs, run_id)
        assert len(made) == 1 and pending_jobs(catalog, "obama", editor, prompts, [0]) == []
    [row] = catalog.rows("SELECT * FROM derivations")
    params = json.loads(row["params"])
    assert row["parent_id"] == source.image_id and row["job_key"] == editor.key(jobs[0])
    assert params["editor"] == "vibe" and params["image_guidance_scale"] == 1.2 and params["revert_resize"] is True
