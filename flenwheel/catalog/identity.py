"""Identity: reference sets, scores, and the latest verdict of each image."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from flenwheel.catalog.core import CatalogCore, now
from flenwheel.catalog.records import decode_json


class IdentityMixin(CatalogCore):
    """Writers and readers of ``reference_sets`` and ``identity_scores``."""

    def source_images(self, character: str) -> list[dict[str, Any]]:
        """The character's source photos that no review has rejected, by image id."""
        if not self.path.exists():
            return []
        return self.rows(
            """SELECT i.image_id, i.path FROM images i
               WHERE i.character = ? AND i.origin = 'source'
                 AND NOT EXISTS (SELECT 1 FROM review_state r
                                 WHERE r.image_id = i.image_id AND r.decision = 'rejected')
               ORDER BY i.image_id""",
            [character],
        )

    def reference_set_row(self, reference_set_id: str) -> dict[str, Any] | None:
        found = self.rows("SELECT * FROM reference_sets WHERE reference_set_id = ?", [reference_set_id])
        return decode_json(found[0], ("calibration",)) if found else None

    def save_reference_set(self, row: dict[str, Any]) -> None:
        """Store a reference set; sets are immutable, so an existing id is left as it is."""
        values = {**row, "calibration": json.dumps(row["calibration"], default=str), "created_at": now()}
        cols = list(values)
        self.write(
            lambda con: con.execute(
                f"INSERT OR IGNORE INTO reference_sets ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [values[c] for c in cols],
            )
        )

    def update_calibration(self, reference_set_id: str, threshold: float, calibration: dict[str, Any]) -> None:
        """Re-calibration changes a set's threshold, never its photos."""
        self.write(
            lambda con: con.execute(
                "UPDATE reference_sets SET threshold = ?, calibration = ? WHERE reference_set_id = ?",
                [threshold, json.dumps(calibration, default=str), reference_set_id],
            )
        )

    def other_reference_embeddings(self, character: str, backend: str) -> list[list[float]]:
        """Embeddings of the newest reference set of every other character (impostors for calibration)."""
        if not self.path.exists():
            return []
        rows = self.rows(
            """SELECT embeddings FROM (
                   SELECT embeddings, row_number() OVER (PARTITION BY character ORDER BY created_at DESC) AS rn
                   FROM reference_sets WHERE character <> ? AND backend = ?) WHERE rn = 1""",
            [character, backend],
        )
        return [e for r in rows for e in r["embeddings"]]

    def images_to_score(
        self, character: str, backend: str, reference_set_id: str, rescore: bool = False
    ) -> list[dict[str, Any]]:
        """Images of the character without a score for this backend and reference set (all with ``rescore``)."""
        return self.rows(
            """SELECT i.image_id, i.path FROM images i
               WHERE i.character = $c AND ($rescore OR NOT EXISTS (
                   SELECT 1 FROM identity_scores s WHERE s.image_id = i.image_id
                     AND s.backend = $b AND s.reference_set_id = $r))
               ORDER BY i.created_at, i.image_id""",
            {"c": character, "b": backend, "r": reference_set_id, "rescore": rescore},
        )

    def add_identity_scores(self, rows: Sequence[dict[str, Any]], run_id: str | None) -> None:
        """Insert or replace scores keyed by (image_id, backend, reference_set_id)."""
        if not rows:
            return
        stamp = now()
        cols = [
            "image_id",
            "backend",
            "reference_set_id",
            "verdict",
            "matched",
            "similarity",
            "similarity_max",
            "similarity_mean",
            "threshold",
            "n_faces",
            "face_box",
            "det_score",
            "yaw",
            "embedding",
        ]
        values = [[r.get(c) for c in cols] + [run_id, stamp] for r in rows]
        self.write(
            lambda con: con.executemany(
                f"INSERT OR REPLACE INTO identity_scores ({', '.join(cols)}, run_id, scored_at)"
                f" VALUES ({', '.join('?' * (len(cols) + 2))})",
                values,
            )
        )

    def latest_scores(self, image_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The newest identity score of each image (image_id, verdict, similarity, threshold, path)."""
        if not image_ids:
            return []
        return self.rows(
            """SELECT s.image_id, s.verdict, s.similarity, s.threshold, i.path
               FROM latest_identity s JOIN images i USING (image_id)
               WHERE s.image_id IN (SELECT unnest(?)) ORDER BY s.image_id""",
            [list(image_ids)],
        )

    def characters_summary(self) -> pd.DataFrame:
        """Per character: images by origin and identity verdicts (latest score per image)."""
        return self.frame(
            """SELECT i.character,
                      count(*) AS images,
                      count(*) FILTER (WHERE origin = 'source') AS source,
                      count(*) FILTER (WHERE origin = 'edit') AS edit,
                      count(*) FILTER (WHERE origin = 'augment') AS augment,
                      count(*) FILTER (WHERE origin = 'generate') AS generate,
                      count(l.verdict) FILTER (WHERE l.verdict = 'pass') AS id_pass,
                      count(l.verdict) FILTER (WHERE l.verdict <> 'pass') AS id_other,
                      count(*) FILTER (WHERE l.verdict IS NULL) AS unscored
               FROM images i LEFT JOIN latest_identity l USING (image_id)
               GROUP BY i.character ORDER BY i.character"""
        )
