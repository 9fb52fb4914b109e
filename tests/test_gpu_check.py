"""The single-command GPU check (bench/gpu_check.sh): its plan, and a run cut off at its time budget still reports.

The stages themselves run end to end on the tiny twins with ``bench/gpu_check.sh --dry-run`` (about 4 minutes,
docs/benchmarks.md); here only what needs no model: the plan and the deadlines.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.gpu.run import CHECK, CHECK_BUDGET_S, check_plan, run_stages
from bench.gpu.table import load_rows, table


def test_the_check_plans_the_most_important_stages_first_within_eight_minutes() -> None:
    order = ["qwen2511-infer", "klein-infer", "klein-train", "vibe-critic"]
    assert [name for name, _ in CHECK] == order
    assert sum(s for _, s in CHECK) <= CHECK_BUDGET_S <= 8 * 60
    plan = check_plan()
    rows = [line for line in plan.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split(" | ")[1] for r in rows] == order
    for r in rows:
        disk, minutes = float(r.split(" | ")[3]), float(r.split(" | ")[4].split()[0])
        assert disk > 1 and 0.4 < minutes < 6  # GB on the machine's disk; minutes by the throughput model


def test_a_stage_past_its_deadline_is_stopped_and_the_table_still_reports(tmp_path: Path) -> None:
    out = tmp_path / "check.jsonl"
    tables: list[str] = []
    late = time.monotonic() - 1  # every deadline already passed: nothing is built or started
    failures = run_stages(
        ["qwen-infer", "flux-train"],
        "tiny",
        tmp_path / "models",
        out,
        False,
        2,
        [late, late],
        lambda: tables.append(table(load_rows([out]))),
    )
    assert failures == 2 and len(tables) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["key"] for r in rows] == ["qwen-infer-failed", "flux-train-failed"]
    assert all("STOPPED at its time slice" in r["what"] for r in rows)
    assert "flux-train" in tables[-1] and "STOPPED" in tables[-1]
    assert not (tmp_path / "models" / "tiny").exists()  # nothing was built, nothing left behind
