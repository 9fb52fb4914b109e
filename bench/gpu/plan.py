"""The plan: what each stage builds, its disk and estimated minutes on a lent H200, and the device calls."""

from __future__ import annotations

from collections.abc import Sequence

from bench.gpu.build import lora_target, meta_pipeline
from bench.gpu.common import MODEL_PARTS, PIPELINES, PROMPT_TOKENS_QWEN, QUANTISED, STAGES

DISK_WRITE_GBS, DISK_READ_GBS, HOST_DEVICE_GBS = 0.5, 1.0, 10.0  # conservative: virtual disks, pageable copies
TFLOPS = 300.0  # effective for nf4 layers (dequantise + bf16 GEMM) and attention; a bare bf16 GEMM ran at 790
START_S = 25.0  # one Python process importing torch, diffusers, transformers and flenwheel
SEQUENCE = (
    ("flux-infer", "flux-train"),
    ("identity", "qwen-encode"),
    ("qwen-train", "qwen-sample"),
    ("qwen-infer", "qwen2511-infer", "vibe-infer", "vibe-critic"),
    ("klein-infer", "klein-train"),
)


def sizes() -> dict[tuple[str, str], tuple[float, float, int, int]]:
    """(kind, part) -> (GB on disk as built, GB in bf16, parameters, parameters in Linear layers)."""
    import torch

    out = {}
    for kind in PIPELINES:
        pipe = meta_pipeline(kind, "real")
        for part in MODEL_PARTS[kind]:
            m = getattr(pipe, part)
            n = sum(p.numel() for p in m.parameters())
            lin = sum(x.weight.numel() for x in m.modules() if isinstance(x, torch.nn.Linear))
            # nf4: half a byte per weight + one fp32 absmax per 64 (no double quantisation), the rest bf16
            disk = (lin * (0.5 + 4 / 64) + 2 * (n - lin)) if part == "transformer" and kind in QUANTISED else 2 * n
            out[kind, part] = (disk / 1e9, 2 * n / 1e9, n, lin)
    return out


def lora_gb(rank: int, targets: Sequence[str] | None) -> float:
    import torch

    total = 0
    for name, m in meta_pipeline("qwen-image-edit", "real").transformer.named_modules():
        if isinstance(m, torch.nn.Linear) and lora_target(name, targets):
            total += rank * (m.in_features + m.out_features)
    return 2 * total / 1e9


def estimate(name: str, have: dict[str | None, set[str]], sz: dict) -> tuple[float, float, str]:
    """Disk (GB) and minutes of one stage on a lent H200 when the parts in ``have`` (by kind) are already built."""
    from flenwheel.training import QwenEditBackend

    stage = STAGES[name]
    if stage.kind is None:
        return 0.25, (START_S * 2 + 30) / 60, "ONNX models ~0.2 GB, CPU scoring"
    kind = stage.kind
    disk, build, read = 0.02, 0.0, 0.0
    for k, parts in stage.needs.items():
        built = have.get(k, set())
        disk += sum(sz[k, p][0] for p in parts if p != "base")
        for p in parts:
            if p in built or p == "base":
                continue
            gb, bf16 = sz[k, p][:2]
            build += gb / DISK_WRITE_GBS + 5 + (2 * bf16 / HOST_DEVICE_GBS if p == "transformer" else 0)
        build += START_S if any(p not in built for p in parts) else 0
        read += sum(sz[k, p][0] for p in parts if p != "base" and (name != "qwen-encode" or p != "transformer"))
    vlm_bf16 = sz["qwen-image-edit", "text_encoder"][1]
    klein_te = sz["flux2-klein", "text_encoder"][1]
    quantise_at_load = {
        "flux-infer": sz["flux", "text_encoder_2"][1], "qwen-infer": vlm_bf16, "qwen2511-infer": vlm_bf16,
        "vibe-critic": vlm_bf16, "klein-infer": klein_te, "klein-train": sz["flux2-klein", "transformer"][1],
    }  # fmt: skip
    load = read / DISK_READ_GBS + quantise_at_load.get(name, 0.0) / HOST_DEVICE_GBS
    lin, layers = sz[kind, "transformer"][3], {"qwen-image-edit": 60, "flux": 57, "vibe": 20, "flux2-klein": 25}[kind]

    def passes(tokens: float, count: float) -> float:  # seconds of ``count`` transformer forwards
        return count * (2 * lin * tokens + 4 * layers * tokens**2 * 3072) / (TFLOPS * 1e12)

    flux_tokens = {r: (r / 16) ** 2 + 512 for r in (512, 768, 1024)}  # klein: the same, its 512 Qwen3 tokens
    qwen_tokens = {r: (r / 16) ** 2 + 4096 + PROMPT_TOKENS_QWEN for r in (512, 1024)}
    run = {
        "flux-infer": passes(flux_tokens[1024], 30) + 2 * 8,
        "flux-train": sum(passes(flux_tokens[r], 4 * 4) for r in (512, 768, 1024)) + passes(flux_tokens[768], 20) + 10,
        "qwen-encode": sz[kind, "text_encoder"][1] / DISK_READ_GBS + 6 * 3,  # a second load for the samples
        "qwen-infer": passes(qwen_tokens[1024], 1 + 4 + 2 * 5)  # warm-up, Lightning's 4, 5 CFG steps
        + 3 * 10
        + 20
        + (lora_gb(64, None) + 2 * lora_gb(16, QwenEditBackend.default_targets)) / DISK_WRITE_GBS,
        "qwen-train": sum(passes(qwen_tokens[r], 4 * 4) for r in (512, 1024)),
        "qwen2511-infer": passes(qwen_tokens[1024], 1 + 4) + 10 + lora_gb(64, None) / DISK_WRITE_GBS,
        "klein-infer": passes(flux_tokens[1024], 2 + 4) + 2 * 5,
        "klein-train": sum(passes(flux_tokens[r], 4 * 4) for r in (512, 768, 1024))
        + passes(flux_tokens[768], 2 * 28)  # the base model's CFG sample
        + 10,
        "qwen-sample": passes(qwen_tokens[512], 2 * 4 + 20) + 10,  # two training steps, then 20 sampling steps
        # DC-AE f32 latents, patch 1: (px/32)² tokens + 224 meta tokens; 3 guidance branches; Sana's attention is
        # linear, so the quadratic term overestimates: an upper bound
        "vibe-infer": sum(passes((r / 32) ** 2 + 224, 3 * 22) for r in (1024, 2048)) + 2 * 10,
        # one 1024² edit, then the critic's load (in ``load``) and a few one-pass checks of ~512 visual tokens
        "vibe-critic": passes((1024 / 32) ** 2 + 224, 3 * 7) + 10 + 5 * 1.0,
    }[name]
    if name == "qwen-infer":
        disk += lora_gb(64, None) + 2 * lora_gb(16, QwenEditBackend.default_targets)
    if name == "qwen2511-infer":
        disk += lora_gb(64, None) + lora_gb(16, QwenEditBackend.default_targets)
    total = START_S + build + load + run
    return disk, total / 60, f"start {START_S:.0f} s, build {build:.0f} s, load {load:.0f} s, run {run:.0f} s"


def plan() -> str:
    """Each stage's builds, disk, time and command, then the device calls that fill the table."""
    sz = sizes()
    lines = [
        "Each stage builds the components it loads (random weights; the transformers in nf4, the rest in bf16), "
        "measures in a fresh process, appends rows to --out and deletes what it built unless --keep.",
        f"Estimates for the lent H200: disk writes {DISK_WRITE_GBS} GB/s, reads {DISK_READ_GBS} GB/s, host<->GPU "
        f"{HOST_DEVICE_GBS} GB/s, {TFLOPS:g} TFLOP/s effective on transformer passes (2 x Linear params x tokens + "
        f"attention), {START_S:.0f} s per Python process.",
        "",
        "| stage | builds | disk GB | min alone | min in the sequence | measures | command alone |",
        "|---|---|---|---|---|---|---|",
    ]
    have: dict[str | None, set[str]] = {}
    calls = []
    for i, group in enumerate(SEQUENCE, 1):
        later = {k for g in SEQUENCE[i:] for n in g for k in STAGES[n].needs}
        minutes = 0.0
        for name in group:
            stage, kind = STAGES[name], STAGES[name].kind
            nf4 = kind in QUANTISED
            parts = (
                ", ".join(
                    "base"
                    if p == "base"
                    else f"{p} ({sz[kind, p][0]:.1f} GB {'nf4' if nf4 and p == 'transformer' else 'bf16'})"
                    for p in stage.parts
                )
                if kind
                else "2 ONNX files (0.2 GB)"
            )
            disk, alone, _ = estimate(name, {}, sz)
            _, seq, how = estimate(name, have, sz)
            for k, needed in stage.needs.items():
                have[k] = have.get(k, set()) | set(needed)
            minutes += seq
            cmd = f"python bench/gpu_memory.py --stage {name} --out $OUT/{name}.jsonl"
            lines.append(
                f"| {name} | {parts} | {disk:.1f} | {alone:.1f} | {seq:.1f} ({how}) | {stage.measures} | `{cmd}` |"
            )
        keep = any(k in later for n in group for k in STAGES[n].needs)
        have = {k: v for k, v in have.items() if keep and k in later}
        calls.append(
            (
                f"python bench/gpu_memory.py --stage {' '.join(group)}{' --keep' if keep else ''} "
                f"--out $OUT/rows-{i}.jsonl",
                minutes,
            )
        )
    lines += ["", "Device calls (each under 10 minutes; stages of one call share their models, --keep hands them on):"]
    lines += [f"{n}. `{cmd}`  ≈ {m:.1f} min" for n, (cmd, m) in enumerate(calls, 1)]
    lines.append(
        f"Total ≈ {sum(m for _, m in calls):.1f} min of commands, plus the machine's start and the carried "
        "wheels' install (docs/benchmarks.md)."
    )
    return "\n".join(lines) + "\n"
