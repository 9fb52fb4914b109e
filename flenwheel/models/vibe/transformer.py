"""VIBE's transformer: diffusers' Sana transformer taking the condition latents channel-wise, plus the meta tokens and
the edit head that turn Qwen3-VL's hidden states into Sana's caption embeddings (names as in the reference
checkpoint, so its ``transformer/`` state dict maps one to one).

``ModelMixin`` is imported here by name on purpose: diffusers decides how to load a component of a custom library by
looking up its loadable base classes among the library module's attributes, and this module is that library in
the ``model_index.json`` of every VIBE folder we save.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin, SanaTransformer2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn
from torch.nn import functional as F

__all__ = ["MetaConnector", "ModelMixin", "VibeSanaTransformer"]


class _GatedExpert(nn.Module):
    """The edit head's feed-forward: a SiLU-gated MLP (names as in the reference checkpoint)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.fc3 = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))


class _MetaAttentionBlock(nn.Module):
    """Pre-norm self-attention over the meta tokens, then the gated MLP; both residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.input_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.output_norm = nn.LayerNorm(dim)
        self.mlp = _GatedExpert(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.output_norm(x))


class MetaConnector(nn.Module):
    """The edit head: maps the VLM's hidden states at the meta tokens to Sana's caption channels.

    The learned meta-token embeddings are added to the hidden states again before the projection (the reference
    does so), which also gives the unconditional branch a signal: its hidden states are zeros.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, n_stacks: int, heads: int) -> None:
        super().__init__()
        self.input_proj = nn.Linear(input_dim, hidden_dim)
        self.attn_blocks = nn.Sequential(*[_MetaAttentionBlock(hidden_dim, heads) for _ in range(n_stacks)])
        self.output_proj = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, output_dim))

    def forward(self, hidden_states: torch.Tensor, meta_queries: torch.Tensor) -> torch.Tensor:
        return self.output_proj(self.attn_blocks(self.input_proj(hidden_states + meta_queries)))


class VibeSanaTransformer(SanaTransformer2DModel):
    """Sana's transformer taking the condition image's latents channel-wise, plus VIBE's meta tokens and edit head.

    ``in_channels`` is twice the VAE's latent channels (noisy latents, then the condition latents); the forward is
    diffusers' own. Only the reference's shipped ``channel_cat`` mode exists here: its ``seq_cat`` alternative
    would need a different forward and is refused rather than silently computed the wrong way.
    ``edit_head_hidden_dim`` and ``edit_head_heads`` are fixed in the reference (2048 and 16) and configurable
    here only so the tiny twin can be tiny; their defaults are the reference's.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 64,
        out_channels: int | None = 32,
        num_attention_heads: int = 70,
        attention_head_dim: int = 32,
        num_layers: int = 20,
        num_cross_attention_heads: int | None = 20,
        cross_attention_head_dim: int | None = 112,
        cross_attention_dim: int | None = 2240,
        caption_channels: int = 2304,
        mlp_ratio: float = 2.5,
        dropout: float = 0.0,
        attention_bias: bool = False,
        sample_size: int = 32,
        patch_size: int = 1,
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        interpolation_scale: int | None = None,
        guidance_embeds: bool = False,
        guidance_embeds_scale: float = 0.1,
        qk_norm: str | None = None,
        timestep_scale: float = 1.0,
        input_condition_type: str = "channel_cat",
        edit_head_input_dim: int = 2048,
        edit_head_stacks_num: int = 4,
        num_meta_queries: int = 224,
        meta_queries_dim: int = 2048,
        edit_head_hidden_dim: int = 2048,
        edit_head_heads: int = 16,
    ) -> None:
        if input_condition_type != "channel_cat":
            raise ValueError(
                f"input_condition_type {input_condition_type!r} is not implemented: VIBE's released model "
                "concatenates the condition latents channel-wise ('channel_cat')"
            )
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            num_layers=num_layers,
            num_cross_attention_heads=num_cross_attention_heads,
            cross_attention_head_dim=cross_attention_head_dim,
            cross_attention_dim=cross_attention_dim,
            caption_channels=caption_channels,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            attention_bias=attention_bias,
            sample_size=sample_size,
            patch_size=patch_size,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
            interpolation_scale=interpolation_scale,
            guidance_embeds=guidance_embeds,
            guidance_embeds_scale=guidance_embeds_scale,
            qk_norm=qk_norm,
            timestep_scale=timestep_scale,
        )
        self.meta_queries = nn.Parameter(torch.randn(num_meta_queries, meta_queries_dim) / meta_queries_dim**0.5)
        self.edit_head = MetaConnector(
            edit_head_input_dim, edit_head_hidden_dim, caption_channels, edit_head_stacks_num, edit_head_heads
        )

    @apply_forward_hook  # under model CPU offload, moves the transformer in as its forward would
    def edit_embeddings(self, meta_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption embeddings of the instruction and of the null instruction (zero hidden states), for CFG."""
        queries = self.meta_queries.to(meta_hidden_states)[None].expand(meta_hidden_states.shape[0], -1, -1)
        cond = self.edit_head(meta_hidden_states, queries)
        null = self.edit_head(torch.zeros_like(meta_hidden_states), queries)
        return cond, null
