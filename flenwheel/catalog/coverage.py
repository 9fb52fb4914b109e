"""Quality flags and coverage in the catalog (docs/coverage.md): each image's measured bins, its flags (rows of
``verifications`` named ``flag:<name>``), the sets coverage is counted over, and the plans of aimed enrichment."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import duckdb
import pandas as pd

from flenwheel.catalog.checks import ChecksMixin
from flenwheel.catalog.core import CatalogCore, CatalogError, now
from flenwheel.catalog.records import decode_json

_ATTRIBUTES = {
    "image_id": "VARCHAR", "yaw": "DOUBLE", "pitch": "DOUBLE", "face_share": "DOUBLE", "yaw_bin": "VARCHAR",
    "pitch_bin": "VARCHAR", "framing": "VARCHAR", "expression": "VARCHAR", "light": "VARCHAR",
    "warmth_bin": "VARCHAR", "measures": "JSON", "backend": "VARCHAR", "run_id": "VARCHAR",
}  # fmt: skip
_BINS = "a.yaw_bin, a.pitch_bin, a.framing, a.expression, a.light, a.warmth_bin, a.yaw, a.pitch, a.face_share"
# What may enter the character's next version: sources no review rejected, candidates approved in some gate and
# rejected in none (as ``selectable_members``); ``$pending`` adds the undecided candidates that a job chose and whose
# checks passed (what an aimed enrichment already expects to come).
_SET = """
    SELECT i.* FROM images i
    WHERE i.character = $c
      AND NOT EXISTS (SELECT 1 FROM review_state r WHERE r.image_id = i.image_id AND r.decision = 'rejected')
      AND (i.origin = 'source'
           OR EXISTS (SELECT 1 FROM review_state r WHERE r.image_id = i.image_id AND r.decision = 'approved')
           OR ($pending AND NOT EXISTS (SELECT 1 FROM review_state r WHERE r.image_id = i.image_id)
               AND EXISTS (SELECT 1 FROM image_checks k WHERE k.image_id = i.image_id AND k.candidate
                           AND k.verified)))"""


class CoverageMixin(CatalogCore):
    """Writers and readers of ``image_attributes``, flag rows and ``enrichment_plans``."""

    def images_to_assess(self, character: str, image_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The character's images without measured bins yet (only ``image_ids`` when given), oldest first."""
        if not self.path.exists():
            return []
        return self.rows(
            """SELECT i.image_id, i.path, i.origin, i.lineage_root, i.created_at FROM images i
               WHERE i.character = $c AND ($all OR list_contains($ids, i.image_id))
                 AND NOT EXISTS (SELECT 1 FROM image_attributes a WHERE a.image_id = i.image_id)
               ORDER BY i.created_at, i.image_id""",
            {"c": character, "all": image_ids is None, "ids": list(image_ids or [])},
        )

    def duplicate_pool(self, character: str) -> list[dict[str, Any]]:
        """Images of the character a new one may duplicate: all but rejected ones and attempts a job did not choose,
        oldest first (with their lineage root: an edit is no duplicate of its own source)."""
        return self.rows(
            """SELECT i.image_id, i.path, i.lineage_root, i.created_at FROM images i
               WHERE i.character = ?
                 AND NOT EXISTS (SELECT 1 FROM review_state r WHERE r.image_id = i.image_id AND r.decision = 'rejected')
                 AND NOT EXISTS (SELECT 1 FROM edit_attempts e WHERE e.image_id = i.image_id AND NOT e.chosen)
               ORDER BY i.created_at, i.image_id""",
            [character],
        )

    def record_assessments(
        self, attributes: Sequence[dict[str, Any]], flags: Sequence[dict[str, Any]], run_id: str | None
    ) -> None:
        """Bins (``image_attributes``) and flag rows (``verifications``) of assessed images, in one transaction."""
        if not attributes and not flags:
            return

        def write(con: duckdb.DuckDBPyConnection) -> None:
            if attributes:
                frame = pd.DataFrame(
                    [
                        {
                            c: json.dumps(r.get(c), sort_keys=True) if t == "JSON" else r.get(c)
                            for c, t in _ATTRIBUTES.items()
                            if c != "run_id"
                        }
                        | {"run_id": run_id}
                        for r in attributes
                    ]
                )
                frame["stamp"] = now()
                con.register("attribute_rows", frame)
                names = ", ".join((*_ATTRIBUTES, "measured_at"))
                values = ", ".join([*(f"{c}::{t}" for c, t in _ATTRIBUTES.items()), "stamp"])
                con.execute(f"INSERT OR REPLACE INTO image_attributes ({names}) SELECT {values} FROM attribute_rows")
                con.unregister("attribute_rows")
            if flags:
                ChecksMixin.record_checks(con, {"verifications": list(flags)})

        self.write(write)

    def attributes_of(self, image_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Measured bins of each image (those measured)."""
        if not image_ids or not self.path.exists():
            return {}
        rows = self.rows(
            "SELECT * FROM image_attributes WHERE list_contains(?, image_id)", [list(dict.fromkeys(image_ids))]
        )
        return {r["image_id"]: decode_json(r, ("measures",)) for r in rows}

    def coverage_rows(self, character: str, version_id: str | None = None, pending: bool = False) -> list[dict]:
        """One row per image of a set with its bins (None: not measured or not measurable), flags and caption:
        the version's members with their frozen captions, or the set the next version would hold (sources and
        approved candidates, with their current captions; ``pending`` adds undecided candidates that passed their
        checks), by image id."""
        if not self.path.exists():
            return []
        flags = """coalesce((SELECT list(substr(v.name, 6) ORDER BY v.name) FROM verifications v
                              WHERE v.image_id = s.image_id AND starts_with(v.name, 'flag:') AND NOT v.passed),
                             []) AS flags"""
        if version_id is not None:
            if not self.rows("SELECT 1 FROM dataset_versions WHERE version_id = ?", [version_id]):
                raise CatalogError(f"no dataset version {version_id}")
            sql = f"""SELECT s.image_id, s.origin, s.path, m.caption, d.prompt_id, {_BINS}, {flags}
                      FROM dataset_members m JOIN images s USING (image_id)
                      LEFT JOIN image_attributes a ON a.image_id = s.image_id
                      LEFT JOIN first_derivation d ON d.child_id = s.image_id
                      WHERE m.version_id = $v ORDER BY s.image_id"""
            return self.rows(sql, {"v": version_id})
        sql = f"""SELECT s.image_id, s.origin, s.path, c.caption, d.prompt_id, {_BINS}, {flags}
                  FROM ({_SET}) s
                  LEFT JOIN image_attributes a ON a.image_id = s.image_id
                  LEFT JOIN latest_captions c ON c.image_id = s.image_id
                  LEFT JOIN first_derivation d ON d.child_id = s.image_id
                  ORDER BY s.image_id"""
        return self.rows(sql, {"c": character, "pending": pending})

    # ------------------------------------------------------------------ plans of aimed enrichment

    def aimed_edits(self, character: str) -> list[dict[str, Any]]:
        """Every edit job's candidate of the character (the chosen attempt; every edit when none was checked) with
        its source, prompt, editor and current decision at the enrichment gate (None: undecided)."""
        if not self.path.exists():
            return []
        return self.rows(
            """SELECT i.image_id, d.parent_id AS source_id, d.prompt_id, d.params->>'$.editor' AS editor, r.decision
               FROM images i JOIN first_derivation d ON d.child_id = i.image_id
               LEFT JOIN review_state r ON r.image_id = i.image_id AND r.gate_id = $gate
               WHERE i.character = $c AND i.origin IN ('edit', 'augment')
                 AND NOT EXISTS (SELECT 1 FROM edit_attempts e WHERE e.image_id = i.image_id AND NOT e.chosen)
               ORDER BY i.created_at, i.image_id""",
            {"c": character, "gate": f"{character}:enrich"},
        )

    def add_plan(self, row: dict[str, Any]) -> None:
        """Record an aimed enrichment's plan (its id is the run id and editor: a re-run of the same run keeps it)."""

        def write(con: duckdb.DuckDBPyConnection) -> None:
            con.execute(
                "INSERT OR IGNORE INTO enrichment_plans (plan_id, character, editor, budget, jobs, coverage, aims,"
                " run_id, planned_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    row["plan_id"],
                    row["character"],
                    row.get("editor"),
                    row.get("budget"),
                    row["jobs"],
                    json.dumps(row["coverage"], sort_keys=True),
                    json.dumps(row["aims"], sort_keys=True),
                    row.get("run_id"),
                    now(),
                ],
            )

        self.write(write)

    def plans(self, character: str) -> list[dict[str, Any]]:
        """The character's aimed enrichment plans, oldest first (coverage and aims decoded)."""
        if not self.path.exists():
            return []
        rows = self.rows("SELECT * FROM enrichment_plans WHERE character = ? ORDER BY planned_at, plan_id", [character])
        return [decode_json(r, ("coverage", "aims")) for r in rows]
