"""Checked images in the catalog: edit-region masks, verifier checks per image, the attempts of each job, and the
evaluation of generated samples (check ``copy``, docs/evaluation.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import duckdb
import pandas as pd

from flenwheel.catalog.core import CatalogCore, now

# Column types spelled out: DuckDB infers a frame's types, and an all-NULL or all-empty column has none.
_COLUMNS = {
    "masks": {"image_id": "VARCHAR", "category": "VARCHAR", "mask_id": "VARCHAR", "kind": "VARCHAR",
              "confidence": "DOUBLE", "fraction": "DOUBLE", "path": "VARCHAR", "params": "JSON", "run_id": "VARCHAR"},
    "verifications": {"image_id": "VARCHAR", "name": "VARCHAR", "score": "DOUBLE", "threshold": "DOUBLE",
                      "passed": "BOOLEAN", "mask_id": "VARCHAR", "params": "JSON", "run_id": "VARCHAR"},
    "edit_attempts": {"job_key": "VARCHAR", "attempt": "INTEGER", "image_id": "VARCHAR", "character": "VARCHAR",
                      "prompt_id": "VARCHAR", "category": "VARCHAR", "seed": "BIGINT", "strength": "DOUBLE",
                      "passed": "BOOLEAN", "chosen": "BOOLEAN", "failures": "VARCHAR[]", "run_id": "VARCHAR"},
}  # fmt: skip
_STAMP = {"masks": "created_at", "verifications": "verified_at", "edit_attempts": "created_at"}


class ChecksMixin(CatalogCore):
    """Writers called inside an image batch's transaction, and the questions people ask of the checks."""

    @staticmethod
    def record_checks(con: duckdb.DuckDBPyConnection, rows: dict[str, list[dict[str, Any]]]) -> None:
        """Insert a batch's ``masks``, ``verifications`` and ``edit_attempts`` rows on ``con`` (the caller's
        transaction). A mask already recorded for its (image, category) is kept: one region per pair."""
        stamp = now()
        for table, records in rows.items():
            if not records:
                continue
            columns = _COLUMNS[table]
            frame = pd.DataFrame(
                [
                    {
                        c: json.dumps(r[c], sort_keys=True, default=str) if t == "JSON" else r[c]
                        for c, t in columns.items()
                    }
                    for r in records
                ]
            )
            frame["stamp"] = stamp
            con.register("check_rows", frame)
            names = ", ".join((*columns, _STAMP[table]))
            values = ", ".join([*(f"{c}::{t}" for c, t in columns.items()), "stamp"])
            verb = "INSERT OR IGNORE" if table == "masks" else "INSERT OR REPLACE"
            con.execute(f"{verb} INTO {table} ({names}) SELECT {values} FROM check_rows")
            con.unregister("check_rows")

    def add_checks(self, rows: dict[str, list[dict[str, Any]]]) -> None:
        """Record ``masks`` and ``verifications`` rows of checked images that are no catalogued image (an editor
        comparison's edits, keyed by the sha256 of their files under ``evals/``) in one transaction."""
        self.write(lambda con: self.record_checks(con, rows))

    def attempts_of(self, image_id: str) -> list[dict[str, Any]]:
        """Every attempt of the job that made ``image_id`` (its failed tries and the chosen one), in order."""
        return self.rows(
            """SELECT a.*, list(v.name ORDER BY v.name) FILTER (WHERE NOT v.passed) AS failed_checks
               FROM edit_attempts a LEFT JOIN verifications v ON v.image_id = a.image_id
               WHERE a.job_key IN (SELECT job_key FROM edit_attempts WHERE image_id = ?)
               GROUP BY ALL ORDER BY a.attempt""",
            [image_id],
        )

    def all_masks(self) -> list[dict[str, Any]]:
        return self.rows("SELECT DISTINCT mask_id, path FROM masks ORDER BY mask_id") if self.path.exists() else []

    def edit_outcomes(self, character: str) -> list[dict[str, Any]]:
        """Every enrichment edit of ``character`` (each attempt, chosen or not) with its prompt, attempt, identity
        verdict, current decision and checks (a list of {name, passed, score, threshold}), oldest first."""
        if not self.path.exists():
            return []
        return self.rows(
            """SELECT i.image_id, i.path, d.prompt_id, d.seed, a.job_key, a.attempt, a.chosen,
                      coalesce(a.category, d.params->>'$.category') AS category,
                      s.verdict, s.similarity, s.threshold, r.decision,
                      (SELECT list({'name': v.name, 'passed': v.passed, 'score': v.score, 'threshold': v.threshold}
                                   ORDER BY v.name) FROM verifications v WHERE v.image_id = i.image_id) AS checks
               FROM images i
               JOIN first_derivation d ON d.child_id = i.image_id
               LEFT JOIN edit_attempts a ON a.image_id = i.image_id
               LEFT JOIN latest_identity s ON s.image_id = i.image_id
               LEFT JOIN review_state r ON r.image_id = i.image_id AND r.gate_id = $gate
               WHERE i.character = $c AND i.origin IN ('edit', 'augment')
               ORDER BY i.created_at, i.image_id""",
            {"c": character, "gate": f"{character}:enrich"},
        )

    # ------------------------------------------------------------------ samples judged by the evaluation engine

    def unchecked(self, image_ids: Sequence[str], name: str) -> list[str]:
        """Of ``image_ids``, those without a ``verifications`` row called ``name``, in the order given."""
        if not image_ids:
            return []
        done = self.rows(
            "SELECT image_id FROM verifications WHERE name = ? AND image_id IN (SELECT unnest(?))",
            [name, list(image_ids)],
        )
        seen = {r["image_id"] for r in done}
        return [i for i in image_ids if i not in seen]

    def failing(self, image_ids: Sequence[str], name: str) -> set[str]:
        """Of ``image_ids``, those whose check ``name`` failed (e.g. the synthetic images that copy a training
        image: check ``copy``)."""
        if not image_ids:
            return set()
        rows = self.rows(
            "SELECT image_id FROM verifications WHERE name = ? AND NOT passed AND image_id IN (SELECT unnest(?))",
            [name, list(image_ids)],
        )
        return {r["image_id"] for r in rows}

    def sample_summary(self, image_ids: Sequence[str]) -> dict[str, Any]:
        """The evaluation of the images that have one (a ``copy`` row, docs/evaluation.md), summed up: how many
        (``judged``), the share of each verdict, the mean likeness of those with one face, and adherence, the
        share of critic checks passed over the images asked any (None: not measured)."""
        rates = ", ".join(
            f"avg((verdict = '{v}')::INTEGER) AS {v}_rate" for v in ("good", "copy", "weak", "no_face", "multi_face")
        )
        found = self.rows(
            f"""SELECT count(*) AS judged, {rates},
                      avg(likeness) FILTER (WHERE verdict IN ('good', 'copy', 'weak')) AS mean_likeness,
                      avg(adherence) AS adherence
               FROM (SELECT v.image_id, v.params->>'$.verdict' AS verdict,
                            TRY_CAST(v.params->>'$.likeness' AS DOUBLE) AS likeness,
                            (SELECT avg(c.passed::INTEGER) FROM verifications c
                             WHERE c.image_id = v.image_id AND c.name LIKE 'critic:%') AS adherence
                     FROM verifications v WHERE v.name = 'copy' AND v.image_id IN (SELECT unnest(?)))""",
            [list(image_ids)],
        )
        return found[0] if found else {"judged": 0}
