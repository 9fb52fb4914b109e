"""FLUX.2 [klein]'s twin: a ``Flux2KleinPipeline`` of the real classes (``Flux2Transformer2DModel``,
``AutoencoderKLFlux2``, ``Qwen3ForCausalLM``) with random weights, tiny or of the published size."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
from transformers import Qwen3Config, Qwen3ForCausalLM

from flenwheel.models.tokenizers import qwen_tokenizer

# Qwen3's chat template as the pipeline uses it (user turn, generation prompt, thinking switched off by an empty
# think block); the real tokenizer ships its own.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
# FlowMatchEulerDiscreteScheduler as FLUX.2 ships it: the pipeline passes its own empirical mu per resolution.
KLEIN_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
TEXT_LAYERS = (9, 18, 27)  # the pipeline stacks these hidden states: joint_attention_dim = 3 x hidden_size

# "tiny" runs on a CPU (the text encoder keeps 28 layers, the smallest count the pipeline's layer 27 allows, at
# hidden size 8); "real" is the published klein-4B architecture (see family.py's notes: from ports, unconfirmed).
SIZES: dict[str, dict[str, dict]] = {
    "tiny": {
        "transformer": dict(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=24, timestep_guidance_channels=32, mlp_ratio=3.0,
            axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
        ),
        "vae": dict(
            block_out_channels=(8, 8, 16, 16), latent_channels=4, layers_per_block=1, norm_num_groups=4,
            sample_size=64,
        ),
        "text": dict(hidden_size=8, intermediate_size=16, num_hidden_layers=28, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=4),
    },
    "real": {
        "transformer": dict(
            patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256, mlp_ratio=3.0,
            axes_dims_rope=(32, 32, 32, 32), guidance_embeds=False,
        ),
        "vae": dict(),  # AutoencoderKLFlux2's defaults are FLUX.2's VAE (32 latent channels, 2x2 patches)
        "text": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    },
}  # fmt: skip


def make_flux2_klein(seed: int = 0, size: str = "tiny") -> Flux2KleinPipeline:
    """A Flux2KleinPipeline with random weights (see :func:`flenwheel.models.flux.twin.make_flux`)."""
    cfg = SIZES[size]
    tok = qwen_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(**cfg["transformer"])
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLFlux2(**cfg["vae"])
    torch.manual_seed(seed + 2)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            **{"vocab_size": len(tok), **cfg["text"]},
            max_position_embeddings=4096,
            rope_theta=1000000.0,
            bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        )
    )
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**KLEIN_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        transformer=transformer,
        is_distilled=False,
    )
