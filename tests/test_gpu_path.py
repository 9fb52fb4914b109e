"""What the gpu-24gb path does differently from the tiny fp32 twins, checked on the CPU with the real classes.

Condition size of the edit trainer against the pipeline, bf16 attention under QLoRA (an nf4 base made with
bitsandbytes on the CPU), the LoRA target sets of the reference trainers, buckets that do not depend on the
cache, an atomic result record, and downloads limited to what the pipeline loads.
"""

from __future__ import annotations

import errno
import fnmatch
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from flenwheel.catalog import Catalog
from flenwheel.models.loading import ModelManager
from flenwheel.models.refs import hub_snapshot
from flenwheel.store.workspace import Workspace
from flenwheel.training import Example, FluxBackend, LoraTrainer, QwenEditBackend, TrainingError, bucket_size
from flenwheel.training.checkpoints import atomic_write_text
from flenwheel.training.export import finished_result
from tests.conftest import quantize_nf4_on_cpu

pytestmark = pytest.mark.tiny


def edit_backend(ws: Workspace, **settings: Any) -> QwenEditBackend:
    profile = ws.profile("cpu-tiny")
    trainer = profile.edit_trainer.model_copy(update={"sample_prompts": [], **settings})
    return QwenEditBackend(ws, profile, trainer, profile.editor.model)


def record_transformer_calls(transformer: torch.nn.Module) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append({"tokens": kwargs["hidden_states"].shape[1], "img_shapes": kwargs["img_shapes"]})

    transformer.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_edit_trainer_conditions_the_transformer_as_the_pipeline_does(ws: Workspace, faces: Path) -> None:
    """Same before-image: the trainer's condition has the token count and `img_shapes` the pipeline gives it."""
    before_path = faces / "obama" / "obama_1.jpg"
    before = Image.open(before_path).convert("RGB")
    after_path = ws.root / "after.png"
    before.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(after_path)

    width, height = bucket_size(before.width, before.height, 64)  # the target bucket the trainer will use
    with ModelManager(ws, ws.profile("cpu-tiny")) as manager:
        pipe = manager.get("qwen-image-edit").pipe
        used = record_transformer_calls(pipe.transformer)
        pipe(
            image=[before],
            prompt="Mirror the photo.",
            true_cfg_scale=1.0,
            height=height,
            width=width,
            num_inference_steps=1,
            generator=torch.Generator().manual_seed(0),
        )
    # the real profiles' condition size (cpu-tiny's own edit trainer conditions at its 64-px training size)
    backend = edit_backend(ws, control_area=ws.profile("gpu-24gb").edit_trainer.control_area)
    [item] = backend.cache([Example("pair", (before_path, after_path), "Mirror the photo.")], ws.root / "cache")
    transformer = backend.load_transformer()
    trained = record_transformer_calls(transformer)
    backend.loss(transformer, [item], torch.Generator().manual_seed(0))

    (pipe_target, pipe_condition), (train_target, train_condition) = (
        used[0]["img_shapes"][0],
        trained[0]["img_shapes"][0],
    )
    assert train_condition == pipe_condition  # ~1 MP: (1, 64, 64) latent patches for a square-ish photo
    assert train_target == pipe_target  # the same output size was asked of the pipeline
    condition_tokens = pipe_condition[1] * pipe_condition[2]
    assert used[0]["tokens"] - pipe_target[1] * pipe_target[2] == condition_tokens
    assert trained[0]["tokens"] - train_target[1] * train_target[2] == condition_tokens
    assert condition_tokens > 16 * pipe_target[1] * pipe_target[2]  # far more than a 64-px condition would give


def test_buckets_do_not_depend_on_what_is_already_cached(ws: Workspace, faces: Path) -> None:
    """A resumed or partly cached run puts every example in the same bucket as a fresh run."""
    photo = faces / "obama" / "obama_1.jpg"  # one photo: the bucket shape then shows only the chosen resolution
    examples = [Example(f"pair-{i}", (photo, photo), "Keep the person.") for i in range(4)]
    backend = edit_backend(ws, resolutions=[48, 80])
    fresh = backend.cache(examples, ws.root / "fresh")
    backend.cache([examples[1], examples[3]], ws.root / "partial")  # a run killed halfway through caching
    resumed = backend.cache(examples, ws.root / "partial")
    assert len({tuple(x["latents"].shape) for x in fresh}) == 2  # both buckets are in use
    assert [x["latents"].shape for x in resumed] == [x["latents"].shape for x in fresh]


def test_qlora_forward_attends_in_bf16_with_fp32_lora_weights(ws: Workspace, catalog: Catalog, monkeypatch) -> None:
    """The gpu profile's settings on an nf4 base (bitsandbytes on the CPU): attention inputs are bf16.

    peft's prepare_model_for_kbit_training, which the QLoRA path used to call, upcasts every non-4-bit weight
    (the RMSNorms) to fp32; diffusers' RMSNorm then returns fp32 and the joint attention runs in fp32.
    """
    from peft import prepare_model_for_kbit_training

    profile = ws.profile("cpu-tiny").model_copy(update={"dtype": "bfloat16"})
    settings = profile.edit_trainer.model_copy(update={"qlora": True, "sample_prompts": []})
    backend = QwenEditBackend(ws, profile, settings, profile.editor.model)
    seen: list[torch.dtype] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kw: Any) -> Any:
        seen.extend((query.dtype, key.dtype, value.dtype))
        return sdpa(query, key, value, *args, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)

    def step(upcast_like_kbit_prep: bool) -> list[torch.dtype]:
        from diffusers import QwenImageTransformer2DModel

        seen.clear()
        base = QwenImageTransformer2DModel.from_pretrained(
            str(backend.model.path), subfolder="transformer", dtype=torch.bfloat16
        )
        quantize_nf4_on_cpu(base, torch.bfloat16)  # what BitsAndBytesConfig(load_in_4bit, nf4) does on a GPU
        base = backend.prepare_base(base)
        if upcast_like_kbit_prep:
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        trainer = LoraTrainer(ws, catalog, backend)
        transformer, params, _ = trainer.add_lora(base, backend.settings)
        assert params and all(p.dtype == torch.float32 for p in params)  # fp32 master weights of the LoRA
        item = {"latents": torch.randn(4, 8, 8), "control": torch.randn(4, 16, 16), "prompt_embeds": torch.randn(5, 16)}
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        loss = trainer.train_step(transformer, params, optimizer, [item], lambda _k: [0], torch.Generator(), 0)
        assert loss == loss  # a number, and gradients reached the LoRA through the 4-bit base
        return list(seen)

    assert set(step(upcast_like_kbit_prep=False)) == {torch.bfloat16}
    assert torch.float32 in set(step(upcast_like_kbit_prep=True))  # what the old preparation did


def test_lora_targets_follow_the_reference_trainers(ws: Workspace, catalog: Catalog) -> None:
    """FLUX: diffusers' example set (attention and feed-forward); Qwen-Image-Edit: musubi-tuner's (every block
    Linear but the modulation). The profile can name its own set; the resolved set enters the run's identity."""
    profile = ws.profile("cpu-tiny")
    flux = FluxBackend(ws, profile, profile.trainer, profile.generator.model)
    transformer, _, _ = LoraTrainer(ws, catalog, flux).prepare_model(flux.settings)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in transformer.named_parameters() if ".lora_A." in n}
    assert "transformer_blocks.0.ff.net.0.proj" in adapted and "transformer_blocks.0.ff_context.net.2" in adapted
    assert "single_transformer_blocks.0.attn.to_q" in adapted and "transformer_blocks.0.attn.add_v_proj" in adapted
    assert not any("norm1.linear" in n for n in adapted)  # modulation stays frozen

    qwen = edit_backend(ws)
    transformer, _, _ = LoraTrainer(ws, catalog, qwen).prepare_model(qwen.settings)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in transformer.named_parameters() if ".lora_A." in n}
    block_linears = {
        n.removesuffix(".base_layer")
        for n, m in transformer.named_modules()
        if n.startswith("transformer_blocks.") and isinstance(m, torch.nn.Linear) and ".lora_" not in n
    }
    assert {n for n in block_linears if "_mod" not in n} == adapted
    assert any(".img_mlp." in n for n in adapted) and any(".txt_mlp." in n for n in adapted)

    own = profile.trainer.model_copy(update={"target_modules": ["to_q"]})
    assert FluxBackend(ws, profile, own, profile.generator.model).settings.target_modules == ["to_q"]
    assert flux.settings.target_modules and profile.trainer.target_modules is None
    # a bare "proj_out" also matches FLUX's final layer, which ComfyUI's FLUX format has no LoRA name for:
    # refused before the first step, not at the export after the whole run
    final = profile.trainer.model_copy(update={"target_modules": ["proj_out"]})
    backend = FluxBackend(ws, profile, final, profile.generator.model)
    with pytest.raises(TrainingError, match=r"target_modules \['proj_out'\]: no ComfyUI name .*proj_out"):
        LoraTrainer(ws, catalog, backend).prepare_model(backend.settings)


def test_result_record_is_written_atomically(tmp_path: Path, monkeypatch) -> None:
    """A full disk (or a kill) while writing result.json leaves no torn record for the next run to trip on."""
    record = tmp_path / "result.json"
    atomic_write_text(record, json.dumps({"old": True}))

    def full_disk(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", full_disk)
    with pytest.raises(OSError, match=r"(?i)no space left") as e:
        atomic_write_text(record, json.dumps({"new": "x" * 100_000}))
    assert str(record) in str(e.value)  # the one-line error names what could not be written
    assert json.loads(record.read_text()) == {"old": True}  # the old record, whole
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left behind
    monkeypatch.undo()
    run_dir = tmp_path / "lora"
    (run_dir).mkdir()
    (run_dir / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    assert finished_result("x", run_dir) is None  # weights without a record: the run is not finished


def test_hub_downloads_only_what_the_pipeline_loads(monkeypatch, tmp_path: Path) -> None:
    """FLUX.1-dev keeps a 24 GB single-file checkpoint (and the autoencoder's) beside its diffusers folders: the
    download takes diffusers' own pattern selection, which leaves them out."""
    import diffusers.pipelines.pipeline_utils as pu
    from huggingface_hub.utils import filter_repo_objects

    listing = [
        ".gitattributes",
        "LICENSE.md",
        "README.md",
        "ae.safetensors",
        "dev_grid.jpg",
        "flux1-dev.safetensors",
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder_2/config.json",
        "text_encoder_2/model-00001-of-00002.safetensors",
        "text_encoder_2/model-00002-of-00002.safetensors",
        "text_encoder_2/model.safetensors.index.json",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "tokenizer_2/special_tokens_map.json",
        "tokenizer_2/spiece.model",
        "tokenizer_2/tokenizer.json",
        "tokenizer_2/tokenizer_config.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00003.safetensors",
        "transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    index = tmp_path / "snapshot" / "model_index.json"
    index.parent.mkdir()
    index.write_text(
        json.dumps(
            {
                "_class_name": "FluxPipeline",
                "_diffusers_version": "0.30.0.dev0",
                "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "text_encoder_2": ["transformers", "T5EncoderModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "tokenizer_2": ["transformers", "T5TokenizerFast"],
                "transformer": ["diffusers", "FluxTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            }
        )
    )
    asked: dict[str, Any] = {}

    info = type("ModelInfo", (), {"siblings": [type("Sibling", (), {"rfilename": f})() for f in listing]})()

    def snapshot(repo_id: str, **kw: Any) -> str:
        if kw.get("local_files_only"):
            raise FileNotFoundError("not cached")
        asked.update(kw)
        return str(index.parent)

    # the network stands in for the hub (none is reachable here); diffusers' own selection logic runs as it is
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(pu, "model_info", lambda *a, **kw: info)
    monkeypatch.setattr(pu, "hf_hub_download", lambda *a, **kw: str(index))
    monkeypatch.setattr(pu, "snapshot_download", snapshot)
    monkeypatch.setattr(pu, "_resolve_revision", lambda *a, **kw: None, raising=False)
    assert hub_snapshot("black-forest-labs/FLUX.1-dev", "flux") == index.parent
    chosen = set(
        filter_repo_objects(listing, allow_patterns=asked["allow_patterns"], ignore_patterns=asked["ignore_patterns"])
    )
    assert "flux1-dev.safetensors" not in chosen and "ae.safetensors" not in chosen
    assert {f for f in listing if fnmatch.fnmatch(f, "transformer/*.safetensors")} <= chosen
    assert "vae/diffusion_pytorch_model.safetensors" in chosen and "model_index.json" in chosen
