"""FLUX.1-dev's twin: a ``FluxPipeline`` of the real classes with random weights, tiny or of the published size."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from flenwheel.models.tokenizers import clip_tokenizer, t5_tokenizer

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

# Component configs: "real" are the published FLUX.1-dev configs (random weights of the real size, for the GPU
# bench and memory accounting), "tiny" run on a CPU.
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
    },
}  # fmt: skip


def make_flux(seed: int = 0, size: str = "tiny") -> FluxPipeline:
    """A FluxPipeline of the real classes with random weights (tiny, or ``size="real"``); under
    ``torch.device("meta")`` its shapes alone (memory accounting, the GPU bench)."""
    cfg = SIZES[size]
    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**cfg["flux_transformer"])
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**cfg["flux_vae"])
    torch.manual_seed(seed + 2)
    clip = CLIPTextModel(
        CLIPTextConfig(
            **{"vocab_size": len(clip_tok), **cfg["clip"]},
            max_position_embeddings=77,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
        )
    )
    torch.manual_seed(seed + 3)
    t5 = T5EncoderModel(
        T5Config(
            **{"vocab_size": len(t5_tok), **cfg["t5"]},
            pad_token_id=t5_tok.pad_token_id,
            eos_token_id=t5_tok.eos_token_id,
        )
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
    return pipe
