"""What the edit trainer's condition size costs on the CPU: caching and training steps at two ``control_area``s.

    .venv/bin/python bench/edit_control_area.py [--steps 6] [--areas 1048576,4096] [--faces ../shared/faces] [--full]

The cpu-tiny profile's Qwen-Image-Edit twin, the same triplets for every arm (three Obama photos, each with an
approved augment edit, 64-px buckets as cpu-tiny trains), the cpu-tiny edit_trainer settings with only
``control_area`` changed. Per arm, in one process:
* cache: encoding the triplets once (VL encoder given the condition, the condition's VAE latents at
  ``control_area``, the target's latents at its bucket), seconds per triplet;
* step: ``LoraTrainer.train_step`` on the cached data (the transformer sees the target's tokens and the
  condition's), seconds per step between the first and the last step (the first step warms allocators).
The arms run one after the other in the order given, then again in that order; the faster round of each counts.
``--full`` also times what ``flenwheel train-edit CHARACTER --profile cpu-tiny --steps N --ops augment`` runs:
``train_edit_lora`` end to end (caching, the steps, a checkpoint sample edit through the pipeline and its identity
score at every ``checkpoint_every``), once per arm and round (another seed per round, so nothing is reused).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from flenwheel import gate
from flenwheel.catalog import Catalog
from flenwheel.editing import AugmentEditor, EditJob, run_edit_batch
from flenwheel.identity import filter_images
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace
from flenwheel.training import Example, LoraTrainer, QwenEditBackend, approved_triplets, train_edit_lora

ROOT = Path(__file__).resolve().parents[1]


def triplets(ws: Workspace, catalog: Catalog, faces: Path) -> list[Example]:
    paths = [faces / "obama" / f"obama_{i}.jpg" for i in (1, 2, 3)]
    sources = [o.image_id for o in ingest_paths(ws, catalog, "obama", paths, None)]
    filter_images(ws, catalog, ws.character("obama"), image_ids=None, run_id=None)  # the reference set
    prompt = ws.prompt_library(ws.character("obama"))["bg-blue"]
    made = run_edit_batch(ws, catalog, "obama", AugmentEditor(), [EditJob(s, prompt, 0) for s in sources], None)
    gate.Gate(catalog, "obama", "enrich").decide([(i, "approved", None) for i in made], "cli", "bench", None)
    return [
        Example(f"t{i}", (ws.root / t.before_path, ws.root / t.after_path), t.instruction)
        for i, t in enumerate(approved_triplets(catalog, "obama", ("edit", "augment")))
    ]


def arm(ws: Workspace, catalog: Catalog, examples: list[Example], area: int, steps: int) -> dict[str, float]:
    profile = ws.profile("cpu-tiny")
    settings = profile.edit_trainer.model_copy(update={"control_area": area, "sample_prompts": []})
    backend = QwenEditBackend(ws, profile, settings, profile.editor.model)
    cache_dir = ws.root / "cache" / f"bench-{area}-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    data = backend.cache(examples, cache_dir)
    cache_s = (time.perf_counter() - t0) / len(examples)
    trainer = LoraTrainer(ws, None, backend)
    transformer, params, _ = trainer.prepare_model(settings)
    optimizer = trainer.optimizer(params)
    gen = torch.Generator().manual_seed(0)
    t1 = 0.0
    for step in range(steps + 1):
        if step == 1:
            t1 = time.perf_counter()
        trainer.train_step(transformer, params, optimizer, data, lambda k: [k % len(data)], gen, step)
    step_s = (time.perf_counter() - t1) / steps
    tokens = data[0]["control"].shape[1] * data[0]["control"].shape[2] // 4
    return {
        "cache_s": cache_s,
        "step_s": step_s,
        "control_tokens": tokens,
        "target_tokens": data[0]["latents"].shape[1] * data[0]["latents"].shape[2] // 4,
    }


def full(ws: Workspace, catalog: Catalog, area: int, steps: int, seed: int) -> float:
    """Seconds of a whole train_edit_lora run (what the train-edit command runs) at this control_area."""
    profile = ws.profile("cpu-tiny")
    settings = profile.edit_trainer.model_copy(update={"control_area": area, "seed": seed})
    t0 = time.perf_counter()
    train_edit_lora(
        ws,
        catalog,
        ws.character("obama"),
        profile.model_copy(update={"edit_trainer": settings}),
        None,
        steps=steps,
        ops=("augment",),
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--areas", default=f"{1024 * 1024},{64 * 64}")
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "faces")
    ap.add_argument("--full", action="store_true", help="also time whole train_edit_lora runs")
    args = ap.parse_args()
    areas = [int(a) for a in args.areas.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="flenwheel-bench-control-"))
    try:
        configs = tmp / "configs"
        shutil.copytree(ROOT / "configs", configs)
        (configs / "characters" / "obama.yaml").write_text(
            "name: obama\ntrigger: fw_obama\nidentity:\n  backend: dlib\n"
        )
        ws = Workspace(root=tmp / "data", configs=configs)
        catalog = Catalog(ws.catalog_path)
        examples = triplets(ws, catalog, args.faces)
        best: dict[int, dict[str, float]] = {}
        for _round in range(2):
            for area in areas:
                r = arm(ws, catalog, examples, area, args.steps)
                print(f"control_area {area}: {r}", flush=True)
                if area not in best or r["step_s"] < best[area]["step_s"]:
                    best[area] = {**r, "cache_s": min(r["cache_s"], best.get(area, r)["cache_s"])}
        print(f"\n{torch.get_num_threads()} torch threads, {args.steps} steps per arm, {len(examples)} triplets")
        print("| control_area | condition tokens | target tokens | cache s/triplet | train s/step |")
        print("|---|---|---|---|---|")
        for area in areas:
            b = best[area]
            print(f"| {area} | {b['control_tokens']} | {b['target_tokens']} | {b['cache_s']:.2f} | {b['step_s']:.3f} |")
        if args.full:
            runs: dict[int, list[float]] = {a: [] for a in areas}
            for seed in range(2):
                for area in areas:
                    runs[area].append(full(ws, catalog, area, args.steps, 100 + seed))
                    print(f"train_edit_lora control_area {area}: {runs[area][-1]:.1f} s", flush=True)
            print(f"\n| control_area | train_edit_lora, {args.steps} steps, s (best of 2) |\n|---|---|")
            for area in areas:
                print(f"| {area} | {min(runs[area]):.1f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
