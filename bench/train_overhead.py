"""Training speed of flenwheel's LoRA trainer against a bare diffusers + peft loop, same tiny FLUX and data.

    .venv/bin/python bench/train_overhead.py [--steps 300]

Both arms train the same LoRA (rank, targets, learning rate from the cpu-tiny profile) on the same cached
latents and text embeddings of three 64-px photos, in one process, one after the other:
* bare — what a hand-written script does: load the transformer, ``add_adapter``, AdamW, and the flow-matching
  step of diffusers' FLUX example, nothing else;
* flenwheel — ``LoraTrainer.train``: the same step plus gradient clipping, seeded batch order, the progress
  callback and one checkpoint (sampling and identity scoring are switched off for the timed run: they are
  per-checkpoint work, reported separately).
Steps/s are measured between the first and the last step of each loop (model loading and caching excluded);
the arms alternate twice and the faster round of each counts (the first loop in a process warms allocators).
Target: flenwheel/bare >= 0.9.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from flenwheel.catalog import Catalog
from flenwheel.cli.samples import sample_photos
from flenwheel.core.config import TrainerSettings
from flenwheel.dataset import versions
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace
from flenwheel.training import FluxBackend, LoraTrainer, TrainJob
from flenwheel.training.data import version_examples


def bare_loop(backend: FluxBackend, settings: TrainerSettings, data: list, steps: int) -> float:
    """A hand-written diffusers + peft loop: steps/s between its first and last step."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from diffusers.training_utils import compute_density_for_timestep_sampling
    from peft import LoraConfig

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel.from_pretrained(str(backend.model.path), subfolder="transformer")
    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(
            r=settings.rank,
            lora_alpha=settings.rank,
            init_lora_weights="gaussian",
            target_modules=list(backend.settings.target_modules),
        )
    )
    params = [p for p in transformer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    _, scheduler = backend._vae_and_scheduler()
    vsf = backend.vae_scale_factor
    gen = torch.Generator().manual_seed(0)
    t0 = 0.0
    for step in range(steps):
        if step == 1:
            t0 = time.perf_counter()
        b = data[step % len(data)]
        x0 = b["latents"][None]
        n, c, h, w = x0.shape
        noise = torch.randn(x0.shape, generator=gen)
        u = compute_density_for_timestep_sampling("logit_normal", 1, 0.0, 1.0, generator=gen)
        idx = (u * 1000).long().clamp(max=999)
        sig = scheduler.sigmas[idx].view(1, 1, 1, 1)
        noisy = (1 - sig) * x0 + sig * noise
        pred = transformer(
            hidden_states=FluxPipeline._pack_latents(noisy, n, c, h, w),
            timestep=scheduler.timesteps[idx] / 1000,
            guidance=torch.full((1,), settings.guidance),
            pooled_projections=b["pooled"][None],
            encoder_hidden_states=b["prompt_embeds"][None],
            txt_ids=torch.zeros(b["prompt_embeds"].shape[0], 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, "cpu", torch.float32),
            return_dict=False,
        )[0]
        loss = torch.mean((FluxPipeline._unpack_latents(pred, h * vsf, w * vsf, vsf) - (noise - x0)) ** 2)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (steps - 1) / (time.perf_counter() - t0)


def ours_loop(ws: Workspace, catalog: Catalog, backend: FluxBackend, job: TrainJob, steps: int) -> float:
    """flenwheel's trainer on the same job: steps/s between its first and last step."""
    stamps: dict[int, float] = {}
    shutil.rmtree(ws.root / "loras", ignore_errors=True)  # train afresh, not "already trained"
    LoraTrainer(ws, catalog, backend).train(job, on_progress=lambda s, *_: stamps.setdefault(s, time.perf_counter()))
    catalog.write(lambda con: con.execute("DELETE FROM loras"))
    return (steps - 1) / (stamps[steps] - stamps[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        configs = Path(tmp) / "configs"
        shutil.copytree(Path(__file__).resolve().parents[1] / "configs", configs)
        ws = Workspace(root=Path(tmp) / "data", configs=configs)
        catalog = Catalog(ws.catalog_path)
        photos = [p for paths in sample_photos().values() for p in paths]
        ingest_paths(ws, catalog, "astronaut", photos[:1], None)
        version = versions.freeze(ws, catalog, ws.character("astronaut"), None).version_id
        profile = ws.profile("cpu-tiny")
        settings = profile.trainer.model_copy(
            update={"steps": args.steps, "checkpoint_every": args.steps, "sample_prompts": []}
        )
        backend = FluxBackend(ws, profile, settings, profile.generator.model)
        job = TrainJob(
            "astronaut", version, version_examples(ws, catalog, version), settings, "fw_astronaut", backend.model.ref
        )
        data = backend.cache(job.examples, ws.root / "cache" / "bench")

        rounds = [
            (bare_loop(backend, settings, data, args.steps), ours_loop(ws, catalog, backend, job, args.steps))
            for _ in range(2)
        ]

    bare, ours = max(r[0] for r in rounds), max(r[1] for r in rounds)
    print(f"{args.steps} steps, tiny FLUX, rank {settings.rank}, 64-px buckets, 2 threads")
    print(f"bare diffusers + peft loop : {bare:7.2f} steps/s")
    print(f"flenwheel LoraTrainer      : {ours:7.2f} steps/s")
    print(f"ratio flenwheel/bare       : {ours / bare:7.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
