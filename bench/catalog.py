"""Catalog at scale: ancestry query, freezing a 10k-image version, idempotent bulk insert.

    .venv/bin/python bench/catalog.py [--images 1000000] [--depth 5] [--out /tmp/flenwheel-bench]

Builds a synthetic catalog through flenwheel's own schema: chains of one source photo and ``depth`` derived
images (edit/augment steps with full parameters), about ``--images`` images in all. Then it reports, on
the same file:
* the median time of ``Catalog.lineage()`` (ancestry and descendants) for random leaves, both the query on an
  open read-only connection and the full call that opens the file;
* the time to freeze a 10,000-image version (``Catalog.freeze_version``, members and manifest hash);
* rows/s of ``Catalog.add_images`` for new rows, and again for the same rows (idempotent no-op).
Targets on a 2-core machine: ancestry under 50 ms, freeze under 1 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import statistics
import time
from pathlib import Path

from flenwheel.catalog import Catalog, ImageRecord


def build(catalog: Catalog, n_images: int, depth: int) -> int:
    chains = n_images // (depth + 1)
    catalog.migrate()

    def fill(con) -> None:
        # One SQL statement per table: building the fixture is not what is measured.
        con.execute(
            f"""INSERT INTO images
                SELECT sha256(concat('img-', c, '-', d)), 'char' || (c % 50), CASE WHEN d = 0 THEN 'source'
                       WHEN d % 2 = 1 THEN 'edit' ELSE 'augment' END,
                       'objects/xx/' || sha256(concat('img-', c, '-', d)) || '.png', 1024, 1024, NULL,
                       sha256(concat('img-', c, '-0')), 'bench-run', now()
                FROM range({chains}) r(c), range({depth + 1}) q(d)"""
        )
        con.execute(
            f"""INSERT INTO derivations
                SELECT sha256(concat('img-', c, '-', d)), 0, sha256(concat('img-', c, '-', d - 1)),
                       sha256(concat('img-', c, '-0')), CASE WHEN d % 2 = 1 THEN 'edit' ELSE 'augment' END,
                       'Qwen/Qwen-Image-Edit-2509@main', '[]', 'rotate the camera 45 degrees', 'angle-left-45',
                       ' ', c * 10 + d, 8, 1.0, 0.9, '{{"size": 1024}}', '', 'bench-run', now()
                FROM range({chains}) r(c), range(1, {depth + 1}) q(d)"""
        )
        con.execute("INSERT INTO runs (run_id, flow, status) VALUES ('bench-run', 'bench', 'completed')")

    catalog.write(fill)
    return chains


def leaf_id(chain: int, depth: int) -> str:
    return hashlib.sha256(f"img-{chain}-{depth}".encode()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path("/tmp/flenwheel-bench-catalog"))
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    catalog = Catalog(args.out / "catalog.duckdb")

    t0 = time.perf_counter()
    chains = build(catalog, args.images, args.depth)
    n = catalog.rows("SELECT count(*) AS n FROM images")[0]["n"]
    print(f"built {n:,} images in {chains:,} chains of depth {args.depth} in {time.perf_counter() - t0:.1f} s")

    rng = random.Random(0)
    picks = [(rng.randrange(chains), rng.randrange(1, args.depth + 1)) for _ in range(args.queries)]
    full, query_only = [], []
    for c, d in picks:
        t = time.perf_counter()
        lin = catalog.lineage(leaf_id(c, d))
        full.append(time.perf_counter() - t)
        assert len(lin.ancestors) == d and len(lin.descendants) == args.depth - d
    with catalog.reader() as con:
        for c, d in picks:
            t = time.perf_counter()
            con.execute(Catalog._LINEAGE_SQL, {"img": leaf_id(c, d)}).fetchall()
            query_only.append(time.perf_counter() - t)
    print(
        f"ancestry+descendants query: median {statistics.median(query_only) * 1e3:.2f} ms "
        f"(p90 {sorted(query_only)[int(0.9 * len(query_only))] * 1e3:.2f} ms) on an open connection"
    )
    print(f"Catalog.lineage() incl. opening the file: median {statistics.median(full) * 1e3:.2f} ms")

    members = [r["image_id"] for r in catalog.rows("SELECT image_id FROM images WHERE origin <> 'source' LIMIT 10000")]
    t = time.perf_counter()
    captions = [(m, f"photo of fw_char{i % 50}, angle") for i, m in enumerate(members)]
    manifest = json.dumps({"members": captions}, sort_keys=True).encode()
    version, created = catalog.freeze_version("char0", captions, hashlib.sha256(manifest).hexdigest(), None, None)
    freeze_s = time.perf_counter() - t
    assert created and catalog.rows("SELECT n_images FROM dataset_versions")[0]["n_images"] == len(members)
    print(f"freeze {len(members):,}-image version {version}: {freeze_s:.3f} s")

    batch = [
        ImageRecord(hashlib.sha256(f"new-{i}".encode()).hexdigest(), "char0", "source", "objects/x.png", 512, 512)
        for i in range(100_000)
    ]
    for label in ("new rows", "same rows again (idempotent)"):
        t = time.perf_counter()
        for i in range(0, len(batch), 10_000):
            catalog.add_images(batch[i : i + 10_000], run_id=None)
        dt = time.perf_counter() - t
        print(f"add_images, {label}: {len(batch) / dt:,.0f} rows/s ({len(batch):,} rows in {dt:.2f} s)")
    assert catalog.rows("SELECT count(*) AS n FROM images")[0]["n"] == n + len(batch)


if __name__ == "__main__":
    main()
