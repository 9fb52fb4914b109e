"""Peak GPU memory and seconds per step of every gpu-24gb stage, on real-size models with random weights.

No weights can be downloaded, so the real FLUX.1-dev and Qwen-Image-Edit-2509 architectures are built from
their published configs with random weights (``flenwheel.tiny.REAL``), saved like hub snapshots, and then
loaded and run through flenwheel's *production* code: ``models.load_pipeline`` with the profile's stage
settings (nf4 transformer and text encoder, model CPU offload, VAE tiling) for inference, and the trainers'
``prepare_model`` / ``train_step`` with the profile's recipe (nf4 base, 8-bit AdamW, gradient checkpointing)
for one LoRA step on cached-size inputs. Random weights give the real shapes, memory and compute; images are
noise. Each stage runs in its own process, so a stage's peak is its own.

    python bench/gpu_memory.py --stage all            # on a CUDA machine (about 60 GB of free disk)
    python bench/gpu_memory.py --size tiny --stage all  # the same code on the CPU with the tiny twins (smoke test)

Prints one Markdown table row per measurement; docs/benchmarks.md holds the figures and the command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

STAGES = ("flux-infer", "flux-train", "qwen-infer", "qwen-train")


def peak_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def workspace(models: Path, size: str, kind: str) -> tuple[Any, Any]:
    """A workspace whose profile points the stage at the random-weight folder of ``kind``."""
    from flenwheel.tiny import ensure_models
    from flenwheel.workspace import Workspace

    ws = Workspace(root=models / "root")
    folder = ensure_models(models / size, size, kinds=(kind,))[kind]
    profile = ws.profile("gpu-24gb" if size == "real" else "cpu-tiny")
    stage = "generator" if kind == "flux" else "editor"
    staged = getattr(profile, stage).model_copy(update={"model": str(folder), "loras": {}})
    return ws, profile.model_copy(update={stage: staged})


def infer(models: Path, size: str, kind: str, steps: int) -> list[dict[str, Any]]:
    """One 1024² image (the editor: a 1024² input too), as the profile loads and runs it."""
    from PIL import Image

    from flenwheel.models import load_pipeline

    ws, profile = workspace(models, size, kind)
    stage = profile.generator if kind == "flux" else profile.editor
    reset_peak()
    pipe, _ = load_pipeline(kind, stage, profile, ws)
    px = 1024 if size == "real" else 64
    times: list[float] = []

    def on_step(p: Any, i: int, t: Any, kw: dict) -> dict:
        sync()
        times.append(time.perf_counter())
        return kw

    kwargs: dict[str, Any] = {
        "num_inference_steps": steps + 1, "height": px, "width": px, "callback_on_step_end": on_step,
        "generator": torch.Generator("cpu").manual_seed(0),
    }  # fmt: skip
    if kind == "flux":
        pipe(prompt="photo of fw_person walking in a park", guidance_scale=3.5, **kwargs)
    else:
        source = Image.new("RGB", (px, px), (120, 110, 100))
        pipe(image=[source], prompt="Turn the camera to a close-up.", negative_prompt=" ",
             true_cfg_scale=stage.true_cfg_scale or 4.0, **kwargs)  # fmt: skip
    per_step = (times[-1] - times[0]) / (len(times) - 1)  # the first step (warm-up) excluded
    return [{"stage": f"{kind} inference", "px": px, "peak_gib": peak_gib(), "s_per_step": per_step,
             "settings": f"quantize={stage.quantize} offload={stage.offload} tiling={stage.vae_tiling}"}]  # fmt: skip


def train(models: Path, size: str, kind: str, resolutions: list[int], steps: int) -> list[dict[str, Any]]:
    """LoRA steps of the profile's recipe on inputs of cached size (latents and embeddings made up)."""
    from flenwheel.catalog import Catalog
    from flenwheel.training import FluxBackend, LoraTrainer, QwenEditBackend

    ws, profile = workspace(models, size, kind)
    settings = profile.trainer if kind == "flux" else profile.edit_trainer
    folder = str(profile.generator.model if kind == "flux" else profile.editor.model)
    rows = []
    for res in resolutions:
        reset_peak()
        backend_cls = FluxBackend if kind == "flux" else QwenEditBackend
        backend = backend_cls(ws, profile, settings, folder)
        trainer = LoraTrainer(ws, Catalog(ws.catalog_path), backend)
        transformer, params, _ = trainer.prepare_model(settings)
        optimizer = trainer._optimizer(params)
        h = w = res // 8
        g = torch.Generator().manual_seed(0)
        if kind == "flux":
            cfg = transformer.config
            item = {"latents": torch.randn(cfg.in_channels // 4, h, w, generator=g),
                    "prompt_embeds": torch.randn(settings.max_sequence_length, cfg.joint_attention_dim, generator=g),
                    "pooled": torch.randn(cfg.pooled_projection_dim, generator=g)}  # fmt: skip
        else:
            cfg = transformer.config
            channels = cfg.out_channels
            item = {"latents": torch.randn(channels, h, w, generator=g),
                    "control": torch.randn(channels, h, w, generator=g),  # the condition at the target's bucket
                    "prompt_embeds": torch.randn(320, cfg.joint_attention_dim, generator=g)}  # fmt: skip
        data = [item]
        times = []
        for step in range(steps + 1):
            trainer.train_step(transformer, params, optimizer, data, lambda _k: [0], g, step)
            sync()
            times.append(time.perf_counter())
        rows.append({"stage": f"{kind} LoRA training step", "px": res, "peak_gib": peak_gib(),
                     "s_per_step": (times[-1] - times[0]) / steps,
                     "settings": f"rank={settings.rank} qlora={settings.qlora} optimizer={settings.optimizer} "
                                 f"checkpointing={settings.gradient_checkpointing}"})  # fmt: skip
        del transformer, params, optimizer, trainer, backend
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def run_stage(stage: str, models: Path, size: str, steps: int) -> list[dict[str, Any]]:
    kind = "flux" if stage.startswith("flux") else "qwen-image-edit"
    if stage.endswith("infer"):
        return infer(models, size, kind, steps)
    return train(models, size, kind, [512, 1024] if size == "real" else [64, 128], steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    parser.add_argument("--size", choices=["real", "tiny"], default="real")
    parser.add_argument("--models", type=Path, default=None, help="where the random-weight models are built")
    parser.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up step)")
    parser.add_argument("--json", action="store_true", help="print the rows of one stage as JSON (internal)")
    args = parser.parse_args()
    if args.size == "real" and not torch.cuda.is_available():
        sys.exit("bench/gpu_memory.py measures GPU memory: it needs CUDA (use --size tiny for a CPU smoke test)")
    models = args.models or Path(tempfile.mkdtemp(prefix="flenwheel-gpu-bench-"))
    if args.stage != "all":
        rows = run_stage(args.stage, models, args.size, args.steps)
        print(json.dumps(rows) if args.json else rows)
        return
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"device: {device}; models under {models}")
    print("| stage | px | peak GiB | s/step | settings |\n|---|---|---|---|---|")
    try:
        for stage in STAGES:
            if stage == "qwen-infer" and args.size == "real":
                shutil.rmtree(models / "real" / "flux", ignore_errors=True)  # disk: one real model at a time
            cmd = [sys.executable, __file__, "--stage", stage, "--size", args.size, "--models", str(models),
                   "--steps", str(args.steps), "--json"]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            for r in json.loads(out):
                print(f"| {r['stage']} | {r['px']} | {r['peak_gib']:.2f} | {r['s_per_step']:.2f} | {r['settings']} |")
    finally:
        if args.models is None:
            shutil.rmtree(models, ignore_errors=True)


if __name__ == "__main__":
    main()
