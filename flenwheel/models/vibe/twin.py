"""The tiny random-weight twin of the VIBE editor (:mod:`flenwheel.editing.vibe`), for CI and the offline demo.

Like :mod:`flenwheel.models.twins`, it builds the very classes production loads (Qwen3-VL from transformers, diffusers'
AutoencoderDC and DPM-Solver, our :class:`~flenwheel.editing.vibe.VibeSanaTransformer`) with tiny configurations
and random weights, and saves them with ``save_pretrained``: ``VibePipeline.from_pretrained(folder)`` (and so
``flenwheel.models.load_pipeline``) loads the folder like a hub snapshot. The processor is built in memory:
the shared byte-level Qwen tokenizer (:mod:`flenwheel.models.tokenizers`), Qwen3-VL's image/video processors, and a chat
template that renders an image + text user turn the way Qwen's template does (the real checkpoint ships its own).

``SIZES["real"]`` holds the real-size configurations for a future GPU memory bench (random weights of the real
shapes); each entry says where it comes from and what is unconfirmed.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderDC, DPMSolverMultistepScheduler
from transformers import (
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from flenwheel.models.tokenizers import QWEN_SPECIAL_TOKENS, qwen_tokenizer
from flenwheel.models.vibe.pipeline import VibePipeline, VibeSanaTransformer

# Sana-1.6B's published flow DPM-Solver config (scheduler/scheduler_config.json of Efficient-Large-Model/
# Sana_1600M_512px_diffusers and Sana_1600M_2Kpx_BF16_diffusers, identical). That VIBE ships the same is
# UNCONFIRMED: the reference pipeline only types the component as DPMSolverMultistepScheduler.
SANA_SCHEDULER: dict[str, Any] = {
    "algorithm_type": "dpmsolver++",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "dynamic_thresholding_ratio": 0.995,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lambda_min_clipped": float("-inf"),
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_type": "midpoint",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
    "use_lu_lambdas": False,
    "variance_type": None,
}

# Renders [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ...}]}] as Qwen's template
# does: <|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>text<|im_end|>\n
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_DC_AE_BLOCKS = ("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock", "EfficientViTBlock")

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    # Six DC-AE stages like the real f32 autoencoder, so the VAE factor (32) and hence the size binning are the
    # production ones; everything else is as small as the classes allow.
    "tiny": {
        "transformer": dict(
            in_channels=8, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
            num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
            sample_size=32, edit_head_input_dim=16, edit_head_stacks_num=1, num_meta_queries=8, meta_queries_dim=16,
            edit_head_hidden_dim=16, edit_head_heads=2,
        ),
        "vae": dict(
            in_channels=3, latent_channels=4, attention_head_dim=8, encoder_block_types=_DC_AE_BLOCKS,
            decoder_block_types=_DC_AE_BLOCKS, encoder_block_out_channels=(8, 8, 16, 16, 16, 16),
            decoder_block_out_channels=(8, 8, 16, 16, 16, 16), encoder_layers_per_block=(1, 1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1, 1), upsample_block_type="interpolate",
            downsample_block_type="Conv", scaling_factor=0.41407,
        ),
        "vlm_text": dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            head_dim=8, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [2, 1, 1],
                                         "mrope_interleaved": True},
        ),
        "vlm_vision": dict(
            depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0],
        ),
    },
    # Real shapes, for a GPU memory bench only (random weights).
    "real": {
        # Sana-1.6B (20 layers, 70x32 heads, 2304 caption channels): the transformer/config.json of
        # Efficient-Large-Model/Sana_1600M_*_diffusers; in_channels 64 = 2 x 32 is implied by the reference's
        # channel-concat check; the meta-token and edit-head sizes are the reference class's defaults (224 x 2048,
        # 4 blocks, width 2048, 16 heads). The VIBE checkpoint's own config.json is UNCONFIRMED (hub unreachable).
        "transformer": dict(
            in_channels=64, out_channels=32, num_attention_heads=70, attention_head_dim=32, num_layers=20,
            num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240,
            caption_channels=2304, mlp_ratio=2.5, sample_size=32, edit_head_input_dim=2048, edit_head_stacks_num=4,
            num_meta_queries=224, meta_queries_dim=2048, edit_head_hidden_dim=2048, edit_head_heads=16,
        ),
        # DC-AE f32c32 (mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers, as in Sana_600M_1024px_diffusers/vae):
        # confirmed for Sana; that VIBE ships this exact AE (rather than the 1.1 release) is UNCONFIRMED.
        "vae": dict(
            in_channels=3, latent_channels=32, attention_head_dim=32, encoder_block_types=_DC_AE_BLOCKS,
            decoder_block_types=_DC_AE_BLOCKS, encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
            decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024), encoder_layers_per_block=(2, 2, 2, 3, 3, 3),
            decoder_layers_per_block=(3, 3, 3, 3, 3, 3), upsample_block_type="interpolate",
            downsample_block_type="Conv", scaling_factor=0.41407,
        ),
        # Qwen3-VL-2B-Instruct: hidden 2048 matches the reference's edit_head_input_dim/meta_queries_dim; the rest
        # is from a secondary source (a config fixture quoting the hub config), not the hub file itself: UNCONFIRMED.
        "vlm_text": dict(
            hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
            num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                             "mrope_interleaved": True},
        ),
        "vlm_vision": dict(
            depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
            deepstack_visual_indexes=[5, 11, 17],
        ),
    },
}  # fmt: skip


def _processor() -> Qwen3VLProcessor:
    tok = qwen_tokenizer()
    images = Qwen2VLImageProcessor(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 64 * 64, "longest_edge": 1024 * 1024},
    )
    videos = Qwen3VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2)
    return Qwen3VLProcessor(image_processor=images, tokenizer=tok, video_processor=videos, chat_template=CHAT_TEMPLATE)


def make_vibe(seed: int = 0, size: str = "tiny") -> VibePipeline:
    """A VibePipeline of the production classes with random weights (tiny, or ``size="real"``); deterministic for a
    seed; under ``torch.device("meta")`` its shapes alone."""
    cfg = SIZES[size]
    processor = _processor()
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text = dict(cfg["vlm_text"])
    tie = text.pop("tie_word_embeddings", False)
    vocab = text.pop("vocab_size", len(tok))
    torch.manual_seed(seed)
    transformer = VibeSanaTransformer(**cfg["transformer"])
    torch.manual_seed(seed + 1)
    vae = AutoencoderDC(**cfg["vae"])
    torch.manual_seed(seed + 2)
    config = Qwen3VLConfig(
        text_config={
            **text,
            "vocab_size": vocab,
            "max_position_embeddings": 4096,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config=dict(cfg["vlm_vision"]),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie,
    )
    text_encoder = Qwen3VLForConditionalGeneration(config)
    with torch.device("cpu"):  # its sigma tables need data even when the models are built on the meta device (bench)
        scheduler = DPMSolverMultistepScheduler(**SANA_SCHEDULER)
    pipe = VibePipeline(
        tokenizer=processor,
        text_encoder=text_encoder.eval(),
        vae=vae.eval(),
        transformer=transformer.eval(),
        scheduler=scheduler,
    )
    return pipe
