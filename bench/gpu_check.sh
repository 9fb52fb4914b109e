#!/usr/bin/env bash
# The GPU check in one command of at most 8 minutes on one lent H100/H200 (64 GiB of disk, no network): real-size
# random-weight twins built on the machine, the most important figures first (Qwen-Image-Edit-2509 nf4 + Lightning
# at 1024², FLUX.1-dev QLoRA steps at 512 and 1024, VIBE at 1024² with the critic beside it), the table rewritten
# after every stage so a run cut off at any point still reports what it measured (docs/benchmarks.md).
#
#   bench/gpu_check.sh [--dry-run] [OUT_DIR]     # OUT_DIR: $OUT on the device machine, else build/gpu-check
#   --dry-run: on the CPU, the stages with their disk and time estimates, then each stage's tiny version end to end
set -euo pipefail
cd "$(dirname "$0")/.."
dry=()
if [[ "${1:-}" == "--dry-run" ]]; then dry=(--dry-run); shift; fi
out="${1:-${OUT:-build/gpu-check}}"
python="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec "$python" bench/gpu_memory.py --check "$out" "${dry[@]}"
