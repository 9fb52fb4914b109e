"""Peak GPU memory and seconds per step of every gpu-24gb stage, on real-size models with random weights
(the bench itself: :mod:`bench.gpu`, which says why random weights and one process per stage).

    python bench/gpu_memory.py --plan                        # per stage: what it builds, disk, time, the command
    python bench/gpu_memory.py --stage qwen-infer --keep     # one stage (CUDA); appends rows to --out
    python bench/gpu_memory.py --table build/gpu-bench/*.jsonl  # all rows, all columns, the derived criteria
    python bench/gpu_memory.py --smoke                       # every stage with the tiny twins on the CPU, the table
    python bench/gpu_memory.py --check OUT_DIR [--dry-run]   # the single 8-minute command (bench/gpu_check.sh)

docs/benchmarks.md holds the command sequence for a lent GPU and the figures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository root for `bench.gpu`

from bench.gpu.build import build_parts
from bench.gpu.common import DEFAULT_DIR, STAGES
from bench.gpu.plan import plan
from bench.gpu.run import check, measure, run_stages
from bench.gpu.table import load_rows, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", action="store_true", help="print each stage's builds, disk, time and command")
    parser.add_argument("--stage", nargs="+", choices=list(STAGES), help="stages to run, each in its own processes")
    parser.add_argument("--smoke", action="store_true", help="every stage with the tiny twins on the CPU, the table")
    parser.add_argument("--table", nargs="+", type=Path, metavar="JSONL", help="print the Markdown table of rows")
    parser.add_argument("--size", choices=["real", "tiny"], default="real")
    parser.add_argument("--models", type=Path, default=DEFAULT_DIR, help="where models and scratch files go")
    parser.add_argument("--out", type=Path, default=None, help="JSON-lines file the rows are appended to")
    parser.add_argument("--keep", action="store_true", help="keep the built models for a later stage")
    parser.add_argument("--steps", type=int, default=None, help="measured steps after one warm-up (3; tiny: 2)")
    parser.add_argument("--check", type=Path, metavar="OUT_DIR", help="the single-command GPU check (gpu_check.sh)")
    parser.add_argument("--dry-run", action="store_true", help="--check: the plan, then each stage's tiny version")
    parser.add_argument("--build-parts", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = args.steps or (3 if args.size == "real" else 2)
    if args.build_parts:
        kind, *parts = args.build_parts
        build_parts(kind, parts, args.size, args.models / args.size / kind)
    elif args.measure:
        measure(args.measure, args.size, args.models, args.models / "work" / args.measure, args.out, steps)
    elif args.check:
        sys.exit(1 if check(args.check, args.dry_run, args.models if args.models != DEFAULT_DIR else None) else 0)
    elif args.plan:
        print(plan(), end="")
    elif args.table:
        print(table(load_rows(args.table)), end="")
    elif args.smoke:
        models = Path(tempfile.mkdtemp(prefix="flenwheel-gpu-smoke-"))
        out = args.out or DEFAULT_DIR / "smoke.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        try:
            failures = run_stages(list(STAGES), "tiny", models, out, False, args.steps or 2)
        finally:
            shutil.rmtree(models, ignore_errors=True)
        print(table(load_rows([out])), end="")
        sys.exit(1 if failures else 0)
    elif args.stage:
        import torch

        if args.size == "real" and not torch.cuda.is_available():
            sys.exit("bench/gpu_memory.py measures GPU memory: --size real needs CUDA (--smoke runs the tiny twins)")
        out = args.out or DEFAULT_DIR / "results.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        sys.exit(1 if run_stages(args.stage, args.size, args.models, out, args.keep, steps) else 0)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
