"""Per-image overhead of the enrichment machinery (store, catalog, Prefect tasks) against calling the editor.

    .venv/bin/python bench/enrich_overhead.py [--images 510] [--size 256] [--batch-size 16]

A no-op editor (returns the source with a seed-dependent pixel changed, so every output is a new image)
runs the same ~500 jobs on ten crops of a real photo (scikit-image's astronaut), twice in one process:
* direct — ``editor.edit`` in a loop on images already in memory;
* flow — a Prefect flow that runs the jobs through flenwheel's ``edit-batch`` task in batches: parent images
  read from the store, outputs encoded and stored, images + derivations written to the catalog, one task run
  per batch. Identity scoring is left out (it is measured by bench/identity.py).
The difference divided by the number of images is the overhead per image. Target: under 20 ms.
A temporary Prefect server is started first and is not part of the timing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from prefect import flow

from flenwheel.catalog import Catalog
from flenwheel.cli.samples import sample_photos
from flenwheel.core.config import PromptEntry
from flenwheel.editing import EDITORS, EditJob, Editor, EditResult, pending_jobs
from flenwheel.models.runtime import batches
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace
from flenwheel.tasks.enrich import edit_batch


class NoopEditor(Editor):
    name = "noop"
    op = "augment"

    def fingerprint(self, prompt: PromptEntry) -> dict[str, Any]:
        return {"editor": "noop"}

    def supports(self, prompt: PromptEntry) -> bool:
        return True

    def edit(self, image: Image.Image, job: EditJob, face_box: Any) -> EditResult:
        out = image.copy()
        out.putpixel((job.seed % out.width, 0), (job.seed % 256, len(job.prompt.id), 7))
        return EditResult(out, self.op, "noop", job.prompt.prompt, job.prompt.id, job.seed)


EDITORS["noop"] = lambda ws, manager, catalog, character: NoopEditor()


@flow(name="bench-enrich-overhead")
def bench_flow(root: str, configs: str, jobs: list[tuple[str, str, int]], batch_size: int) -> int:
    made = 0
    for batch in batches(jobs, batch_size):
        made += len(edit_batch(root, configs, "bench", "noop", None, batch, "bench-run"))
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=510)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        configs = Path(tmp) / "configs"
        import shutil

        shutil.copytree(Path(__file__).resolve().parents[1] / "configs", configs)
        (configs / "characters" / "bench.yaml").write_text("name: bench\ntrigger: fw_bench\n")
        ws = Workspace(root=Path(tmp) / "data", configs=configs)
        catalog = Catalog(ws.catalog_path)
        prompts = list(ws.prompt_library().values())
        n_sources = 10
        seeds = list(range(max(1, round(args.images / (n_sources * len(prompts))))))
        paths = []
        photo = Image.open(sample_photos()["astronaut"][0]).convert("RGB")  # a real photo: PNG cost is realistic
        for i in range(n_sources):
            p = Path(tmp) / f"src{i}.png"
            crop = photo.crop((8 * i, 4 * i, 8 * i + 400, 4 * i + 400)).resize((args.size, args.size))
            crop.save(p)
            paths.append(p)
        ingest_paths(ws, catalog, "bench", paths, None)
        editor = NoopEditor()
        jobs = pending_jobs(catalog, "bench", editor, prompts, seeds)
        sources = {
            r["image_id"]: Image.open(ws.root / r["path"]).convert("RGB") for r in catalog.source_images("bench")
        }
        bench_flow(str(ws.root), str(ws.configs_dir), [], args.batch_size)  # warm-up: flow machinery loaded

        t = time.perf_counter()
        for job in jobs:
            editor.edit(sources[job.parent_id], job, None)
        direct = time.perf_counter() - t

        t = time.perf_counter()
        made = bench_flow(
            str(ws.root), str(ws.configs_dir), [(j.parent_id, j.prompt.id, j.seed) for j in jobs], args.batch_size
        )
        flowed = time.perf_counter() - t
        assert made == len(jobs) == catalog.rows("SELECT count(*) AS n FROM derivations")[0]["n"]

    n = len(jobs)
    print(f"{n} images of {args.size}x{args.size}, batches of {args.batch_size} jobs per task")
    print(f"editor called directly : {direct:7.2f} s  ({direct / n * 1e3:6.2f} ms/image)")
    print(f"through the flow       : {flowed:7.2f} s  ({flowed / n * 1e3:6.2f} ms/image)")
    per_image = (flowed - direct) / n * 1e3
    print(f"overhead per image     : {per_image:6.2f} ms  (target < 20 ms)")


if __name__ == "__main__":
    main()
