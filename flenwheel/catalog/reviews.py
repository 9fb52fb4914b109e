"""Review decisions, gate candidates, and the rounds in which a flow run waited at a gate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import pandas as pd

from flenwheel.catalog.core import CatalogCore, now


class ReviewsMixin(CatalogCore):
    """Writers and readers of ``reviews`` (append-only; ``review_state`` is the latest) and ``gate_rounds``."""

    def add_reviews(self, rows: Sequence[dict[str, Any]], run_id: str | None) -> int:
        """Record decisions (image_id, gate_id, decision, source[, reviewer, note]); returns how many changed.

        A decision equal to the image's current one in that gate is not written again, so syncing the same
        tags twice, or re-running an auto review, adds nothing.
        """
        if not rows:
            return 0

        def write(con: duckdb.DuckDBPyConnection) -> int:
            con.register("incoming", pd.DataFrame([{"image_id": r["image_id"], "gate_id": r["gate_id"]} for r in rows]))
            current = {
                (i, g): d
                for i, g, d in con.execute(
                    "SELECT s.image_id, s.gate_id, s.decision"
                    " FROM review_state s JOIN incoming USING (image_id, gate_id)"
                ).fetchall()
            }
            con.unregister("incoming")
            stamp = now()
            changed = [r for r in rows if current.get((r["image_id"], r["gate_id"])) != r["decision"]]
            if not changed:
                return 0
            con.executemany(
                "INSERT INTO reviews (image_id, gate_id, decision, reviewer, source, note, run_id, decided_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    [
                        r["image_id"],
                        r["gate_id"],
                        r["decision"],
                        r.get("reviewer"),
                        r["source"],
                        r.get("note"),
                        run_id,
                        stamp,
                    ]
                    for r in changed
                ],
            )
            return len(changed)

        return self.write(write)

    def gate_candidates(self, character: str, gate_id: str, origins: Sequence[str]) -> list[dict[str, Any]]:
        """The gate's candidates (images of ``origins``) with their latest identity score, edit checks (failed ones,
        the closest margin and the check it belongs to, attempts), quality flags and current decision."""
        if not self.path.exists():
            return []
        return self.rows(
            """SELECT i.image_id, i.origin, i.path, i.created_at, d.parent_id, d.prompt_id, d.seed, d.op,
                      s.verdict, s.similarity, s.threshold, s.matched, r.decision, r.source AS decided_by,
                      c.verified, c.failed_checks, c.check_margin, c.closest_check, c.attempts,
                      coalesce(c.flags, []) AS flags
               FROM images i
               LEFT JOIN first_derivation d ON d.child_id = i.image_id
               LEFT JOIN latest_identity s ON s.image_id = i.image_id
               LEFT JOIN review_state r ON r.image_id = i.image_id AND r.gate_id = $gate
               LEFT JOIN image_checks c ON c.image_id = i.image_id
               WHERE i.character = $c AND list_contains($origins, i.origin)
                 AND c.candidate IS NOT FALSE  -- an attempt that lost to another of its job is no candidate
               ORDER BY i.created_at, i.image_id""",
            {"c": character, "gate": gate_id, "origins": list(origins)},
        )

    def review_dataset_rows(self, character: str) -> list[dict[str, Any]]:
        """Every image of the character with identity fields, derivation details, checks, quality flags, coverage bins
        and its current caption (the review dataset)."""
        return self.rows(
            """SELECT i.image_id, i.path, i.origin, i.lineage_root AS source_id, d.parent_id, d.prompt_id, d.seed,
                      d.params->>'$.editor' AS editor, s.verdict, s.similarity, s.threshold, s.embedding,
                      c.verified, coalesce(c.failed_checks, []) AS failed_checks, c.attempts, lc.caption,
                      coalesce(c.flags, []) AS flags, a.yaw_bin, a.pitch_bin, a.framing, a.expression, a.light,
                      a.warmth_bin
               FROM images i
               LEFT JOIN first_derivation d ON d.child_id = i.image_id
               LEFT JOIN latest_identity s ON s.image_id = i.image_id
               LEFT JOIN image_checks c ON c.image_id = i.image_id
               LEFT JOIN latest_captions lc ON lc.image_id = i.image_id
               LEFT JOIN image_attributes a ON a.image_id = i.image_id
               WHERE i.character = ? AND c.candidate IS NOT FALSE
               ORDER BY i.created_at, i.image_id""",
            [character],
        )

    def decision_history(self, gate_id: str) -> dict[str, list[tuple[str, str]]]:
        """Per image of the gate, every (source, decision) it was given, oldest first: who decided, who overrode."""
        if not self.path.exists():
            return {}
        history: dict[str, list[tuple[str, str]]] = {}
        for r in self.rows(
            "SELECT image_id, source, decision FROM reviews WHERE gate_id = ? ORDER BY decided_at, seq", [gate_id]
        ):
            history.setdefault(r["image_id"], []).append((r["source"], r["decision"]))
        return history

    # ------------------------------------------------------------------ gate rounds

    def gate_rounds(self, flow_run_id: str, gate_id: str) -> list[dict[str, Any]]:
        """The rounds of one flow run at one gate, oldest first."""
        if not self.path.exists():
            return []
        return self.rows(
            "SELECT * FROM gate_rounds WHERE flow_run_id = ? AND gate_id = ? ORDER BY round",
            [flow_run_id, gate_id],
        )

    def open_gate_round(
        self,
        flow_run_id: str,
        gate_id: str,
        number: int,
        pause_key: str,
        pending_ids: Sequence[str],
        run_id: str | None,
    ) -> None:
        """Record that the run stops at the gate now (round ``number``), waiting on ``pending_ids``."""
        self.write(
            lambda con: con.execute(
                "INSERT INTO gate_rounds (flow_run_id, gate_id, round, pause_key, pending_ids, opened_at, run_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [flow_run_id, gate_id, number, pause_key, list(pending_ids), now(), run_id],
            )
        )

    def close_gate_round(
        self,
        flow_run_id: str,
        gate_id: str,
        number: int,
        *,
        reviewer: str | None,
        note: str | None,
        auto_decide_rest: bool,
        approve_rest: bool,
        decided_by_people: int,
        decided_by_policy: int,
    ) -> None:
        """Record the reviewer's answer to a round (who, note, and how its candidates were decided)."""
        self.write(
            lambda con: con.execute(
                "UPDATE gate_rounds SET resumed_at = ?, reviewer = ?, note = ?, auto_decide_rest = ?,"
                " approve_rest = ?, decided_by_people = ?, decided_by_policy = ?"
                " WHERE flow_run_id = ? AND gate_id = ? AND round = ?",
                [
                    now(),
                    reviewer,
                    note,
                    auto_decide_rest,
                    approve_rest,
                    decided_by_people,
                    decided_by_policy,
                    flow_run_id,
                    gate_id,
                    number,
                ],
            )
        )
