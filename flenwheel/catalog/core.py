"""The catalog's core: opening the DuckDB file safely from many processes, migrations, runs, user SQL.

Rules that keep several processes safe:

* A write opens the file, runs one short transaction and closes it again; a second process that finds the
  file locked retries with jittered exponential backoff (up to ``lock_timeout_s``), so both succeed.
* Inserts are idempotent on natural keys, so a re-run or a retried batch adds nothing.
* Readers open the file read-only (and retry while a writer holds it).
* Within one process a lock serialises connections: DuckDB refuses a read-only and a read-write handle
  on the same file in one process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pandas as pd

import flenwheel
from flenwheel.catalog.schema import MIGRATIONS, SCHEMA_VERSION
from flenwheel.core.errors import AwaitingReview, DiskFull, FlenwheelError

T = TypeVar("T")


class CatalogError(FlenwheelError, RuntimeError):
    """The catalog cannot be used as asked; the message is meant for the user as it is."""


class CatalogBusy(CatalogError):
    """Another process held the catalog for longer than the lock timeout."""


def _is_lock_error(e: Exception) -> bool:
    return isinstance(e, duckdb.IOException) and "lock" in str(e).lower()


def now() -> datetime:
    return datetime.now(UTC)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def code_version() -> str:
    """Package version plus the git commit of this checkout (when it is one), e.g. ``0.1.0+g1a2b3c4``."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        version = flenwheel.__version__
        try:
            out = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=Path(flenwheel.__file__).parent,
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            if out.returncode == 0 and out.stdout.strip():
                version += f"+g{out.stdout.strip()}"
        except (OSError, subprocess.SubprocessError):
            pass
        _CODE_VERSION = version
    return _CODE_VERSION


_CODE_VERSION: str | None = None

PROCESS_LOCK = threading.RLock()
_MIGRATED: set[Path] = set()  # catalogs this process has already brought to SCHEMA_VERSION


class CatalogCore:
    """The catalog file at ``path``. Cheap to construct; opens the file only for each read or write."""

    def __init__(self, path: Path | str, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self._migrated = False
        self._run_status: dict[str, str] = {}

    # ------------------------------------------------------------------ connections

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        if read_only and not self.path.exists():
            raise CatalogError(f"no catalog at {self.path} yet: ingest some photos first (flenwheel ingest)")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.005
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.Error as e:
                if _is_lock_error(e):  # type: ignore[arg-type]
                    if time.monotonic() >= deadline:
                        raise CatalogBusy(
                            f"catalog {self.path} stayed locked by another process for {self.lock_timeout_s:.0f} s"
                        ) from None
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.5)
                    continue
                if "not a valid DuckDB database" in str(e) or "Invalid Input Error" in str(e):
                    raise CatalogError(f"{self.path} is not a DuckDB database (wrong file or corrupted)") from None
                raise CatalogError(f"cannot open catalog {self.path}: {e}") from None

    def write(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn`` in one write transaction; the whole transaction is retried if the file is locked."""
        with PROCESS_LOCK:
            self._ensure_schema()
            return self._transact(fn)

    def _transact(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        full = False
        try:
            return self._run_transaction(fn)
        except duckdb.Error as e:
            if "no space left" not in str(e).lower():
                raise
            full = True
        # Raised outside the handler, so the DiskFull carries no chained DuckDB error and no frame holding a
        # connection (the Python binding warns at exit about objects kept alive by a stored traceback).
        assert full
        raise DiskFull(
            f"no space left on the device: could not write the catalog {self.path} (nothing of this step was "
            "recorded); free space and run again"
        )

    def _run_transaction(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        con = self._connect(read_only=False)
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                result = fn(con)
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):  # a failed commit has already ended the transaction
                    con.execute("ROLLBACK")
                raise
            return result
        finally:
            with contextlib.suppress(duckdb.Error):
                con.close()
            del con

    def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn`` on a read-only connection."""
        with PROCESS_LOCK:
            con = self._connect(read_only=True)
            try:
                return fn(con)
            finally:
                con.close()

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection for several queries in a row (closed on exit)."""
        with PROCESS_LOCK:
            con = self._connect(read_only=True)
            try:
                yield con
            finally:
                con.close()

    def rows(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
        def run(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
            cur = con.execute(sql, params or [])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

        return self.read(run)

    def frame(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pd.DataFrame:
        return self.read(lambda con: con.execute(sql, params or []).df())

    # ------------------------------------------------------------------ schema

    def schema_version(self) -> int:
        def v(con: duckdb.DuckDBPyConnection) -> int:
            has = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_info'"
            ).fetchone()
            if not has or not has[0]:
                return 0
            row = con.execute("SELECT max(version) FROM schema_info").fetchone()
            return int(row[0] or 0) if row else 0

        return self.read(v) if self.path.exists() else 0

    def _ensure_schema(self) -> None:
        if self._migrated or (self.path.resolve() in _MIGRATED and self.path.exists()):
            return

        def migrate(con: duckdb.DuckDBPyConnection) -> None:
            con.execute("CREATE TABLE IF NOT EXISTS schema_info (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)")
            applied = {row[0] for row in con.execute("SELECT version FROM schema_info").fetchall()}
            current = max(applied, default=0)
            if current > SCHEMA_VERSION:
                raise CatalogError(
                    f"catalog {self.path} has schema version {current}, newer than this flenwheel "
                    f"({SCHEMA_VERSION}): upgrade flenwheel"
                )
            # Every known migration not applied yet, in order: versions written on parallel branches may arrive
            # out of order (a catalog at 8 still takes 7 when 7 lands), so each is self-contained.
            for version in sorted(v for v in MIGRATIONS if v not in applied):
                for statement in MIGRATIONS[version]:
                    con.execute(statement)
                con.execute("INSERT INTO schema_info VALUES (?, ?)", [version, now()])

        self._transact(migrate)
        self._migrated = True
        _MIGRATED.add(self.path.resolve())

    def migrate(self) -> int:
        """Create or upgrade the schema (idempotent); returns the schema version."""
        with PROCESS_LOCK:
            self._ensure_schema()
        return SCHEMA_VERSION

    # ------------------------------------------------------------------ runs

    @contextmanager
    def run(self, flow: str, config: dict[str, Any], prefect_flow_run_id: str | None = None) -> Iterator[str]:
        """Record a ``runs`` row around a block of work; the status follows how the block ends."""
        run_id = uuid.uuid4().hex
        self.write(
            lambda con: con.execute(
                "INSERT INTO runs (run_id, flow, prefect_flow_run_id, config, config_sha256, code_version,"
                " started_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'running')",
                [
                    run_id,
                    flow,
                    prefect_flow_run_id,
                    json.dumps(config, default=str, sort_keys=True),
                    sha256_json(config),
                    code_version(),
                    now(),
                ],
            )
        )
        status, error = "completed", None
        try:
            yield run_id
        except AwaitingReview:
            status = "awaiting_review"
            raise
        except BaseException as e:
            status, error = "failed", f"{type(e).__name__}: {e}"[:2000]
            raise
        finally:
            override = self._run_status.pop(run_id, None)
            status = override if override and status == "completed" else status
            self.write(
                lambda con: con.execute(
                    "UPDATE runs SET finished_at = ?, status = ?, error = ? WHERE run_id = ?",
                    [now(), status, error, run_id],
                )
            )

    def mark_awaiting_review(self, run_id: str) -> None:
        """A run that ends normally but stopped at a review gate is recorded as ``awaiting_review``."""
        self._run_status[run_id] = "awaiting_review"

    # ------------------------------------------------------------------ metrics

    def add_metrics(
        self, run_id: str, scope: str, scope_id: str, values: dict[str, float], step: int = 0, once: bool = False
    ) -> None:
        """Record measurements. ``once``: the value is a fact about the scope (a checkpoint's pass rate, an
        iteration's), recorded by whichever run gets there first, so a run re-doing work after a kill does
        not record it twice."""
        if not values:
            return
        stamp = now()
        rows = [(run_id, scope, scope_id, k, float(v), step, stamp) for k, v in values.items()]
        if not once:
            self.write(lambda con: con.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?)", rows))
            return
        self.write(
            lambda con: con.executemany(
                "INSERT INTO metrics SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM metrics"
                " WHERE scope = ? AND scope_id = ? AND name = ? AND step = ?)",
                [(*r, r[1], r[2], r[3], r[5]) for r in rows],
            )
        )

    # ------------------------------------------------------------------ user SQL

    def query_readonly(self, sql: str) -> pd.DataFrame:
        """Run a user's SQL read-only; anything but SELECT/EXPLAIN is refused before it runs."""
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as e:
            raise CatalogError(f"SQL error: {e}") from None
        if not statements:
            raise CatalogError("empty query")
        allowed = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
        for st in statements:
            if st.type not in allowed:
                raise CatalogError(
                    f"refused: the catalog is read-only here; only SELECT and EXPLAIN run (got {st.type.name})"
                )

        def run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            try:
                result = None
                for st in statements:
                    result = con.execute(st.query).df()
                return result
            except duckdb.Error as e:
                raise CatalogError(f"SQL error: {e}") from None

        return self.read(run)
