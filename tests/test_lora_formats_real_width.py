"""The ComfyUI/kohya LoRA files, read back by diffusers' own converters on shallow twins of the real widths.

``flux_to_comfy``, ``flux2_to_comfy`` and ``qwen_to_comfy`` were only checked against the project's inverse
converter, which shares their assumptions. diffusers' kohya FLUX converter (``_convert_sd_scripts_to_ai_toolkit``)
hard-codes FLUX.1's widths (``linear1`` splits as [3072, 3072, 3072, 12288]), so it rejects the tiny twin's files;
the check has to run on FLUX.1's real hidden size, heads and MLP width. One double and one single block keep it to
~0.5 B parameters (2 GB in float32), which a CPU handles in seconds.

Each case trains nothing: a peft adapter with random A and B stands for a trained LoRA. It is written the way
``flenwheel.training.export`` writes it (``save_lora_weights`` with the adapter config as metadata, and the ComfyUI
file from the converter), and each file is loaded the way a user's diffusers does (``Pipeline.load_lora_weights``:
``lora_state_dict``, whose converter runs on the ComfyUI file, then ``load_lora_into_transformer``) into a fresh
copy of the base transformer. Both must give the output of the adapter they came from, carry the same LoRA modules
(a dropped key would otherwise only be logged) and the same per-module weight delta.

alpha is 8 for rank 4 (scale 2, not 1), so the alpha written into the ComfyUI file (n*alpha for a block-diagonal
fused LoRA) is checked too; a power of two keeps the rescaling diffusers applies on load exact in float.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from diffusers import (
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
    FluxPipeline,
    FluxTransformer2DModel,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from flenwheel.models.families import family
from flenwheel.models.flux.twin import SIZES as FLUX_SIZES
from flenwheel.models.flux2_klein.twin import SIZES as KLEIN_SIZES
from flenwheel.models.qwen_image_edit.twin import SIZES as QWEN_SIZES
from flenwheel.training.lora_formats import flux2_to_comfy, flux_to_comfy, qwen_to_comfy

pytestmark = pytest.mark.slow

RANK, ALPHA = 4, 8.0
B_STD = 0.02  # lora_B starts at zero; at 0.02 the LoRA moves the outputs by 19-36% (relative norm)
SEED = 0

# The project's default FLUX targets (diffusers' train_dreambooth_lora_flux), and the same plus the single
# block's MLP input and output, so that ``linear1`` is fully populated and ``linear2`` appears. The output is
# named with its block: a bare "proj_out" suffix also matches the transformer's final ``proj_out``, for which
# ``flux_to_comfy`` has no ComfyUI name (it raises TrainingError rather than drop it).
FLUX_DEFAULT = (
    "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
    "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)  # fmt: skip
FLUX_WITH_SINGLE_MLP = (*FLUX_DEFAULT, "proj_mlp", "single_transformer_blocks.0.proj_out")
QWEN_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
)  # fmt: skip

# Tolerances. Both loading paths hold the same float32 A and B blocks (the block-diagonal fused LoRA is split
# back exactly, its zero blocks are exact zeros), and the alpha/rank = 2 scale that diffusers folds into A on
# load is a power of two, so the two outputs agree to float32 summation order at most; in practice they are
# bitwise equal. RTOL is a few hundred float32 ulps (eps 1.2e-7) and ATOL is relative to the LoRA's own effect
# on the output, which is of order 1: a misplaced or dropped block changes the output by that effect.
RTOL = 1e-5
ATOL_OF_EFFECT = 1e-5
MIN_EFFECT = 0.05  # ||lora - base|| / ||base||: the LoRA was applied


# --------------------------------------------------------------------------- helpers


def real_width(kind: str, **depth: int) -> dict:
    """The published transformer config (the family twin's ``SIZES["real"]``) with fewer blocks."""
    sizes = FLUX_SIZES if kind.startswith("flux") else QWEN_SIZES
    return {**sizes["real"][kind], **depth}


def random_adapter(
    base: torch.nn.Module, targets: tuple[str, ...], forward: Callable[[torch.nn.Module], torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict, torch.Tensor]:
    """A LoRA with random A and B on a copy of ``base``: its state dict, its config, and the adapted output.

    The output of the model the LoRA was made on is the reference both files must reproduce.
    """
    model = copy.deepcopy(base)
    torch.manual_seed(SEED + 1)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=list(targets))
    model.add_adapter(config)
    gen = torch.Generator().manual_seed(SEED + 2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * B_STD)
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    out = forward(model)
    del model
    gc.collect()
    # The project's export writes exactly this config as the diffusers file's adapter metadata.
    meta = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(targets)).to_dict()
    return state, meta, out


def lora_modules(model: torch.nn.Module, adapter: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module name: (A, B, scale)} of every module that carries ``adapter`` after loading."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            a = module.lora_A[adapter].weight.detach().clone()
            b = module.lora_B[adapter].weight.detach().clone()
            out[name] = (a, b, float(module.scaling[adapter]))
    return out


def load_and_run(
    make_pipe: Callable[[torch.nn.Module], object],
    base: torch.nn.Module,
    path: Path,
    adapter: str,
    forward: Callable[[torch.nn.Module], torch.Tensor],
) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor, float]]]:
    """Load a LoRA file as a user would (``pipe.load_lora_weights``) into a fresh copy of ``base`` and run it."""
    model = copy.deepcopy(base)
    pipe = make_pipe(model)
    pipe.load_lora_weights(str(path), adapter_name=adapter)
    out = forward(model)
    modules = lora_modules(model, adapter)
    del pipe, model
    gc.collect()
    return out, modules


def assert_same_lora(
    from_diffusers: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
    from_comfy: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
    trained: set[str],
) -> None:
    """Both loads carry every trained module with the same weight delta; the ComfyUI one may add zero parts.

    A fused LoRA whose part had no adapter (``proj_mlp`` when only q, k, v were trained) comes back from the
    block-diagonal file as an all-zero LoRA on that part: harmless, but it must be exactly zero.
    """
    assert set(from_diffusers) == trained
    assert trained <= set(from_comfy), f"dropped by the ComfyUI round trip: {sorted(trained - set(from_comfy))}"
    for name, (a, b, scale) in from_comfy.items():
        delta = b @ a * scale
        if name not in trained:
            assert not delta.any(), f"{name}: nonzero LoRA on a module that was not trained"
            continue
        a_d, b_d, scale_d = from_diffusers[name]
        expected = b_d @ a_d * scale_d
        torch.testing.assert_close(delta, expected, rtol=RTOL, atol=RTOL * expected.abs().max().item(), msg=name)


def assert_same_output(base: torch.Tensor, reference: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
    """Every loaded file reproduces the adapter's output, which differs clearly from the base output."""
    effect = (reference - base).norm() / base.norm()
    assert effect > MIN_EFFECT, f"the LoRA barely changes the output ({effect:.2e})"
    atol = ATOL_OF_EFFECT * (reference - base).abs().max().item()
    for label, out in outputs.items():
        torch.testing.assert_close(out, reference, rtol=RTOL, atol=atol, msg=lambda m, label=label: f"{label}: {m}")


# --------------------------------------------------------------------------- FLUX


def flux_pipe(transformer: torch.nn.Module) -> FluxPipeline:
    """A FluxPipeline around the transformer alone: load_lora_weights only needs the transformer."""
    return FluxPipeline(
        scheduler=None,
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )


def flux_forward() -> Callable[[torch.nn.Module], torch.Tensor]:
    """The transformer on fixed random inputs: 4x4 packed latent tokens, 8 text tokens, guidance (FLUX.1-dev)."""
    gen = torch.Generator().manual_seed(SEED + 3)
    cfg = FLUX_SIZES["real"]["flux_transformer"]
    inputs = dict(
        hidden_states=torch.randn(1, 16, cfg["in_channels"], generator=gen),
        encoder_hidden_states=torch.randn(1, 8, cfg["joint_attention_dim"], generator=gen),
        pooled_projections=torch.randn(1, cfg["pooled_projection_dim"], generator=gen),
        timestep=torch.tensor([0.6]),
        guidance=torch.tensor([3.5]),
        img_ids=FluxPipeline._prepare_latent_image_ids(1, 4, 4, torch.device("cpu"), torch.float32),
        txt_ids=torch.zeros(8, 3),
    )

    def run(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model(**inputs, return_dict=False)[0]

    return run


@pytest.fixture(scope="class")
def flux_base() -> Iterator[FluxTransformer2DModel]:
    """FLUX.1's transformer at real width with one double and one single block (~0.5 B parameters, float32)."""
    torch.manual_seed(SEED)
    model = FluxTransformer2DModel(**real_width("flux_transformer", num_layers=1, num_single_layers=1)).eval()
    yield model
    del model
    gc.collect()


class TestFluxComfyFile:
    """The ComfyUI/kohya FLUX file, read by diffusers' kohya converter, is the diffusers file's LoRA."""

    @pytest.mark.parametrize(
        "targets",
        [FLUX_DEFAULT, pytest.param(FLUX_WITH_SINGLE_MLP, marks=pytest.mark.extended)],
        ids=["default", "with-single-mlp"],
    )
    def test_same_output_as_diffusers_file(
        self, flux_base: FluxTransformer2DModel, targets: tuple[str, ...], tmp_path: Path
    ) -> None:
        forward = flux_forward()
        base_out = forward(flux_base)
        state, meta, reference = random_adapter(flux_base, targets, forward)
        FluxPipeline.save_lora_weights(
            tmp_path / "diffusers", transformer_lora_layers=state, transformer_lora_adapter_metadata=meta
        )
        cfg = flux_base.config
        inner = cfg.num_attention_heads * cfg.attention_head_dim
        comfy = flux_to_comfy({f"transformer.{k}": v for k, v in state.items()}, ALPHA, inner, inner * 4)
        assert "lora_unet_single_blocks_0_linear1.lora_down.weight" in comfy  # the key bound to FLUX.1's widths
        assert ("lora_unet_single_blocks_0_linear2.lora_down.weight" in comfy) == ("proj_mlp" in targets)
        save_file(comfy, tmp_path / "comfy.safetensors")

        out_d, mods_d = load_and_run(flux_pipe, flux_base, tmp_path / "diffusers", "diffusers_file", forward)
        out_c, mods_c = load_and_run(flux_pipe, flux_base, tmp_path / "comfy.safetensors", "comfy_file", forward)

        trained = {k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight")}
        assert_same_lora(mods_d, mods_c, trained)
        if "proj_mlp" not in targets:  # the zero part of the fused linear1 comes back as an all-zero LoRA
            assert set(mods_c) - trained == {"single_transformer_blocks.0.proj_mlp"}
        else:
            assert set(mods_c) == trained
        assert_same_output(base_out, reference, {"diffusers file": out_d, "ComfyUI file": out_c})


def test_diffusers_rejects_tiny_twin_comfy_file(tmp_path: Path) -> None:
    """Why the check needs real widths: diffusers' kohya converter refuses a tiny twin's FLUX ComfyUI file.

    It splits ``linear1`` at FLUX.1's fixed [3072, 3072, 3072, 12288] and asserts the widths add up
    (diffusers/loaders/lora_conversion_utils.py, ``_convert_to_ai_toolkit_cat``), so the tiny twin's files can
    never be read by it: testing them against it needs the real-width twin above. Should diffusers ever take
    the widths from the model, this test fails, and the tiny twin could then serve for this check.
    """
    cfg = FLUX_SIZES["tiny"]["flux_transformer"]
    torch.manual_seed(SEED)
    model = FluxTransformer2DModel(**cfg)
    model.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=["attn.to_q"]))
    state = get_peft_model_state_dict(model)
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]  # 32; the MLP is 128 wide
    comfy = flux_to_comfy({f"transformer.{k}": v for k, v in state.items()}, ALPHA, inner, inner * 4)
    save_file(comfy, tmp_path / "tiny_comfy.safetensors")
    with pytest.raises(AssertionError):
        FluxPipeline.lora_state_dict(str(tmp_path / "tiny_comfy.safetensors"))


# --------------------------------------------------------------------------- Qwen-Image-Edit


def qwen_pipe(transformer: torch.nn.Module) -> QwenImageEditPlusPipeline:
    """A QwenImageEditPlusPipeline around the transformer alone: load_lora_weights only needs the transformer."""
    return QwenImageEditPlusPipeline(
        scheduler=None, vae=None, text_encoder=None, tokenizer=None, processor=None, transformer=transformer
    )


def qwen_forward() -> Callable[[torch.nn.Module], torch.Tensor]:
    """The transformer on an edit-shaped input, as the project's edit training calls it.

    4x4 target tokens followed by 3x5 condition tokens (``img_shapes`` lists both), and 7 text tokens of which
    the last 2 are padding (masked by ``encoder_hidden_states_mask``; diffusers > 0.38 takes no txt_seq_lens).
    """
    gen = torch.Generator().manual_seed(SEED + 3)
    cfg = QWEN_SIZES["real"]["qwen_transformer"]
    mask = torch.ones(1, 7, dtype=torch.long)
    mask[:, 5:] = 0
    inputs = dict(
        hidden_states=torch.randn(1, 16 + 15, cfg["in_channels"], generator=gen),
        encoder_hidden_states=torch.randn(1, 7, cfg["joint_attention_dim"], generator=gen),
        encoder_hidden_states_mask=mask,
        timestep=torch.tensor([0.6]),
        img_shapes=[[(1, 4, 4), (1, 3, 5)]],
    )

    def run(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model(**inputs, return_dict=False)[0]

    return run


@pytest.fixture(scope="class")
def qwen_base() -> Iterator[QwenImageTransformer2DModel]:
    """Qwen-Image's transformer at real width with one block (~0.4 B parameters, float32)."""
    torch.manual_seed(SEED)
    model = QwenImageTransformer2DModel(**real_width("qwen_transformer", num_layers=1)).eval()
    yield model
    del model
    gc.collect()


class TestQwenComfyFile:
    """The ComfyUI ``diffusion_model.`` Qwen-Image-Edit file, read by diffusers' Qwen converter."""

    def test_same_output_as_diffusers_file(self, qwen_base: QwenImageTransformer2DModel, tmp_path: Path) -> None:
        forward = qwen_forward()
        base_out = forward(qwen_base)
        state, meta, reference = random_adapter(qwen_base, QWEN_TARGETS, forward)
        QwenImageEditPlusPipeline.save_lora_weights(
            tmp_path / "diffusers", transformer_lora_layers=state, transformer_lora_adapter_metadata=meta
        )
        save_file(
            qwen_to_comfy({f"transformer.{k}": v for k, v in state.items()}, ALPHA), tmp_path / "comfy.safetensors"
        )

        out_d, mods_d = load_and_run(qwen_pipe, qwen_base, tmp_path / "diffusers", "diffusers_file", forward)
        out_c, mods_c = load_and_run(qwen_pipe, qwen_base, tmp_path / "comfy.safetensors", "comfy_file", forward)

        trained = {k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight")}
        assert_same_lora(mods_d, mods_c, trained)
        assert set(mods_c) == trained
        assert_same_output(base_out, reference, {"diffusers file": out_d, "ComfyUI file": out_c})


# --------------------------------------------------------------------------- FLUX.2 [klein]

# The family's default targets, and the same plus the single blocks' output projection named with its block (the
# bare suffix "attn.to_out" also names the double blocks' ModuleList, which peft cannot adapt).
KLEIN_DEFAULT = family("flux2-klein").lora_targets
KLEIN_WITH_SINGLE_OUT = (*KLEIN_DEFAULT, "single_transformer_blocks.0.attn.to_out")


def klein_pipe(transformer: torch.nn.Module) -> Flux2KleinPipeline:
    """A Flux2KleinPipeline around the transformer alone: load_lora_weights only needs the transformer."""
    return Flux2KleinPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=transformer)


def klein_forward() -> Callable[[torch.nn.Module], torch.Tensor]:
    """The transformer on fixed random inputs as the klein trainer calls it: 4x4 packed latent tokens with 4-d
    position ids, 8 text tokens of Qwen3's stacked width, no guidance embedding."""
    gen = torch.Generator().manual_seed(SEED + 3)
    cfg = KLEIN_SIZES["real"]["transformer"]
    latents = torch.randn(1, cfg["in_channels"], 4, 4, generator=gen)
    text = torch.randn(1, 8, cfg["joint_attention_dim"], generator=gen)
    inputs = dict(
        hidden_states=Flux2KleinPipeline._pack_latents(latents),
        encoder_hidden_states=text,
        timestep=torch.tensor([0.6]),
        img_ids=Flux2KleinPipeline._prepare_latent_ids(latents),
        txt_ids=Flux2KleinPipeline._prepare_text_ids(text),
        guidance=None,
    )

    def run(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model(**inputs, return_dict=False)[0]

    return run


@pytest.fixture(scope="class")
def klein_base() -> Iterator[Flux2Transformer2DModel]:
    """klein-4B's transformer at real width with one double and one single block (~0.3 B parameters, float32)."""
    torch.manual_seed(SEED)
    model = Flux2Transformer2DModel(**{**KLEIN_SIZES["real"]["transformer"], "num_layers": 1, "num_single_layers": 1})
    yield model.eval()
    del model
    gc.collect()


class TestFlux2ComfyFile:
    """The ComfyUI/kohya FLUX.2 file, read by diffusers' kohya FLUX.2 converter, is the diffusers file's LoRA."""

    @pytest.mark.parametrize(
        "targets",
        [KLEIN_DEFAULT, pytest.param(KLEIN_WITH_SINGLE_OUT, marks=pytest.mark.extended)],
        ids=["default", "with-single-out"],
    )
    def test_same_output_as_diffusers_file(
        self, klein_base: Flux2Transformer2DModel, targets: tuple[str, ...], tmp_path: Path
    ) -> None:
        forward = klein_forward()
        base_out = forward(klein_base)
        state, meta, reference = random_adapter(klein_base, targets, forward)
        Flux2KleinPipeline.save_lora_weights(
            tmp_path / "diffusers", transformer_lora_layers=state, transformer_lora_adapter_metadata=meta
        )
        cfg = klein_base.config
        comfy = flux2_to_comfy(
            {f"transformer.{k}": v for k, v in state.items()}, ALPHA, cfg.num_attention_heads * cfg.attention_head_dim
        )
        assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in comfy  # q, k, v fused block-diagonally
        assert ("lora_unet_single_blocks_0_linear2.lora_down.weight" in comfy) == (targets is KLEIN_WITH_SINGLE_OUT)
        save_file(comfy, tmp_path / "comfy.safetensors")

        out_d, mods_d = load_and_run(klein_pipe, klein_base, tmp_path / "diffusers", "diffusers_file", forward)
        out_c, mods_c = load_and_run(klein_pipe, klein_base, tmp_path / "comfy.safetensors", "comfy_file", forward)

        trained = {k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight")}
        assert_same_lora(mods_d, mods_c, trained)
        assert set(mods_c) == trained
        assert_same_output(base_out, reference, {"diffusers file": out_d, "ComfyUI file": out_c})
