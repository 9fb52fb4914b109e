"""The Markdown table of measured rows and the seed's criteria derived from it, each with a verdict."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.gpu.common import CARD_GIB, EDITOR_LIMIT_GIB, REPO, STAGES


def load_rows(files: Sequence[Path]) -> list[dict[str, Any]]:
    """Rows of the given JSON-lines files; a key measured again replaces the earlier row."""
    rows: dict[str, dict[str, Any]] = {}
    for f in files:
        for line in Path(f).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows.pop(row["key"], None)
                if not row["key"].endswith("-failed"):
                    rows.pop(f"{row['stage']}-failed", None)
                rows[row["key"]] = row
    order = list(STAGES)
    return sorted(rows.values(), key=lambda r: order.index(r["stage"]) if r["stage"] in order else len(order))


def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def largest(row: dict[str, Any]) -> float | None:
    values = [row.get(k) for k in ("alloc_gib", "reserved_gib", "used_gib")]
    return max((v for v in values if v is not None), default=None)


def fits(gib: float, budget: float) -> str:
    """Within the profile's peak budget; over it but inside a 24 GB card; or beyond the card."""
    return "ok" if gib <= budget else "over budget" if gib <= CARD_GIB else "over 24 GB"


def table(rows: list[dict[str, Any]]) -> str:
    """The whole Markdown table, then the seed's criteria derived from it, with a verdict each."""
    from flenwheel.store.workspace import Workspace

    if not rows:
        return "no rows\n"
    first = next((r for r in rows if "versions" in r), rows[0])
    cpu = not any(r.get("gpu") for r in rows)
    budget = 22.0
    profile_name = first.get("profile") or ("cpu-tiny" if cpu else "gpu-24gb")
    ws = Workspace(root=tempfile.gettempdir(), configs=REPO / "configs")
    gpu24, profile = ws.profile("gpu-24gb"), ws.profile(profile_name)
    budget = gpu24.peak_budget_gib or budget
    lines = [
        f"device: {first.get('device', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in first.get("versions", {}).items())
        + f"; profile {profile_name}; {first.get('date', '')}",
    ]
    if cpu:
        lines.append(
            "**CPU smoke run with the tiny twins: memory is the process's peak RSS, no GPU figure; the times "
            "say nothing about a GPU.**"
        )
    lines += [
        "",
        f"| stage | measurement | px | max allocated GiB{' (CPU: peak RSS)' if cpu else ''} | max reserved GiB | "
        f"device used GiB | largest vs {budget:g} GiB budget | s/step | s/image | load s | settings |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        big = largest(r)
        if r.get("gpu"):
            mem = [_f(r.get("alloc_gib")), _f(r.get("reserved_gib")), _f(r.get("used_gib"))]
            verdict = "-" if big is None else f"{big:.2f} {fits(big, budget)}"
        else:
            rss = r.get("rss_gib")
            mem = ["-" if rss is None else f"{rss:.2f} RSS (CPU)", "-", "-"]
            verdict = "n/a (CPU)" if rss is not None else "-"
        cells = [
            r["stage"],
            r["what"],
            r.get("px") or "-",
            *mem,
            verdict,
            _f(r.get("s_step")),
            _f(r.get("s_image")),
            _f(r.get("load_s"), 1),
            r.get("settings", ""),
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines += ["", *criteria(rows, profile, budget, cpu)]
    return "\n".join(lines) + "\n"


def criteria(rows: list[dict[str, Any]], profile: Any, budget: float, cpu: bool) -> list[str]:
    """The seed's criteria from the rows: seconds per 1024² edit, hours to train on 10 triplets, stage peaks."""
    by = {r["key"]: r for r in rows}
    s = profile.edit_trainer
    out = ["| criterion | figure | target | verdict |", "|---|---|---|---|"]

    def verdict(value: float | None, ok: bool) -> str:
        if value is None:
            return "not measured"
        if cpu:
            return "n/a (CPU smoke)"
        return "pass" if ok else "FAIL"

    for key, what in (
        ("qwen-infer-angles", "seconds per 1024² edit, angles stack (Lightning + angles + character)"),
        ("qwen-infer-other", "seconds per 1024² edit, other categories (character LoRA, CFG)"),
    ):
        v = by.get(key, {}).get("s_image")
        where = f" at {by[key].get('px')} px on {by[key].get('device')}" if v is not None else ""
        out.append(
            f"| {what} | {_f(v, 1)} s{where} | < 60 s on a 24 GB card | "
            f"{verdict(v, v is not None and v < 60)}{' (on this GPU)' if v is not None and not cpu else ''} |"
        )
    train = next((r for r in rows if r["key"].startswith("qwen-train@") and r.get("profile_bucket")), None)
    enc, enc_s = by.get("qwen-encode"), by.get("qwen-encode-samples")
    smp, ident = by.get("qwen-sample"), by.get("identity-cpu")
    hours = None
    n_samples = len(s.sample_prompts) * len(s.sample_seeds)
    checkpoints = math.ceil(s.steps / s.checkpoint_every)
    if train and train.get("s_step") is not None:
        total = (train.get("load_s") or 0.0) + s.steps * train["s_step"]
        if enc and enc.get("s_image") is not None:
            total += (enc.get("load_s") or 0.0) + 10 * enc["s_image"]
        if enc_s and enc_s.get("s_image") is not None:
            total += (enc_s.get("load_s") or 0.0) + len(s.sample_prompts) * enc_s["s_image"]
        per_sample = (smp or {}).get("s_image") or 0.0
        per_sample += (ident or {}).get("s_image") or 0.0
        total += checkpoints * n_samples * per_sample
        hours = total / 3600
    out.append(
        f"| hours to train the editor LoRA on 10 triplets | {_f(hours, 2)} h | < 2 h | "
        f"{verdict(hours, hours is not None and hours < 2)} |"
    )
    stages: dict[str, float] = {}
    for r in rows:
        big = largest(r) if r.get("gpu") else r.get("rss_gib")
        if big is not None:
            stages[r["stage"]] = max(stages.get(r["stage"], 0.0), big)
    for name, big in stages.items():
        limit = EDITOR_LIMIT_GIB if name == "qwen-infer" else budget
        target = f"< {EDITOR_LIMIT_GIB:g} GiB (the editor)" if name == "qwen-infer" else f"<= {budget:g} GiB budget"
        unit = "GiB RSS (CPU)" if cpu else "GiB"
        out.append(f"| peak of {name} | {big:.2f} {unit} | {target} | {verdict(big, big < limit)} |")
    missing = [n for n in STAGES if n not in stages]
    if missing:
        out.append(f"| stages without a row | {', '.join(missing)} | every stage measured | not measured |")
    out += [
        "",
        f"Hours = load + {s.steps} steps × s/step (edit trainer, profile bucket {s.resolutions}, batch {s.batch_size}, "
        f"grad_accum {s.grad_accum}: the step count does not grow with 10 triplets) + caching (load + 10 × s/triplet, "
        f"load + {len(s.sample_prompts)} sample prompts) + {checkpoints} checkpoints × {n_samples} samples × "
        "(s/sample + identity s/image). Seconds per edit: the whole pipeline call (prompt encoding, VAE encode and "
        "decode, offload transfers) at the stack's steps; where fewer steps ran, s/image adds the missing ones at "
        "s/step. Memory: the largest of max allocated, max reserved and device used (CUDA context included); peaks "
        "measured on a bigger GPU hold for a 24 GB card only as far as the allocator's behaviour does (a full card "
        "frees cached blocks before it fails), and seconds measured on a faster GPU are a lower bound for it.",
    ]
    return out
