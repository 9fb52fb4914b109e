"""Qwen-Image-Edit-2509's twin: a ``QwenImageEditPlusPipeline`` of the real classes with random weights, tiny or of
the published size (Qwen2.5-VL-7B text encoder included)."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from flenwheel.models.tokenizers import QWEN_SPECIAL_TOKENS, qwen_tokenizer

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

# Component configs: "real" are the published Qwen-Image-Edit-2509 configs, "tiny" run on a CPU.
SIZES: dict[str, dict[str, dict]] = {
    "tiny": {
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


def make_qwen_image_edit(seed: int = 0, size: str = "tiny") -> QwenImageEditPlusPipeline:
    """A QwenImageEditPlusPipeline (Qwen-Image-Edit-2509's class) with random weights (see :func:`make_flux`)."""
    cfg = SIZES[size]
    tok = qwen_tokenizer()
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
            "vocab_size": len(tok),
            **text,
            "max_position_embeddings": 4096,
            "rope_scaling": {"type": "mrope", "mrope_section": mrope, "rope_type": "default"},
            "rope_theta": 1000000.0,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            **cfg["qwen_vl_vision"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(), tokenizer=tok, video_processor=Qwen2VLVideoProcessor()
    )
    pipe = QwenImageEditPlusPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        processor=processor,
        transformer=transformer,
    )
    return pipe
