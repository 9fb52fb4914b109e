"""Frozen dataset versions: the selection a version is made from, versions, members, composition."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import duckdb
import pandas as pd

from flenwheel.catalog.core import CatalogCore, now


class VersionsMixin(CatalogCore):
    """Writers and readers of ``dataset_versions`` and ``dataset_members``."""

    def freeze_version(
        self,
        character: str,
        members: Sequence[tuple[str, str]],
        manifest_sha256: str,
        manifest_path: str | None,
        run_id: str | None,
        licences: Sequence[dict[str, Any]] | None = None,
    ) -> tuple[str, bool]:
        """Record a frozen version with ``(image_id, caption)`` members and the licences of the models that made
        them; returns ``(version_id, created)``.

        Versions are immutable: when the latest version of the character already has this manifest hash,
        it is returned as it is and nothing is written.
        """

        def write(con: duckdb.DuckDBPyConnection) -> tuple[str, bool]:
            latest = con.execute(
                "SELECT version_id, number, manifest_sha256 FROM dataset_versions WHERE character = ?"
                " ORDER BY number DESC LIMIT 1",
                [character],
            ).fetchone()
            if latest and latest[2] == manifest_sha256:
                return latest[0], False
            number = (latest[1] if latest else 0) + 1
            version_id = f"{character}@v{number}"
            con.execute(
                "INSERT INTO dataset_versions (version_id, character, number, parent_version, created_by_run,"
                " manifest_path, manifest_sha256, n_images, frozen_at, licences)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    version_id,
                    character,
                    number,
                    latest[0] if latest else None,
                    run_id,
                    manifest_path,
                    manifest_sha256,
                    len(members),
                    now(),
                    None if licences is None else json.dumps(list(licences), sort_keys=True),
                ],
            )
            df = pd.DataFrame({"image_id": [m[0] for m in members], "caption": [m[1] for m in members]})
            con.register("new_members", df)
            con.execute("INSERT INTO dataset_members SELECT ?, image_id, caption FROM new_members", [version_id])
            con.unregister("new_members")
            return version_id, True

        return self.write(write)

    def version_licences(self, version_id: str) -> list[dict[str, Any]] | None:
        """The licences recorded with a version (None for a version frozen before they were recorded)."""
        rows = self.rows("SELECT licences FROM dataset_versions WHERE version_id = ?", [version_id])
        return json.loads(rows[0]["licences"]) if rows and rows[0]["licences"] else None

    def makers_of(self, image_ids: Sequence[str]) -> list[dict[str, Any]]:
        """What made these images: each distinct (op, model_ref, loras) of their derivations, and the identity
        backends that scored them; the questions a version's licence record asks."""
        if not image_ids:
            return []
        ids = pd.DataFrame({"image_id": list(image_ids)})

        def run(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
            con.register("wanted", ids)
            try:
                made = con.execute(
                    """SELECT DISTINCT d.op, d.model_ref, CAST(d.loras AS VARCHAR) AS loras
                       FROM derivations d SEMI JOIN wanted w ON w.image_id = d.child_id
                       WHERE d.model_ref IS NOT NULL ORDER BY d.op, d.model_ref, loras"""
                ).fetchdf()
                judged = con.execute(
                    """SELECT DISTINCT s.backend FROM identity_scores s SEMI JOIN wanted w ON w.image_id = s.image_id
                       ORDER BY s.backend"""
                ).fetchdf()
            finally:
                con.unregister("wanted")
            rows = [
                {"op": r.op, "model_ref": r.model_ref, "loras": json.loads(r.loras) if r.loras else []}
                for r in made.itertuples()
            ]
            return rows + [{"op": "identity", "model_ref": b, "loras": []} for b in judged["backend"]]

        return self.read(run)

    def selectable_members(self, character: str) -> list[dict[str, Any]]:
        """What a version of the character may hold: sources no review rejected and candidates whose latest
        decision in some gate is approved and in none rejected; with the prompt that made each and its current
        caption (None when it has none), by image id."""
        return self.rows(
            """SELECT i.image_id, i.path, i.origin, d.prompt_id, d.prompt, c.caption
               FROM images i
               LEFT JOIN first_derivation d ON d.child_id = i.image_id
               LEFT JOIN latest_captions c ON c.image_id = i.image_id
               WHERE i.character = $c AND (
                   (i.origin = 'source' AND NOT EXISTS (
                        SELECT 1 FROM review_state r WHERE r.image_id = i.image_id AND r.decision = 'rejected'))
                   OR (i.origin <> 'source' AND EXISTS (
                        SELECT 1 FROM review_state r WHERE r.image_id = i.image_id AND r.decision = 'approved')
                       AND NOT EXISTS (
                        SELECT 1 FROM review_state r WHERE r.image_id = i.image_id AND r.decision = 'rejected')))
               ORDER BY i.image_id""",
            {"c": character},
        )

    def versions(self, character: str) -> list[dict[str, Any]]:
        """The character's versions, oldest first, with their composition by origin."""
        if not self.path.exists():
            return []
        return self.rows(
            """SELECT v.version_id, v.number, v.parent_version, v.n_images, v.manifest_sha256, v.frozen_at,
                      count(*) FILTER (WHERE i.origin = 'source') AS source,
                      count(*) FILTER (WHERE i.origin IN ('edit', 'augment')) AS enriched,
                      count(*) FILTER (WHERE i.origin = 'generate') AS synthetic
               FROM dataset_versions v JOIN dataset_members m USING (version_id) JOIN images i USING (image_id)
               WHERE v.character = ? GROUP BY ALL ORDER BY v.number""",
            [character],
        )

    def version_exists(self, version_id: str) -> bool:
        return self.path.exists() and bool(
            self.rows("SELECT 1 FROM dataset_versions WHERE version_id = ?", [version_id])
        )

    def version_members(self, version_id: str) -> list[dict[str, Any]]:
        """Members of a version (image id, caption, origin, store path), by image id."""
        return self.rows(
            """SELECT m.image_id, m.caption, i.origin, i.path FROM dataset_members m JOIN images i USING (image_id)
               WHERE m.version_id = ? ORDER BY m.image_id""",
            [version_id],
        )

    def version_member_faces(self, version_id: str, backend: str) -> list[dict[str, Any]]:
        """Members of a version with the face their newest ``backend`` identity score found (verdict, box,
        embedding; all None for a member never scored with it), by image id: what a sample is compared with to
        tell a copy (docs/evaluation.md)."""
        return self.rows(
            """SELECT m.image_id, i.path, s.verdict, s.face_box, s.embedding
               FROM dataset_members m JOIN images i USING (image_id)
               LEFT JOIN (SELECT * FROM identity_scores WHERE backend = $b
                          QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY scored_at DESC) = 1) s
                    USING (image_id)
               WHERE m.version_id = $v ORDER BY m.image_id""",
            {"v": version_id, "b": backend},
        )

    def version_composition(self, version_id: str) -> list[dict[str, Any]]:
        """Origin and prompt category of each member of a version (sources have category ``source``)."""
        return self.rows(
            """SELECT i.origin, coalesce(json_extract_string(d.params, '$.category'), 'source') AS category
               FROM dataset_members m JOIN images i USING (image_id)
               LEFT JOIN first_derivation d ON d.child_id = m.image_id
               WHERE m.version_id = ?""",
            [version_id],
        )
