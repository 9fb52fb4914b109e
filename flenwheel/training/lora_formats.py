"""LoRA file formats: diffusers/PEFT keys, and the ComfyUI/kohya names each base model's community uses.

* FLUX: ComfyUI and kohya load ``lora_unet_<BFL module>`` keys with ``lora_down``/``lora_up``/``alpha``. The
  reference FLUX weights fuse q, k, v (and, in single blocks, the MLP input) into one linear, so their LoRA is
  the block-diagonal union of the per-projection LoRAs (:func:`flux_to_comfy`, inverse :func:`comfy_to_flux`).
* Qwen-Image(-Edit): ComfyUI loads the diffusers module names under ``diffusion_model.`` (:func:`qwen_to_comfy`).
* FLUX.2 [klein]: the same ``lora_unet_<BFL module>`` names as FLUX.1 with FLUX.2's modules (:func:`flux2_to_comfy`):
  the double blocks' q, k, v fuse into ``img_attn_qkv``/``txt_attn_qkv``; the single blocks' input is already one
  fused linear in diffusers (``to_qkv_mlp_proj`` = ``linear1``).
"""

from __future__ import annotations

import re

import torch

from flenwheel.training.checkpoints import TrainingError


def lora_pairs(
    sd: dict[str, torch.Tensor], prefix: str = "transformer."
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (lora_A, lora_B)} from a diffusers-format state dict."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in sd.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")].removeprefix(prefix)
            out[module] = (a, sd[key.replace(".lora_A.", ".lora_B.")])
    return out


def fused_lora(
    parts: list[tuple[torch.Tensor, torch.Tensor] | None], out_dims: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LoRA for a fused linear (e.g. qkv) from per-part LoRAs: stacked downs, block-diagonal up.

    Missing parts get zero blocks, so the fused module computes exactly the sum of the parts.
    """
    rank = next(p[0].shape[0] for p in parts if p is not None)
    in_dim = next(p[0].shape[1] for p in parts if p is not None)
    downs, up = [], torch.zeros(sum(out_dims), rank * len(parts))
    row = 0
    for i, (part, dim) in enumerate(zip(parts, out_dims, strict=True)):
        a, b = part if part is not None else (torch.zeros(rank, in_dim), torch.zeros(dim, rank))
        downs.append(a.float())
        up[row : row + dim, i * rank : (i + 1) * rank] = b.float()
        row += dim
    return torch.cat(downs), up


FLUX_SINGLE = {"attn.to_q": 0, "attn.to_k": 1, "attn.to_v": 2, "proj_mlp": 3}
FLUX_DOUBLE_FUSED = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
FLUX_DOUBLE_PLAIN = {
    "attn.to_out.0": "img_attn_proj",
    "attn.to_add_out": "txt_attn_proj",
    "ff.net.0.proj": "img_mlp_0",
    "ff.net.2": "img_mlp_2",
    "ff_context.net.0.proj": "txt_mlp_0",
    "ff_context.net.2": "txt_mlp_2",
    "norm1.linear": "img_mod_lin",
    "norm1_context.linear": "txt_mod_lin",
}
FLUX_SINGLE_PLAIN = {"proj_out": "linear2", "norm.linear": "modulation_lin"}


def flux_to_comfy(sd: dict[str, torch.Tensor], alpha: float, inner_dim: int, mlp_dim: int) -> dict[str, torch.Tensor]:
    """diffusers FLUX LoRA -> ComfyUI/kohya ``lora_unet_<BFL module>`` keys (lora_down/lora_up/alpha).

    The reference FLUX weights fuse q, k, v (and, in single blocks, the MLP input) into one linear; their LoRA
    is the block-diagonal union of the per-projection LoRAs, with rank n*r and alpha n*alpha so that the scale
    alpha/rank is unchanged.
    """
    pairs = lora_pairs(sd)
    out: dict[str, torch.Tensor] = {}

    def put(name: str, down: torch.Tensor, up: torch.Tensor, a: float) -> None:
        out[f"lora_unet_{name}.lora_down.weight"] = down.contiguous()
        out[f"lora_unet_{name}.lora_up.weight"] = up.contiguous()
        out[f"lora_unet_{name}.alpha"] = torch.tensor(float(a))

    blocks = sorted({int(m.split(".")[1]) for m in pairs if m.startswith("transformer_blocks.")})
    for i in blocks:
        base = f"transformer_blocks.{i}."
        for fused, members in FLUX_DOUBLE_FUSED.items():
            parts = [pairs.get(base + m) for m in members]
            if any(parts):
                down, up = fused_lora(parts, [inner_dim] * 3)
                put(f"double_blocks_{i}_{fused}", down, up, alpha * 3)
        for module, name in FLUX_DOUBLE_PLAIN.items():
            if base + module in pairs:
                a, b = pairs[base + module]
                put(f"double_blocks_{i}_{name}", a.float(), b.float(), alpha)
    singles = sorted({int(m.split(".")[1]) for m in pairs if m.startswith("single_transformer_blocks.")})
    for i in singles:
        base = f"single_transformer_blocks.{i}."
        parts = [pairs.get(base + m) for m in FLUX_SINGLE]
        if any(parts):
            down, up = fused_lora(parts, [inner_dim] * 3 + [mlp_dim])
            put(f"single_blocks_{i}_linear1", down, up, alpha * 4)
        for module, name in FLUX_SINGLE_PLAIN.items():
            if base + module in pairs:
                a, b = pairs[base + module]
                put(f"single_blocks_{i}_{name}", a.float(), b.float(), alpha)
    unknown = [m for m in pairs if not m.startswith(("transformer_blocks.", "single_transformer_blocks."))]
    if unknown:
        raise TrainingError(f"no ComfyUI name for LoRA module(s) {', '.join(sorted(unknown)[:3])}")
    return out


def comfy_to_flux(sd: dict[str, torch.Tensor], inner_dim: int, mlp_dim: int) -> tuple[dict[str, torch.Tensor], float]:
    """The inverse of :func:`flux_to_comfy`: diffusers keys and the per-module alpha (zero blocks dropped)."""
    out: dict[str, torch.Tensor] = {}
    alphas: set[float] = set()
    names = {k[len("lora_unet_") : -len(".lora_down.weight")] for k in sd if k.endswith(".lora_down.weight")}
    for name in sorted(names):
        down = sd[f"lora_unet_{name}.lora_down.weight"]
        up = sd[f"lora_unet_{name}.lora_up.weight"]
        alpha = float(sd[f"lora_unet_{name}.alpha"])
        m = re.fullmatch(r"(double|single)_blocks_(\d+)_(.+)", name)
        if not m:
            raise TrainingError(f"unexpected ComfyUI LoRA key {name}")
        kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "double" and rest in FLUX_DOUBLE_FUSED:
            members, dims = [f"transformer_blocks.{i}.{x}" for x in FLUX_DOUBLE_FUSED[rest]], [inner_dim] * 3
        elif kind == "single" and rest == "linear1":
            members, dims = [f"single_transformer_blocks.{i}.{x}" for x in FLUX_SINGLE], [inner_dim] * 3 + [mlp_dim]
        else:
            table = FLUX_DOUBLE_PLAIN if kind == "double" else FLUX_SINGLE_PLAIN
            module = next(k for k, v in table.items() if v == rest)
            prefix = "transformer_blocks" if kind == "double" else "single_transformer_blocks"
            out[f"transformer.{prefix}.{i}.{module}.lora_A.weight"] = down
            out[f"transformer.{prefix}.{i}.{module}.lora_B.weight"] = up
            alphas.add(alpha)
            continue
        rank = down.shape[0] // len(members)
        alphas.add(alpha / len(members))
        row = 0
        for j, (member, dim) in enumerate(zip(members, dims, strict=True)):
            a = down[j * rank : (j + 1) * rank]
            b = up[row : row + dim, j * rank : (j + 1) * rank]
            row += dim
            if a.abs().sum() == 0 and b.abs().sum() == 0:
                continue  # a part that had no LoRA
            out[f"transformer.{member}.lora_A.weight"] = a.contiguous()
            out[f"transformer.{member}.lora_B.weight"] = b.contiguous()
    if len(alphas) > 1:
        raise TrainingError(f"ComfyUI LoRA has mixed alphas {sorted(alphas)}")
    return out, alphas.pop() if alphas else 1.0


def qwen_to_comfy(diffusers_sd: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """ComfyUI's Qwen-Image LoRA format: the diffusers module names under ``diffusion_model.``."""
    out: dict[str, torch.Tensor] = {}
    for module, (a, b) in lora_pairs(diffusers_sd).items():
        out[f"diffusion_model.{module}.lora_down.weight"] = a.contiguous()
        out[f"diffusion_model.{module}.lora_up.weight"] = b.contiguous()
        out[f"diffusion_model.{module}.alpha"] = torch.tensor(float(alpha))
    return out


FLUX2_DOUBLE_PLAIN = {
    "attn.to_out.0": "img_attn_proj",
    "attn.to_add_out": "txt_attn_proj",
    "ff.linear_in": "img_mlp_0",
    "ff.linear_out": "img_mlp_2",
    "ff_context.linear_in": "txt_mlp_0",
    "ff_context.linear_out": "txt_mlp_2",
}
FLUX2_SINGLE_PLAIN = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2"}


def flux2_to_comfy(sd: dict[str, torch.Tensor], alpha: float, inner_dim: int) -> dict[str, torch.Tensor]:
    """diffusers FLUX.2 LoRA -> ComfyUI/kohya ``lora_unet_<BFL module>`` keys (lora_down/lora_up/alpha).

    q, k, v of each double-block stream become one block-diagonal LoRA on the fused ``qkv`` (rank 3r, alpha 3a:
    alpha/rank unchanged), which diffusers' kohya FLUX.2 converter recognises as sparse and splits back exactly.
    """
    pairs = lora_pairs(sd)
    out: dict[str, torch.Tensor] = {}

    def put(name: str, down: torch.Tensor, up: torch.Tensor, a: float) -> None:
        out[f"lora_unet_{name}.lora_down.weight"] = down.contiguous()
        out[f"lora_unet_{name}.lora_up.weight"] = up.contiguous()
        out[f"lora_unet_{name}.alpha"] = torch.tensor(float(a))

    for i in sorted({int(m.split(".")[1]) for m in pairs if m.startswith("transformer_blocks.")}):
        base = f"transformer_blocks.{i}."
        for fused, members in FLUX_DOUBLE_FUSED.items():
            parts = [pairs.get(base + m) for m in members]
            if any(parts):
                down, up = fused_lora(parts, [inner_dim] * 3)
                put(f"double_blocks_{i}_{fused}", down, up, alpha * 3)
        for module, name in FLUX2_DOUBLE_PLAIN.items():
            if base + module in pairs:
                a, b = pairs[base + module]
                put(f"double_blocks_{i}_{name}", a.float(), b.float(), alpha)
    for i in sorted({int(m.split(".")[1]) for m in pairs if m.startswith("single_transformer_blocks.")}):
        base = f"single_transformer_blocks.{i}."
        for module, name in FLUX2_SINGLE_PLAIN.items():
            if base + module in pairs:
                a, b = pairs[base + module]
                put(f"single_blocks_{i}_{name}", a.float(), b.float(), alpha)
    known = (*FLUX2_DOUBLE_PLAIN, *(m for ms in FLUX_DOUBLE_FUSED.values() for m in ms))
    unknown = [
        m
        for m in pairs
        if not (
            (m.startswith("transformer_blocks.") and m.split(".", 2)[2] in known)
            or (m.startswith("single_transformer_blocks.") and m.split(".", 2)[2] in FLUX2_SINGLE_PLAIN)
        )
    ]
    if unknown:
        raise TrainingError(f"no ComfyUI name for LoRA module(s) {', '.join(sorted(unknown)[:3])}")
    return out
