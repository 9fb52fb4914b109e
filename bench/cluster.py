"""Enrichment throughput in cluster mode against the local run, side by side in one run (docs/benchmarks.md,
docs/scale.md).

    .venv/bin/python -m bench.cluster [--seeds 2] [--batch-size 4] [--record-batches 40]

The same enrichment (the augment editor with every edit checked and identity-scored: the shared faces of obama x 4
prompts x N seeds) runs on a fresh data root three ways: in this process (local), on a loopback Dask cluster of one
worker, and of two workers (``dask scheduler`` / ``dask worker --resources GPU=1 --nthreads 1``, tests/cluster_lab.py).
Each way first runs a small warm-up enrichment on a throwaway root, so imports and the face model are loaded (a real
worker keeps its model; the local process keeps its own). Printed per way: seconds, images per second, the ratio to
local, the bytes sent to and back from the workers per image. Then the single writer's ceiling: computed batches
recorded into a fresh catalog by the flow's record step alone (record_edit_batch + identity rows), batches and images
per second.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace
from tests.cluster_lab import DaskLab
from tests.conftest import FACES, PROJECT

PROMPTS = ["angle-mirror", "light-golden-hour", "bg-blue", "angle-close-up"]
SOURCES = ["obama_1.jpg", "obama_2.jpg", "obama_3.jpg"]


class StatsCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.stats = None

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "cluster_stats"):
            self.stats = record.cluster_stats


def configs(base: Path) -> Path:
    """The project's configs plus the character obama (dlib identity), as the tests use them."""
    target = base / "configs"
    if not target.exists():
        shutil.copytree(PROJECT / "configs", target)
        character = "name: obama\ntrigger: fw_obama\nidentity:\n  backend: dlib\n"
        (target / "characters" / "obama.yaml").write_text(character)
    return target


def fresh(base: Path, name: str, sources: list[str]) -> Workspace:
    ws = Workspace(root=base / name, configs=configs(base))
    ingest_paths(ws, ws.catalog(), "obama", [FACES / "obama" / s for s in sources], None)
    return ws


def enrich(ws: Workspace, seeds: int, batch_size: int, cluster: str | None) -> tuple[float, int]:
    from flenwheel.flows.enrich import EnrichParams
    from flenwheel.flows.enrich import enrich as enrich_flow

    params = EnrichParams(
        character="obama", editor="augment", prompts=PROMPTS, seeds=seeds, review="auto", batch_size=batch_size,
        cluster=cluster or "local",
    )  # fmt: skip
    started = time.perf_counter()
    result = enrich_flow(params, root=str(ws.root), configs=str(ws.configs_dir))
    return time.perf_counter() - started, result.images


def record_ceiling(base: Path, batches: int) -> tuple[float, float, int]:
    """Batches/s and images/s of the record step alone: one computed batch recorded again and again under new seeds."""
    from flenwheel.editing import AugmentEditor, pending_jobs
    from flenwheel.editing.checks import checker_for
    from flenwheel.editing.jobs import compute_edit_batch, parent_images, record_edit_batch
    from flenwheel.identity import filter_images

    ws = fresh(base, "record", SOURCES[:1])
    catalog = ws.catalog()
    filter_images(ws, catalog, ws.character("obama"))
    library = ws.prompt_library()
    editor = AugmentEditor()
    checker = checker_for(ws, None, "dlib")
    computed = []
    for b in range(batches):  # distinct seeds: every batch holds new images
        jobs = pending_jobs(catalog, "obama", editor, [library[p] for p in PROMPTS], [b])
        computed.append(compute_edit_batch(editor, jobs, parent_images(ws, catalog, jobs), checker))
    started = time.perf_counter()
    images = sum(len(record_edit_batch(ws, catalog, "obama", batch, None)) for batch in computed)
    seconds = time.perf_counter() - started
    return batches / seconds, images / seconds, images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--record-batches", type=int, default=40)
    args = ap.parse_args()
    from flenwheel.flows.local_api import prefect_api

    catcher = StatsCatcher()
    logging.getLogger("flenwheel.tasks.cluster").addHandler(catcher)
    logging.getLogger("flenwheel.tasks.cluster").setLevel(logging.INFO)
    base = Path(tempfile.mkdtemp(prefix="flenwheel-bench-cluster-"))
    results = []
    with prefect_api(), DaskLab(base / "lab") as lab:
        for ways, workers in (("local", 0), ("1 worker", 1), ("2 workers", 2)):
            while len(lab.procs) - 1 < workers:
                lab.start_worker(f"gpu{len(lab.procs) - 1}")
            address = lab.address if workers else None
            if workers:
                lab.wait_for(workers)
            enrich(fresh(base, f"warm-{workers}", SOURCES[:1]), 1, args.batch_size, address)
            catcher.stats = None
            seconds, images = enrich(fresh(base, f"run-{workers}", SOURCES), args.seeds, args.batch_size, address)
            results.append((ways, seconds, images, catcher.stats))
    local_rate = results[0][2] / results[0][1]
    print(f"enrichment: augment + checks + identity, {len(SOURCES)} sources x {len(PROMPTS)} prompts x {args.seeds} "
          f"seeds, batch size {args.batch_size}, {os.cpu_count()} CPU cores")  # fmt: skip
    print("| run | seconds | images | images/s | vs local | sent per image | back per image | batches per worker |")
    print("|---|---|---|---|---|---|---|---|")
    for ways, seconds, images, stats in results:
        rate = images / seconds
        sent = f"{stats.bytes_in / images / 1024:.0f} KiB" if stats else "-"
        back = f"{stats.bytes_out / images / 1024:.0f} KiB" if stats else "-"
        split = ", ".join(f"{k}: {v}" for k, v in sorted(stats.batches.items())) if stats else "-"
        ratio = rate / local_rate
        print(f"| {ways} | {seconds:.1f} | {images} | {rate:.2f} | {ratio:.2f} | {sent} | {back} | {split} |")
    per_batch, per_image, n = record_ceiling(base, args.record_batches)
    print(f"record step alone (the flow's single writer): {per_batch:.1f} batches/s, {per_image:.0f} images/s "
          f"({n} images in {args.record_batches} batches of {len(PROMPTS)} jobs with their checks)")  # fmt: skip


if __name__ == "__main__":
    main()
