"""Keeping the catalog healthy: integrity questions for ``flenwheel doctor``, backups and restores.

A backup is DuckDB's own ``EXPORT DATABASE`` (schema, data as Parquet, sequences), taken under the process
lock on a read-only connection, so it is a consistent snapshot even while other processes wait to write. A
restore imports it into a new catalog file and swaps it in atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import duckdb

from flenwheel.catalog.core import PROCESS_LOCK, CatalogCore, CatalogError
from flenwheel.core.files import clear_leftovers, temp_prefix


class MaintenanceMixin(CatalogCore):
    """Integrity queries, backup and restore."""

    def all_images(self) -> list[dict[str, Any]]:
        """Every catalogued image: id (the sha256 of its bytes), store path, and what says how to get it back
        (character, origin, the source photo's file name)."""
        if not self.path.exists():
            return []
        return self.rows("SELECT image_id, path, character, origin, source_name FROM images ORDER BY image_id")

    def dangling_derivations(self) -> list[dict[str, Any]]:
        """Derivations whose child or (non-null) parent is not a catalogued image."""
        return self.rows(
            """SELECT d.child_id, d.parent_id, d.op FROM derivations d
               WHERE NOT EXISTS (SELECT 1 FROM images i WHERE i.image_id = d.child_id)
                  OR (d.parent_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM images i WHERE i.image_id = d.parent_id))
               ORDER BY d.child_id"""
        )

    def dangling_members(self) -> list[dict[str, Any]]:
        """Dataset members that are not catalogued images."""
        return self.rows(
            """SELECT m.version_id, m.image_id FROM dataset_members m
               WHERE NOT EXISTS (SELECT 1 FROM images i WHERE i.image_id = m.image_id) ORDER BY ALL"""
        )

    def all_loras(self) -> list[dict[str, Any]]:
        return self.rows("SELECT lora_id, path, comfy_path, sha256 FROM loras ORDER BY lora_id")

    def open_runs(self) -> list[dict[str, Any]]:
        """Runs recorded as running: working right now, or ended without recording how (killed)."""
        return self.rows("SELECT run_id, flow, started_at FROM runs WHERE status = 'running' ORDER BY started_at")

    # ------------------------------------------------------------------ backup and restore

    def backup(self, target: Path) -> Path:
        """Export the whole catalog into the new folder ``target`` (refused if it exists)."""
        if not self.path.exists():
            raise CatalogError(f"no catalog at {self.path} to back up")
        if target.exists():
            raise CatalogError(f"{target} already exists: back up into a new folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        clear_leftovers(target)
        staging = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), dir=target.parent))
        try:
            self.read(lambda con: con.execute(f"EXPORT DATABASE '{_sql_path(staging)}' (FORMAT parquet)"))
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def restore(self, source: Path, replace: bool = False) -> None:
        """Make the catalog the one backed up in ``source``; an existing catalog is kept unless ``replace``."""
        if not (source / "schema.sql").is_file() or not (source / "load.sql").is_file():
            raise CatalogError(f"{source} is not a catalog backup (no schema.sql and load.sql)")
        if self.path.exists() and not replace:
            raise CatalogError(f"{self.path} exists: pass --replace to overwrite it with the backup")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clear_leftovers(self.path)
        fd, staging = tempfile.mkstemp(prefix=temp_prefix(self.path.name), dir=self.path.parent)
        os.close(fd)
        os.unlink(staging)  # DuckDB creates the file itself
        with PROCESS_LOCK:
            try:
                con = duckdb.connect(staging)
                try:
                    con.execute(f"IMPORT DATABASE '{_sql_path(source)}'")
                finally:
                    con.close()
                os.replace(staging, self.path)
                Path(str(self.path) + ".wal").unlink(missing_ok=True)
            except duckdb.Error as e:
                raise CatalogError(f"cannot restore from {source}: {e}") from None
            finally:
                Path(staging).unlink(missing_ok=True)
                Path(staging + ".wal").unlink(missing_ok=True)


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
