"""Flywheel iterations: which dataset version and LoRA each made, and where its report is."""

from __future__ import annotations

from typing import Any

import duckdb

from flenwheel.catalog.core import CatalogCore, CatalogError, now


class IterationsMixin(CatalogCore):
    """Reader and writer of ``iterations``."""

    def iterations(self, character: str) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return self.rows("SELECT * FROM iterations WHERE character = ? ORDER BY number", [character])

    def update_iteration(self, character: str, number: int, run_id: str | None, **fields: Any) -> None:
        """Create or update an iteration row; only the given fields change (``status`` defaults to running)."""
        allowed = {"dataset_version", "lora_id", "status", "report_path", "completed_at"}
        unknown = set(fields) - allowed
        if unknown:
            raise CatalogError(f"unknown iteration field(s) {', '.join(sorted(unknown))}")

        def write(con: duckdb.DuckDBPyConnection) -> None:
            con.execute(
                "INSERT INTO iterations (character, number, status, run_id, started_at) VALUES (?, ?, 'running', ?, ?)"
                " ON CONFLICT DO NOTHING",
                [character, number, run_id, now()],
            )
            for key, value in fields.items():
                con.execute(
                    f"UPDATE iterations SET {key} = ? WHERE character = ? AND number = ?",
                    [value, character, number],
                )

        self.write(write)
