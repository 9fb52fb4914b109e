"""Running stages: each build and each measurement in a fresh process, rows appended as they are measured; and the
single-command check (``bench/gpu_check.sh``): the most important stages first, each within a slice of an
8-minute budget, the table rewritten after every stage so a run cut off at any point still reports."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.gpu.common import DEFAULT_DIR, REPO, STAGES
from bench.gpu.context import Ctx
from bench.gpu.meter import Meter, now
from bench.gpu.plan import estimate, sizes
from bench.gpu.table import load_rows, table

ENTRY = REPO / "bench" / "gpu_memory.py"
# The single-command check: what matters most first, with the seconds each may take of the 8-minute command (a
# stage that finishes early leaves its rest to the next).
CHECK: tuple[tuple[str, float], ...] = (
    ("qwen2511-infer", 190.0),  # the editor's peak and s/edit (2511 = the 2509 class; Lightning stack)
    ("klein-infer", 120.0),
    ("klein-train", 60.0),
    ("vibe-critic", 110.0),
)
# Left to the sequence (docs/benchmarks.md): qwen-infer's 2509 full stack and 40-step CFG edit (the same class and
# shapes as qwen2511-infer measures) and flux-train (FLUX.1's QLoRA, gpu-24gb only).
CHECK_BUDGET_S = 480.0


def measure(name: str, size: str, models: Path, work: Path, out: Path, steps: int) -> None:
    """Run one stage's measurements in this (fresh) process; a failure becomes a row that says so."""
    import torch

    from bench.gpu.stages import MEASURES
    from flenwheel.store.workspace import Workspace

    stage = STAGES[name]
    folders = {kind: models / size / kind for kind in stage.needs}
    ws = Workspace(root=work / "root", configs=REPO / "configs")
    real_profile = ws.profile(stage.profile)
    tiny = "cpu-tiny-open" if stage.profile.endswith("-open") else "cpu-tiny"
    profile = real_profile if size == "real" else ws.profile(tiny)
    for kind, folder in folders.items():
        key = profile.stage_for(kind)[0]
        staged = getattr(profile, key).model_copy(update={"model": str(folder), "loras": {}})
        profile = profile.model_copy(update={key: staged})
    folder = folders.get(stage.kind) if stage.kind else None
    ctx = Ctx(stage, size, folder, folders, work, steps, out, ws, profile, Meter())
    try:
        MEASURES[name](ctx)
    except Exception as e:
        kind = "out of GPU memory" if isinstance(e, torch.cuda.OutOfMemoryError) else type(e).__name__
        mem = ctx.meter.stop()
        message = (str(e).splitlines() or [""])[0][:200]
        ctx.emit(f"{name}-failed", f"{name} FAILED ({kind}): {message}", None, mem)
        raise


def child(args: list[str], timeout_s: float | None = None) -> int:
    """A fresh Python process for one build or measurement: its GPU memory is its own and is all freed at exit.
    Past ``timeout_s`` it is killed (exit 124); the rows it appended stay."""
    try:
        return subprocess.run([sys.executable, str(ENTRY), *args], check=False, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        return 124


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _failed_row(out: Path, name: str, size: str, what: str) -> None:
    with out.open("a") as f:
        f.write(json.dumps({"key": f"{name}-failed", "stage": name, "size": size, "what": what}) + "\n")


def _tidy(models: Path, size: str, later: Sequence[str], keep: bool) -> None:
    """Delete the built components no later stage loads (all of a pipeline once none does), unless ``keep``."""
    if keep:
        return
    wanted: dict[str, set[str]] = {}
    for name in later:
        for kind, parts in STAGES[name].needs.items():
            wanted.setdefault(kind, set()).update(parts)
    base = models / size
    for folder in sorted(base.iterdir()) if base.is_dir() else []:
        if folder.name not in wanted:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        for part in folder.iterdir():
            if (
                part.is_dir()
                and part.name in ("transformer", "vae", "text_encoder", "text_encoder_2")
                and (part.name not in wanted[folder.name])
            ):
                shutil.rmtree(part, ignore_errors=True)


def run_stages(
    names: Sequence[str],
    size: str,
    models: Path,
    out: Path,
    keep: bool,
    steps: int,
    deadlines: Sequence[float] | None = None,
    after_each: object = None,
) -> int:
    """Build what each stage loads, measure it, and delete what no later stage loads. ``deadlines`` (monotonic
    seconds, one per stage) stop a stage that runs over; ``after_each()`` runs after every stage."""
    from bench.gpu.build import built

    failures = 0
    for i, name in enumerate(names):
        stage = STAGES[name]
        work = models / "work" / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t0 = now()
        left = None if deadlines is None else deadlines[i] - time.monotonic()
        code, phase, rows_before = 0, "build", len(_lines(out))
        if left is not None and left < 5:
            code = 124
        for kind, parts in stage.needs.items():
            missing = [p for p in parts if not built(models / size / kind, p)]
            if missing and code == 0:
                timeout = None if deadlines is None else max(1.0, deadlines[i] - time.monotonic())
                code = child(["--build-parts", kind, *missing, "--size", size, "--models", str(models)], timeout)
        if code == 0:
            phase = "measurement"
            timeout = None if deadlines is None else max(1.0, deadlines[i] - time.monotonic())
            code = child(
                ["--measure", name, "--size", size, "--models", str(models), "--out", str(out), "--steps", str(steps)],
                timeout,
            )
        if code != 0:
            failures += 1
            if code == 124:
                _failed_row(
                    out,
                    name,
                    size,
                    f"{name} STOPPED at its time slice in the {phase} (the rows before it are what it measured)",
                )
            elif phase == "build" or not any(f'"{name}-failed"' in line for line in _lines(out)[rows_before:]):
                # a failed build, or a process that could not write its own row (killed by the OOM killer, say)
                what = f"{name} FAILED: the {phase} process exited with {code} (its log says why)"
                _failed_row(out, name, size, what)
        shutil.rmtree(work, ignore_errors=True)
        _tidy(models, size, names[i + 1 :], keep)
        print(f"stage {name}: {'ok' if code == 0 else f'FAILED ({code})'} in {now() - t0:.0f} s", flush=True)
        if callable(after_each):
            after_each()
    for empty in (models / "work", models / size):
        with contextlib.suppress(OSError):
            empty.rmdir()  # only if nothing was kept there
    return failures


def check_plan() -> str:
    """The check's stages in order, with disk, estimated minutes and slice, as a Markdown table."""
    sz = sizes()
    have: dict[str | None, set[str]] = {}
    lines = ["| # | stage | measures | disk GB | est. min | slice s |", "|---|---|---|---|---|---|"]
    total = 0.0
    for n, (name, slice_s) in enumerate(CHECK, 1):
        stage = STAGES[name]
        disk, minutes, how = estimate(name, have, sz)
        for kind, parts in stage.needs.items():
            have[kind] = have.get(kind, set()) | set(parts)
        total += minutes
        lines.append(f"| {n} | {name} | {stage.measures} | {disk:.1f} | {minutes:.1f} ({how}) | {slice_s:.0f} |")
    lines.append(
        f"\nEstimated {total:.1f} min in all; the command stops at {CHECK_BUDGET_S / 60:.0f} min whatever is "
        "left (a stage past its slice is stopped, its rows kept)."
    )
    return "\n".join(lines) + "\n"


def check(out_dir: Path, dry_run: bool, models: Path | None = None) -> int:
    """``bench/gpu_check.sh``: the check's stages within the budget, the table rewritten after every stage.

    ``dry_run``: the plan, then every stage's tiny version end to end on the CPU (no budget)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, md = out_dir / "check.jsonl", out_dir / "check.md"
    rows.unlink(missing_ok=True)
    print(check_plan(), flush=True)
    names = [name for name, _ in CHECK]

    def write_table() -> None:
        text = table(load_rows([rows])) if rows.exists() else "no rows yet\n"
        md.write_text(text)
        print(text, flush=True)

    if dry_run:
        scratch = Path(tempfile.mkdtemp(prefix="flenwheel-gpu-check-"))
        try:
            return run_stages(names, "tiny", scratch, rows, False, 2, after_each=write_table)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    start, deadlines, spent = time.monotonic(), [], 0.0
    for _, slice_s in CHECK:
        spent += slice_s
        deadlines.append(start + min(spent, CHECK_BUDGET_S))
    # a stage that ends early hands its rest on: each deadline is the sum of the slices so far
    return run_stages(names, "real", models or DEFAULT_DIR, rows, False, 3, deadlines, write_table)
