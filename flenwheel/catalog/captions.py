"""Training captions: one row per caption an image was given (a VLM's, a reviewer's edit), the latest wins."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import duckdb
import pandas as pd

from flenwheel.catalog.core import CatalogCore, now


class CaptionsMixin(CatalogCore):
    def add_captions(self, rows: Sequence[dict[str, Any]], run_id: str | None) -> int:
        """Record captions (image_id, caption, source[, model_ref, params, author]) in one transaction.

        A caption equal to the image's current one is not written again, so captioning twice or syncing an
        unchanged FiftyOne field adds nothing. Returns how many rows were written.
        """
        if not rows:
            return 0

        def write(con: duckdb.DuckDBPyConnection) -> int:
            con.register("incoming", pd.DataFrame({"image_id": [r["image_id"] for r in rows]}))
            current = dict(
                con.execute(
                    "SELECT c.image_id, c.caption FROM latest_captions c JOIN incoming USING (image_id)"
                ).fetchall()
            )
            con.unregister("incoming")
            new, seen = [], set()
            for r in rows:
                if current.get(r["image_id"]) == r["caption"] or r["image_id"] in seen:
                    continue
                seen.add(r["image_id"])
                params = json.dumps(r.get("params") or {}, sort_keys=True)
                new.append(
                    [
                        r["image_id"],
                        r["caption"],
                        r["source"],
                        r.get("model_ref"),
                        params,
                        r.get("author"),
                        run_id,
                        now(),
                    ]
                )
            if new:
                con.executemany(
                    "INSERT INTO captions (image_id, caption, source, model_ref, params, author, run_id, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    new,
                )
            return len(new)

        return self.write(write)

    def latest_captions(self, image_ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """The current caption row of each image (all captioned images when ``image_ids`` is None)."""
        if not self.path.exists():
            return {}
        if image_ids is None:
            rows = self.rows("SELECT * FROM latest_captions")
        else:
            rows = self.rows("SELECT * FROM latest_captions WHERE list_contains(?, image_id)", [list(image_ids)])
        return {r["image_id"]: r for r in rows}

    def caption_history(self, image_id: str) -> list[dict[str, Any]]:
        """Every caption ``image_id`` was given, oldest first."""
        return self.rows("SELECT * FROM captions WHERE image_id = ? ORDER BY seq", [image_id])
