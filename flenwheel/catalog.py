"""The DuckDB catalog: schema, the one writer, lineage queries.

Every other module records what it did through this one. Rules that keep several processes safe:

* A write opens the file, runs one short transaction and closes it again; a second process that finds the
  file locked retries with jittered exponential backoff (up to ``lock_timeout_s``), so both succeed.
* Inserts are idempotent on natural keys (``INSERT OR IGNORE``), so a re-run or a retried batch adds nothing.
* Readers open the file read-only (and retry while a writer holds it).
* Within one process a lock serialises connections: DuckDB refuses a read-only and a read-write handle
  on the same file in one process.

Lineage: each image carries ``lineage_root``, the source photo its first-parent chain starts from (itself
for sources and text-to-image outputs), and each derivation row carries its child's root. The recursive
ancestry/descendant queries first narrow ``derivations`` to that root through an index, which keeps them in
milliseconds on a million-image catalog (see docs/benchmarks.md). Chains are followed through every
parent; the narrowing is exact as long as multi-parent derivations join parents of one root, which holds
for every operation flenwheel performs (edits take one source image).
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pandas as pd

import flenwheel
from flenwheel.errors import FlenwheelError

T = TypeVar("T")

SCHEMA_VERSION = 2

ORIGINS = ("source", "edit", "augment", "generate")
VERDICTS = ("pass", "fail", "no_face", "multi_face", "small_face", "low_confidence")

_SCHEMA_V1 = [
    """CREATE TABLE images (
        image_id     VARCHAR PRIMARY KEY,          -- sha256 of the stored PNG bytes
        character    VARCHAR NOT NULL,
        origin       VARCHAR NOT NULL CHECK (origin IN ('source','edit','augment','generate')),
        path         VARCHAR NOT NULL,             -- relative to the data root
        width        INTEGER NOT NULL,
        height       INTEGER NOT NULL,
        source_name  VARCHAR,                      -- original file name, for sources
        lineage_root VARCHAR NOT NULL,
        run_id       VARCHAR,
        created_at   TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)""",
    "CREATE INDEX images_root ON images(lineage_root)",
    """CREATE TABLE derivations (
        child_id        VARCHAR NOT NULL,
        parent_rank     INTEGER NOT NULL DEFAULT 0,  -- 0 for the main input; >0 for extra condition images
        parent_id       VARCHAR,                     -- NULL for text-to-image
        root_id         VARCHAR NOT NULL,            -- lineage_root of the child
        op              VARCHAR NOT NULL,
        model_ref       VARCHAR,                     -- hub id@revision or path@sha256
        loras           JSON,
        prompt          VARCHAR,
        prompt_id       VARCHAR,
        negative_prompt VARCHAR,
        seed            BIGINT,
        steps           INTEGER,
        guidance        DOUBLE,
        strength        DOUBLE,
        params          JSON,
        job_key         VARCHAR NOT NULL DEFAULT '', -- hash of everything that determines the output
        run_id          VARCHAR,
        created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        -- two jobs may make the same picture: both are recorded
        PRIMARY KEY (child_id, parent_rank, job_key))""",
    "CREATE INDEX derivations_child ON derivations(child_id)",
    "CREATE INDEX derivations_parent ON derivations(parent_id)",
    "CREATE INDEX derivations_root ON derivations(root_id)",
    """CREATE TABLE reference_sets (
        reference_set_id VARCHAR PRIMARY KEY,
        character        VARCHAR NOT NULL,
        backend          VARCHAR NOT NULL,
        image_ids        VARCHAR[] NOT NULL,
        embeddings       FLOAT[][] NOT NULL,        -- one per image_ids entry, same order
        threshold        DOUBLE,                    -- calibrated (or default) threshold of this set
        calibration      JSON,                      -- pair statistics and how the threshold was chosen
        created_at       TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)""",
    """CREATE TABLE identity_scores (
        image_id         VARCHAR NOT NULL,
        backend          VARCHAR NOT NULL,
        reference_set_id VARCHAR NOT NULL,
        verdict          VARCHAR NOT NULL
                         CHECK (verdict IN ('pass','fail','no_face','multi_face','small_face','low_confidence')),
        matched          BOOLEAN,                   -- similarity >= threshold (also for multi_face)
        similarity       DOUBLE,                    -- the deciding value (max or mean)
        similarity_max   DOUBLE,
        similarity_mean  DOUBLE,
        threshold        DOUBLE,
        n_faces          INTEGER,
        face_box         INTEGER[],                 -- x0, y0, x1, y1 in stored-image pixels
        det_score        DOUBLE,
        yaw              DOUBLE,                    -- landmark-based head-turn estimate, degrees
        embedding        FLOAT[],
        run_id           VARCHAR,
        scored_at        TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        PRIMARY KEY (image_id, backend, reference_set_id))""",
    "CREATE SEQUENCE reviews_seq",
    """CREATE TABLE reviews (
        seq        BIGINT PRIMARY KEY DEFAULT nextval('reviews_seq'),
        image_id   VARCHAR NOT NULL,
        gate_id    VARCHAR NOT NULL,
        decision   VARCHAR NOT NULL CHECK (decision IN ('approved','rejected')),
        reviewer   VARCHAR,
        source     VARCHAR NOT NULL CHECK (source IN ('fiftyone','cli','auto')),
        note       VARCHAR,
        run_id     VARCHAR,
        decided_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)""",
    """CREATE TABLE dataset_versions (
        version_id      VARCHAR PRIMARY KEY,        -- '<character>@v<number>'
        character       VARCHAR NOT NULL,
        number          INTEGER NOT NULL,
        parent_version  VARCHAR,
        created_by_run  VARCHAR,
        manifest_path   VARCHAR,
        manifest_sha256 VARCHAR NOT NULL,
        n_images        INTEGER NOT NULL,
        frozen_at       TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        UNIQUE (character, number))""",
    """CREATE TABLE dataset_members (
        version_id VARCHAR NOT NULL,
        image_id   VARCHAR NOT NULL,
        caption    VARCHAR,
        PRIMARY KEY (version_id, image_id))""",
    """CREATE TABLE loras (
        lora_id           VARCHAR PRIMARY KEY,
        character         VARCHAR NOT NULL,
        kind              VARCHAR NOT NULL CHECK (kind IN ('flux','qwen_edit')),
        base_model_ref    VARCHAR NOT NULL,
        dataset_version   VARCHAR,
        hyperparams       JSON,
        steps             INTEGER,
        path              VARCHAR NOT NULL,
        sha256            VARCHAR NOT NULL,
        comfy_path        VARCHAR,
        chosen_checkpoint INTEGER,
        run_id            VARCHAR,
        created_at        TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)""",
    """CREATE TABLE runs (
        run_id              VARCHAR PRIMARY KEY,
        flow                VARCHAR NOT NULL,
        prefect_flow_run_id VARCHAR,
        config              JSON,
        config_sha256       VARCHAR,
        code_version        VARCHAR,
        started_at          TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        finished_at         TIMESTAMPTZ,
        status              VARCHAR NOT NULL CHECK (status IN ('running','completed','failed','awaiting_review')),
        error               VARCHAR)""",
    """CREATE TABLE metrics (
        run_id      VARCHAR NOT NULL,
        scope       VARCHAR NOT NULL,   -- dataset_version / lora / iteration / stage / checkpoint ...
        scope_id    VARCHAR NOT NULL,
        name        VARCHAR NOT NULL,
        value       DOUBLE,
        step        INTEGER NOT NULL DEFAULT 0,
        recorded_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        PRIMARY KEY (run_id, scope, scope_id, name, step))""",
    # The effective decision per image and gate: the latest one.
    """CREATE VIEW review_state AS
        SELECT * EXCLUDE (rn) FROM (
            SELECT *, row_number() OVER (PARTITION BY image_id, gate_id ORDER BY decided_at DESC, seq DESC) AS rn
            FROM reviews) WHERE rn = 1""",
    # (before, instruction, after) for approved edits: flywheel 2's training data.
    """CREATE VIEW triplets AS
        SELECT d.parent_id AS before_id, d.prompt AS instruction, d.child_id AS after_id,
               i.character, d.op, d.prompt_id, d.model_ref, d.seed, r.gate_id, r.decided_at
        FROM derivations d
        JOIN images i ON i.image_id = d.child_id
        JOIN review_state r ON r.image_id = d.child_id AND r.decision = 'approved'
        WHERE d.op IN ('edit', 'augment') AND d.parent_id IS NOT NULL AND d.parent_rank = 0""",
]

# v2: flywheel iterations. One row per character and iteration number says which dataset version and LoRA
# the iteration made and where its report is, so a re-run of the flywheel resumes from the catalog alone.
_SCHEMA_V2 = [
    """CREATE TABLE iterations (
        character       VARCHAR NOT NULL,
        number          INTEGER NOT NULL,
        dataset_version VARCHAR,
        lora_id         VARCHAR,
        status          VARCHAR NOT NULL CHECK (status IN ('running','awaiting_review','completed')),
        report_path     VARCHAR,
        run_id          VARCHAR,
        started_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        completed_at    TIMESTAMPTZ,
        PRIMARY KEY (character, number))""",
]

MIGRATIONS: dict[int, list[str]] = {1: _SCHEMA_V1, 2: _SCHEMA_V2}


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


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    character: str
    origin: str
    path: str
    width: int
    height: int
    source_name: str | None = None


@dataclass(frozen=True)
class DerivationRecord:
    """One parent -> child step, with every parameter needed to reproduce the child."""

    child_id: str
    parent_id: str | None
    op: str
    model_ref: str | None = None
    loras: list[dict[str, Any]] = field(default_factory=list)
    prompt: str | None = None
    prompt_id: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    parent_rank: int = 0
    job_key: str = ""


@dataclass
class Lineage:
    image: dict[str, Any]
    ancestors: list[dict[str, Any]]  # nearest first: depth 1 = the parent step
    descendants: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "ancestors": self.ancestors, "descendants": self.descendants}


# --------------------------------------------------------------------------- the catalog

_PROCESS_LOCK = threading.RLock()
_MIGRATED: set[Path] = set()  # catalogs this process has already brought to SCHEMA_VERSION


class Catalog:
    """The catalog at ``path``. Cheap to construct; opens the file only for each read or write."""

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
        with _PROCESS_LOCK:
            self._ensure_schema()
            return self._transact(fn)

    def _transact(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        con = self._connect(read_only=False)
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                result = fn(con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return result
        finally:
            con.close()

    def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn`` on a read-only connection."""
        with _PROCESS_LOCK:
            con = self._connect(read_only=True)
            try:
                return fn(con)
            finally:
                con.close()

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection for several queries in a row (closed on exit)."""
        with _PROCESS_LOCK:
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
            current = con.execute("SELECT coalesce(max(version), 0) FROM schema_info").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise CatalogError(
                    f"catalog {self.path} has schema version {current}, newer than this flenwheel "
                    f"({SCHEMA_VERSION}): upgrade flenwheel"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    con.execute(statement)
                con.execute("INSERT INTO schema_info VALUES (?, ?)", [version, now()])

        self._transact(migrate)
        self._migrated = True
        _MIGRATED.add(self.path.resolve())

    def migrate(self) -> int:
        """Create or upgrade the schema (idempotent); returns the schema version."""
        with _PROCESS_LOCK:
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

    # ------------------------------------------------------------------ images & derivations

    def add_images(
        self,
        images: Sequence[ImageRecord],
        run_id: str | None,
        derivations: Sequence[DerivationRecord] = (),
    ) -> dict[str, bool]:
        """Insert images (and the derivations that made them) in one transaction.

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

    # ------------------------------------------------------------------ identity

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
        return _decode_json(found[0], ("calibration",)) if found else None

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

    # ------------------------------------------------------------------ reviews

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

    # ------------------------------------------------------------------ dataset versions

    def freeze_version(
        self,
        character: str,
        members: Sequence[tuple[str, str]],
        manifest_sha256: str,
        manifest_path: str | None,
        run_id: str | None,
    ) -> tuple[str, bool]:
        """Record a frozen version with ``(image_id, caption)`` members; returns ``(version_id, created)``.

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
                " manifest_path, manifest_sha256, n_images, frozen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                ],
            )
            df = pd.DataFrame({"image_id": [m[0] for m in members], "caption": [m[1] for m in members]})
            con.register("new_members", df)
            con.execute("INSERT INTO dataset_members SELECT ?, image_id, caption FROM new_members", [version_id])
            con.unregister("new_members")
            return version_id, True

        return self.write(write)

    # ------------------------------------------------------------------ iterations

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

    # ------------------------------------------------------------------ metrics

    def add_metrics(self, run_id: str, scope: str, scope_id: str, values: dict[str, float], step: int = 0) -> None:
        if not values:
            return
        stamp = now()
        rows = [(run_id, scope, scope_id, k, float(v), step, stamp) for k, v in values.items()]
        self.write(lambda con: con.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?)", rows))

    # ------------------------------------------------------------------ queries

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
            steps = [_decode_json(dict(zip(names, r, strict=True))) for r in cur.fetchall()]
            return Lineage(
                image=dict(zip(cols, row, strict=True)),
                ancestors=[s for s in steps if s["direction"] == "ancestor"],
                descendants=[s for s in steps if s["direction"] == "descendant"],
            )

        return self.read(run)

    def characters_summary(self) -> pd.DataFrame:
        """Per character: images by origin and identity verdicts (latest score per image)."""
        return self.frame(
            """WITH latest AS (
                   SELECT * EXCLUDE (rn) FROM (
                       SELECT image_id, verdict,
                              row_number() OVER (PARTITION BY image_id ORDER BY scored_at DESC) AS rn
                       FROM identity_scores) WHERE rn = 1)
               SELECT i.character,
                      count(*) AS images,
                      count(*) FILTER (WHERE origin = 'source') AS source,
                      count(*) FILTER (WHERE origin = 'edit') AS edit,
                      count(*) FILTER (WHERE origin = 'augment') AS augment,
                      count(*) FILTER (WHERE origin = 'generate') AS generate,
                      count(l.verdict) FILTER (WHERE l.verdict = 'pass') AS id_pass,
                      count(l.verdict) FILTER (WHERE l.verdict <> 'pass') AS id_other,
                      count(*) FILTER (WHERE l.verdict IS NULL) AS unscored
               FROM images i LEFT JOIN latest l USING (image_id)
               GROUP BY i.character ORDER BY i.character"""
        )


class AwaitingReview(Exception):
    """Raised to stop a run that waits for human review; the run is recorded as ``awaiting_review``."""


def _decode_json(row: dict[str, Any], keys: Sequence[str] = ("loras", "params")) -> dict[str, Any]:
    for key in keys:
        if isinstance(row.get(key), str):
            row[key] = json.loads(row[key])
    return row
