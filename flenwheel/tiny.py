"""Tiny random-weight twins of the real pipelines, for tests and the offline demo.

No weights can be downloaded here, yet every code path (loading, LoRA, training, sampling) should run on the
very classes production uses. So this module builds ``FluxPipeline`` and ``QwenImageEditPlusPipeline`` from
the real diffusers/transformers classes with tiny configurations and random weights, and saves them with
``save_pretrained``: plain ``FluxPipeline.from_pretrained(dir)`` loads them like any hub snapshot.

Tokenizers are built in memory: byte-level BPE vocabularies holding all 256 byte symbols (CLIP and Qwen2
are byte-level, so any text, Chinese camera commands included, tokenizes) and a small unigram vocabulary
for T5 (unknown pieces map to ``<unk>``). Builds are deterministic for a seed, take a few seconds, and
produce noise images by design.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from tokenizers import AddedToken
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from flenwheel.store import clear_leftovers, temp_prefix

TINY_KINDS = ("flux", "qwen-image-edit", "vibe")

# Scheduler settings of the real models (FLUX.1-dev and Qwen-Image), so sampling code sees the real shapes.
FLUX_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
QWEN_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

QWEN_SPECIAL_TOKENS = (  # the same set as flenwheel.vibe_tiny's, which sits below this module and loads lazily
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, as byte-level BPE uses them."""
    return list(bytes_to_unicode().values())


# --------------------------------------------------------------------------- FLUX


def _clip_tokenizer():
    symbols = _byte_symbols()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
        vocab.setdefault(s + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer():
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces += [(c, -3.0) for c in chars] + [("▁" + c, -2.5) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


# Component configs of the two twins. "real" are the published FLUX.1-dev and Qwen-Image-Edit-2509 configs
# (random weights of the real size, for GPU memory benchmarks: bench/gpu_memory.py); "tiny" run on a CPU.
SIZES: dict[str, dict[str, dict]] = {
    "tiny": {
        "flux_transformer": dict(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
            guidance_embeds=True,
        ),
        "flux_vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1, norm_num_groups=4, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
            shift_factor=0.0609, scaling_factor=1.5035,
        ),
        "clip": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                     projection_dim=32),
        "t5": dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8),
        "qwen_transformer": dict(
            patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
            joint_attention_dim=16, axes_dims_rope=(8, 4, 4),
        ),
        "qwen_vae": dict(
            base_dim=24, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True],
            latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
        ),
        "qwen_vl_text": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, mrope_section=[1, 1, 2]),
        "qwen_vl_vision": dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16,
                               fullatt_block_indexes=[1]),
    },
    "real": {
        "flux_transformer": dict(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56),
            guidance_embeds=True,
        ),
        "flux_vae": dict(
            in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, norm_num_groups=32, sample_size=1024, use_quant_conv=False, use_post_quant_conv=False,
            shift_factor=0.1159, scaling_factor=0.3611,
        ),
        "clip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     projection_dim=768, vocab_size=49408),
        "t5": dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32,
                   feed_forward_proj="gated-gelu", vocab_size=32128),
        "qwen_transformer": dict(
            patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56),
        ),
        "qwen_vae": dict(),  # AutoencoderKLQwenImage's defaults are Qwen-Image's VAE
        "qwen_vl_text": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                             num_key_value_heads=4, mrope_section=[16, 24, 24], vocab_size=152064),
        "qwen_vl_vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                               fullatt_block_indexes=[7, 15, 23, 31]),
    },
}  # fmt: skip


def make_flux(seed: int = 0, size: str = "tiny") -> FluxPipeline:
    """A FluxPipeline of the real classes with random weights (tiny, or ``size="real"``); under
    ``torch.device("meta")`` its shapes alone (memory accounting, the GPU bench)."""
    cfg = SIZES[size]
    clip_tok, t5_tok = _clip_tokenizer(), _t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**cfg["flux_transformer"])
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**cfg["flux_vae"])
    torch.manual_seed(seed + 2)
    clip = CLIPTextModel(
        CLIPTextConfig(
            **{"vocab_size": len(clip_tok), **cfg["clip"]}, max_position_embeddings=77,
            bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id,
        )
    )  # fmt: skip
    torch.manual_seed(seed + 3)
    t5 = T5EncoderModel(
        T5Config(**{"vocab_size": len(t5_tok), **cfg["t5"]}, pad_token_id=t5_tok.pad_token_id,
                 eos_token_id=t5_tok.eos_token_id)
    )  # fmt: skip
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae, text_encoder=clip,
        tokenizer=clip_tok, text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer,
    )  # fmt: skip
    return pipe


# --------------------------------------------------------------------------- Qwen-Image-Edit-2509


def _qwen_tokenizer():
    vocab = {s: i for i, s in enumerate(_byte_symbols())}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[])
    tok.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS]}
    )
    return tok


def make_qwen_image_edit(seed: int = 0, size: str = "tiny") -> QwenImageEditPlusPipeline:
    """A QwenImageEditPlusPipeline (Qwen-Image-Edit-2509's class) with random weights (see :func:`make_flux`)."""
    cfg = SIZES[size]
    tok = _qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(**cfg["qwen_transformer"])
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLQwenImage(**cfg["qwen_vae"])
    torch.manual_seed(seed + 2)
    text = dict(cfg["qwen_vl_text"])
    mrope = text.pop("mrope_section")
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok), **text, "max_position_embeddings": 4096,
            "rope_scaling": {"type": "mrope", "mrope_section": mrope, "rope_type": "default"},
            "rope_theta": 1000000.0, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            **cfg["qwen_vl_vision"], "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "window_size": 112,
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(), tokenizer=tok, video_processor=Qwen2VLVideoProcessor()
    )
    pipe = QwenImageEditPlusPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER), vae=vae, text_encoder=text_encoder,
        tokenizer=tok, processor=processor, transformer=transformer,
    )  # fmt: skip
    return pipe


def make_vibe(seed: int = 0, size: str = "tiny") -> Any:
    """The VIBE editor's twin (flenwheel.vibe_tiny), imported when asked for: Qwen3-VL and Sana only then."""
    from flenwheel.vibe_tiny import make_vibe as make

    return make(seed, size)


MAKERS: dict[str, Callable[[int, str], Any]] = {
    "flux": make_flux, "qwen-image-edit": make_qwen_image_edit, "vibe": make_vibe,
}  # fmt: skip


def build_model(kind: str, out_dir: Path, seed: int = 0, size: str = "tiny") -> Path:
    """The random-weight pipeline of ``kind`` saved with ``save_pretrained`` to ``out_dir``."""
    MAKERS[kind](seed, size).save_pretrained(out_dir)
    return Path(out_dir)


def ensure_tiny_models(models_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Build the tiny pipelines that are missing under ``models_dir``; returns their folders."""
    return ensure_models(models_dir, "tiny", TINY_KINDS, seed)


def ensure_models(
    models_dir: Path, size: str = "tiny", kinds: tuple[str, ...] = TINY_KINDS, seed: int = 0
) -> dict[str, Path]:
    """Build the random-weight pipelines of ``size`` that are missing under ``models_dir``; returns their folders.

    Each is built in a temporary sibling folder and renamed into place, so a reader never sees half a model;
    when two processes race, the second rename fails and that copy is discarded. Real-size twins are built in
    bfloat16 (tens of GB: GPU benchmarks only).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}")
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for kind in kinds:
        target = models_dir / kind
        if not (target / "model_index.json").is_file():
            clear_leftovers(target)
            tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(kind), dir=models_dir))
            try:
                default_dtype = torch.get_default_dtype()
                torch.set_default_dtype(torch.bfloat16 if size == "real" else default_dtype)
                try:
                    build_model(kind, tmp, seed, size)
                finally:
                    torch.set_default_dtype(default_dtype)
                try:
                    os.rename(tmp, target)
                except OSError:
                    if not (target / "model_index.json").is_file():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        out[kind] = target
    return out
