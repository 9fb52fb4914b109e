"""Images and the derivations that made them: the writer that keeps lineage consistent, and lineage queries.

Each image carries ``lineage_root``, the source photo its first-parent chain starts from (itself for sources
and text-to-image outputs), and each derivation row carries its child's root. The recursive ancestry and
descendant queries first narrow ``derivations`` to that root through an index, which keeps them in
milliseconds on a million-image catalog (docs/benchmarks.md). Chains are followed through every parent; the
narrowing is exact as long as multi-parent derivations join parents of one root, which holds for every
operation flenwheel performs (edits take one source image).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

import duckdb
import pandas as pd

from flenwheel.catalog.core import CatalogCore, CatalogError, now
from flenwheel.catalog.records import DerivationRecord, ImageRecord, Lineage, decode_json


class ImagesMixin(CatalogCore):
    """Writers and readers of ``images`` and ``derivations``."""

    def add_images(
        self,
        images: Sequence[ImageRecord],
        run_id: str | None,
        derivations: Sequence[DerivationRecord] = (),
        extra: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    ) -> dict[str, bool]:
        """Insert images (and the derivations that made them) in one transaction; ``extra`` writes rows that
        belong with them (an edit's checks and attempts) in the same transaction.

        Returns ``{image_id: inserted}``; ``False`` means the image was already catalogued. An image already
        catalogued for another character raises :class:`CatalogError` and nothing of the batch is written.
        """
        if not images:
            return {}
        by_child: dict[str, list[DerivationRecord]] = {}
        for d in derivations:
            by_child.setdefault(d.child_id, []).append(d)

        def write(con: duckdb.DuckDBPyConnection) -> dict[str, bool]:
            unique = list({im.image_id: im for im in images}.values())
            con.register("batch_ids", pd.DataFrame({"image_id": [im.image_id for im in unique]}))
            existing = dict(
                con.execute("SELECT image_id, character FROM images JOIN batch_ids USING (image_id)").fetchall()
            )
            con.unregister("batch_ids")
            clash = [
                (im, existing[im.image_id])
                for im in unique
                if im.image_id in existing and existing[im.image_id] != im.character
            ]
            if clash:
                im, other = clash[0]
                raise CatalogError(f"image {im.image_id[:12]} is already catalogued for character {other!r}")
            roots = self._roots_for(con, unique, by_child)
            stamp = now()
            new = [im for im in unique if im.image_id not in existing]
            if new:
                df = pd.DataFrame(
                    [
                        {**asdict(im), "lineage_root": roots[im.image_id], "run_id": run_id, "created_at": stamp}
                        for im in new
                    ]
                )
                con.register("new_images", df)
                # A plain INSERT of rows known to be new: this process holds the only write lock, and
                # DuckDB's INSERT OR IGNORE costs several times more on a large table.
                con.execute(
                    "INSERT INTO images (image_id, character, origin, path, width, height, source_name,"
                    " lineage_root, run_id, created_at) SELECT image_id, character, origin, path, width, height,"
                    " source_name::VARCHAR, lineage_root, run_id::VARCHAR, created_at FROM new_images"
                )
                con.unregister("new_images")
            if derivations:
                self._insert_derivations(con, derivations, roots, run_id, stamp)
            if extra is not None:
                extra(con)
            return {im.image_id: im.image_id not in existing for im in images}

        return self.write(write)

    @staticmethod
    def _roots_for(
        con: duckdb.DuckDBPyConnection,
        images: Sequence[ImageRecord],
        by_child: dict[str, list[DerivationRecord]],
    ) -> dict[str, str]:
        """The lineage root of each image: its first parent's root, or itself."""
        first_parent = {
            im.image_id: min(by_child[im.image_id], key=lambda d: d.parent_rank).parent_id
            for im in images
            if im.image_id in by_child
        }
        parents = sorted({p for p in first_parent.values() if p})
        known = (
            dict(
                con.execute(
                    "SELECT image_id, lineage_root FROM images WHERE image_id IN (SELECT unnest(?))", [parents]
                ).fetchall()
            )
            if parents
            else {}
        )
        roots: dict[str, str] = {}
        for im in images:
            parent = first_parent.get(im.image_id)
            if parent is None:
                roots[im.image_id] = im.image_id
            elif parent in known:
                roots[im.image_id] = known[parent]
            elif parent in roots:  # parent inserted earlier in the same batch
                roots[im.image_id] = roots[parent]
            else:
                raise CatalogError(f"parent image {parent[:12]} of {im.image_id[:12]} is not in the catalog")
        return roots

    @staticmethod
    def _insert_derivations(
        con: duckdb.DuckDBPyConnection,
        derivations: Sequence[DerivationRecord],
        roots: dict[str, str],
        run_id: str | None,
        stamp: datetime,
    ) -> None:
        rows = []
        for d in derivations:
            row = asdict(d)
            row["loras"] = json.dumps(d.loras, sort_keys=True)
            row["params"] = json.dumps(d.params, sort_keys=True, default=str)
            row["root_id"] = (
                roots.get(d.child_id)
                or con.execute("SELECT lineage_root FROM images WHERE image_id = ?", [d.child_id]).fetchone()[0]
            )
            row["run_id"] = run_id
            row["created_at"] = stamp
            rows.append(row)
        # Explicit casts: DuckDB infers a frame's column types, and an all-NULL column has none.
        df = pd.DataFrame(rows).drop_duplicates(subset=["child_id", "parent_rank", "job_key"])
        con.register("new_derivations", df)
        con.execute(
            """INSERT INTO derivations (child_id, parent_rank, parent_id, root_id, op, model_ref, loras,
                   prompt, prompt_id, negative_prompt, seed, steps, guidance, strength, params, job_key, run_id,
                   created_at)
               SELECT child_id, parent_rank, parent_id::VARCHAR, root_id, op, model_ref::VARCHAR, loras::JSON,
                   prompt::VARCHAR, prompt_id::VARCHAR, negative_prompt::VARCHAR, seed::BIGINT, steps::INTEGER,
                   guidance::DOUBLE, strength::DOUBLE, params::JSON, job_key::VARCHAR, run_id::VARCHAR, created_at
               FROM new_derivations n
               WHERE NOT EXISTS (SELECT 1 FROM derivations d
                                 WHERE d.child_id = n.child_id AND d.parent_rank = n.parent_rank
                                   AND d.job_key = n.job_key)"""
        )
        con.unregister("new_derivations")

    def image(self, image_id: str) -> dict[str, Any] | None:
        found = self.rows("SELECT * FROM images WHERE image_id = ?", [image_id])
        return found[0] if found else None

    def resolve_image_id(self, prefix: str) -> str:
        """A full image id from a unique prefix of at least 6 hex characters."""
        if len(prefix) < 6 or any(c not in "0123456789abcdef" for c in prefix.lower()):
            raise CatalogError(f"{prefix!r} is not an image id (at least 6 hex characters)")
        found = self.rows(
            "SELECT image_id FROM images WHERE image_id >= ? AND image_id < ? LIMIT 2",
            [prefix.lower(), prefix.lower() + "g"],
        )
        if not found:
            raise CatalogError(f"no image with id {prefix}")
        if len(found) > 1:
            raise CatalogError(f"image id prefix {prefix} is ambiguous: give more characters")
        return found[0]["image_id"]

    _LINEAGE_SQL = """
        WITH RECURSIVE
        part AS MATERIALIZED (
            SELECT * FROM derivations
            WHERE root_id = (SELECT lineage_root FROM images WHERE image_id = $img)),
        imgs AS MATERIALIZED (
            SELECT image_id, origin, character, path FROM images
            WHERE lineage_root = (SELECT lineage_root FROM images WHERE image_id = $img)),
        anc(image_id, depth) AS (
            SELECT $img::VARCHAR, 0
            UNION
            SELECT p.parent_id, a.depth + 1 FROM part p JOIN anc a ON p.child_id = a.image_id
            WHERE p.parent_id IS NOT NULL),
        dsc(image_id, depth) AS (
            SELECT $img::VARCHAR, 0
            UNION
            SELECT p.child_id, d.depth + 1 FROM part p JOIN dsc d ON p.parent_id = d.image_id)
        SELECT 'ancestor' AS direction, a.depth + 1 AS depth, p.*, i.origin, i.character, i.path,
               r.flow AS run_flow, r.started_at AS run_started_at, r.config_sha256 AS run_config_sha256,
               r.code_version AS run_code_version
        FROM anc a JOIN part p ON p.child_id = a.image_id
        LEFT JOIN imgs i ON i.image_id = p.child_id LEFT JOIN runs r ON r.run_id = p.run_id
        UNION ALL
        SELECT 'descendant', d.depth, p.*, i.origin, i.character, i.path,
               r.flow, r.started_at, r.config_sha256, r.code_version
        FROM dsc d JOIN part p ON p.child_id = d.image_id
        LEFT JOIN imgs i ON i.image_id = p.child_id LEFT JOIN runs r ON r.run_id = p.run_id
        WHERE d.depth > 0
        ORDER BY direction, depth, parent_rank
    """

    def lineage(self, image_id: str) -> Lineage:
        """Full ancestry (every step to the source, with all parameters and runs) and all descendants."""

        def run(con: duckdb.DuckDBPyConnection) -> Lineage:
            img = con.execute("SELECT * FROM images WHERE image_id = ?", [image_id])
            cols = [d[0] for d in img.description]
            row = img.fetchone()
            if row is None:
                raise CatalogError(f"no image with id {image_id}")
            cur = con.execute(self._LINEAGE_SQL, {"img": image_id})
            names = [d[0] for d in cur.description]
            steps = [decode_json(dict(zip(names, r, strict=True))) for r in cur.fetchall()]
            return Lineage(
                image=dict(zip(cols, row, strict=True)),
                ancestors=[s for s in steps if s["direction"] == "ancestor"],
                descendants=[s for s in steps if s["direction"] == "descendant"],
            )

        return self.read(run)

    def image_owners(self, image_ids: Sequence[str]) -> dict[str, str]:
        """``{image_id: character}`` of the given ids that are already catalogued."""
        if not self.path.exists() or not image_ids:
            return {}
        rows = self.rows(
            "SELECT image_id, character FROM images WHERE image_id IN (SELECT unnest(?))", [list(image_ids)]
        )
        return {r["image_id"]: r["character"] for r in rows}

    def images_with_face_box(self, image_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Path and latest identity face box of each image (edits start from a known face)."""
        rows = self.rows(
            """SELECT i.image_id, i.path, s.face_box FROM images i
               LEFT JOIN latest_identity s ON s.image_id = i.image_id
               WHERE i.image_id IN (SELECT unnest(?))""",
            [sorted(set(image_ids))],
        )
        return {r["image_id"]: r for r in rows}

    def done_job_keys(self, character: str, op: str) -> set[str]:
        """Job keys of the character's derivations made by ``op`` (an edit or generation job is done when its
        key is here)."""
        if not self.path.exists():
            return set()
        rows = self.rows(
            "SELECT DISTINCT d.job_key FROM derivations d JOIN images i ON i.image_id = d.child_id"
            " WHERE i.character = ? AND d.op = ?",
            [character, op],
        )
        return {r["job_key"] for r in rows}

    def image_ids(self, character: str, origins: Sequence[str]) -> list[str]:
        """The character's images of the given origins, by id."""
        rows = self.rows(
            "SELECT image_id FROM images WHERE character = ? AND list_contains(?, origin) ORDER BY image_id",
            [character, list(origins)],
        )
        return [r["image_id"] for r in rows]

    def made_by_prompt(self, image_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Store path and the prompt id that made each image (None for a source photo), in the order given."""
        rows = self.rows(
            """SELECT i.image_id, i.path, d.prompt_id FROM images i
               LEFT JOIN first_derivation d ON d.child_id = i.image_id WHERE i.image_id IN (SELECT unnest(?))""",
            [list(image_ids)],
        )
        by_id = {r["image_id"]: r for r in rows}
        return [by_id[i] for i in image_ids if i in by_id]

    def generated_with(self, lora_id: str) -> list[str]:
        """Ids of the images generated with the character LoRA ``lora_id``."""
        rows = self.rows(
            "SELECT DISTINCT child_id FROM derivations"
            " WHERE op = 'generate' AND json_extract_string(params, '$.lora_id') = ? ORDER BY child_id",
            [lora_id],
        )
        return [r["child_id"] for r in rows]
