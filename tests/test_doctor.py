"""`flenwheel doctor` and catalog backups: what they find, what --fix removes, and a restore that loses nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flenwheel.catalog import Catalog, CatalogError
from flenwheel.core.files import temp_prefix
from flenwheel.store import doctor
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.objects import object_path
from flenwheel.store.workspace import Workspace
from tests.conftest import snapshot


@pytest.fixture
def stocked(ws: Workspace, catalog: Catalog, faces: Path) -> Workspace:
    ingest_paths(ws, catalog, "obama", [faces / "obama" / "obama_1.jpg", faces / "obama" / "obama_2.jpg"], None)
    return ws


def kinds(report: doctor.Report) -> list[str]:
    return sorted(f.kind for f in report.problems)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_healthy_root_is_healthy(stocked: Workspace, catalog: Catalog) -> None:
    report = doctor.examine(stocked, catalog)
    assert report.healthy and report.checked["images"] == 2


def test_doctor_finds_and_fixes_what_is_wrong(stocked: Workspace, catalog: Catalog) -> None:
    ws = stocked
    first, second = (r["image_id"] for r in catalog.all_images())
    object_path(ws.root, first).unlink()  # a catalogued file lost
    object_path(ws.root, second).write_bytes(b"not the stored bytes")  # a catalogued file changed
    orphan = object_path(ws.root, "ab" * 32)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"x")  # a stored file no row names
    leftover = object_path(ws.root, "cd" * 32)
    leftover.parent.mkdir(parents=True, exist_ok=True)
    stale_temp = leftover.parent / f".{leftover.name}.tmp-{dead_pid()}-abc"
    stale_temp.write_bytes(b"half")  # a killed writer's temporary file
    live_temp = leftover.parent / f"{temp_prefix(leftover.name)}xyz"
    live_temp.write_bytes(b"in progress")  # this process is "writing" it: not a leftover
    lock = ws.root / "locks" / "obama.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"holder": "a killed run", "pid": 1}))  # not held by anyone

    report = doctor.examine(ws, catalog, grace_s=0)
    assert kinds(report) == ["bad_hash", "missing_object", "orphan", "stale_lock", "temporary"]
    fixed = doctor.examine(ws, catalog, fix=True, grace_s=0)
    assert len(fixed.fixed) == 3  # orphan, temporary, stale lock; catalogued files are never touched
    assert not orphan.exists() and not stale_temp.exists() and live_temp.exists() and lock.read_text() == ""
    assert object_path(ws.root, second).exists()
    assert kinds(doctor.examine(ws, catalog, grace_s=0)) == ["bad_hash", "missing_object"]


def test_fix_spares_young_orphans(stocked: Workspace, catalog: Catalog) -> None:
    """A running command may have stored a file it has not recorded yet: --fix waits out the grace period."""
    orphan = object_path(stocked.root, "ef" * 32)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"x")
    report = doctor.examine(stocked, catalog, fix=True, grace_s=600)
    assert kinds(report) == ["orphan"] and not report.fixed and orphan.exists()
    old = orphan.stat().st_mtime - 3600
    os.utime(orphan, (old, old))
    assert doctor.examine(stocked, catalog, fix=True, grace_s=600).fixed and not orphan.exists()


def test_doctor_command_exit_status(cli, stocked: Workspace) -> None:
    assert cli("doctor").exit_code == 0
    orphan = object_path(stocked.root, "12" * 32)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"x")
    found = cli("doctor", "--grace", "0")
    assert found.exit_code == 1 and "ORPHAN" in found.stdout and "doctor --fix" in found.stdout
    assert cli("doctor", "--fix", "--grace", "0").exit_code == 0 and not orphan.exists()


def test_backup_and_restore_into_a_fresh_root(cli, stocked: Workspace, catalog: Catalog, tmp_path: Path) -> None:
    first = catalog.all_images()[0]["image_id"]
    for decision in ("approved", "rejected"):
        catalog.add_reviews(
            [{"image_id": first, "gate_id": "obama:enrich", "decision": decision, "source": "cli"}], None
        )
    backup = tmp_path / "backup"
    assert cli("catalog", "backup", str(backup)).exit_code == 0
    again = cli("catalog", "backup", str(backup))
    assert again.exit_code == 2 and "already exists" in again.stderr
    fresh = Catalog(tmp_path / "fresh" / "catalog.duckdb")
    fresh.restore(backup)
    assert snapshot(fresh.path) == snapshot(stocked.catalog_path)
    fresh.add_reviews(
        [{"image_id": "x" * 64, "gate_id": "obama:enrich", "decision": "approved", "source": "cli"}], None
    )
    seqs = [r["seq"] for r in fresh.rows("SELECT seq FROM reviews")]
    assert len(seqs) == len(set(seqs))  # the sequence continues where the backup left it
    with pytest.raises(CatalogError, match="pass --replace"):
        fresh.restore(backup)
    fresh.restore(backup, replace=True)
    assert snapshot(fresh.path) == snapshot(stocked.catalog_path)
    with pytest.raises(CatalogError, match="not a catalog backup"):
        fresh.restore(tmp_path, replace=True)


def test_fix_says_what_it_removed_what_it_kept_and_why(cli, stocked: Workspace) -> None:
    """Issue 28.4: a young orphan kept by --fix is named with the reason and the way out (--grace 0)."""
    young, old = object_path(stocked.root, "34" * 32), object_path(stocked.root, "56" * 32)
    for orphan in (young, old):
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(b"x")
    hour_ago = old.stat().st_mtime - 3600
    os.utime(old, (hour_ago, hour_ago))
    fixed = cli("doctor", "--fix")  # the default grace: 600 s
    assert fixed.exit_code == 1 and not old.exists() and young.exists()
    assert f"FIXED                {old.relative_to(stocked.root)}" in fixed.stdout
    assert "removed: 1 orphan" in fixed.stdout
    assert re.search(r"kept: written \d+ s ago, younger than --grace 600 s", fixed.stdout)
    assert "kept 1 orphan(s) younger than --grace (600 s)" in fixed.stdout
    assert "`flenwheel doctor --fix --grace 0`" in fixed.stdout
    again = cli("doctor", "--fix", "--grace", "0")
    assert again.exit_code == 0 and not young.exists() and "removed: 1 orphan" in again.stdout


def test_a_changed_file_says_how_to_get_it_back_and_the_advice_works(
    cli, stocked: Workspace, catalog: Catalog, faces: Path, tmp_path: Path
) -> None:
    """Issue 22.8: BAD_HASH says what to do (a store copy with the catalog backup, or ingest the source photo
    again) and that --fix leaves catalogued files alone; doing what it says makes the root healthy."""
    [image] = [r for r in catalog.all_images() if r["source_name"] == "obama_1.jpg"]
    changed = stocked.root / image["path"]
    changed.write_bytes(b"not the stored bytes")
    found = cli("doctor", "--fix", "--grace", "0")
    assert found.exit_code == 1 and "BAD_HASH" in found.stdout and changed.read_bytes() == b"not the stored bytes"
    assert f"move {image['path']} out of the data root, then ingest obama_1.jpg again" in found.stdout
    assert "flenwheel ingest obama PATH/obama_1.jpg" in found.stdout
    assert "what to do:" in found.stdout and "`flenwheel catalog backup` saves the catalog's rows" in found.stdout
    assert "it never touches a catalogued file" in found.stdout and "removed: nothing" in found.stdout

    changed.rename(tmp_path / "changed.png")  # as the advice says: out of the data root ...
    assert cli("ingest", "obama", str(faces / "obama" / "obama_1.jpg")).exit_code == 0  # ... and ingest again
    healthy = cli("doctor")
    assert healthy.exit_code == 0 and "0 problem(s)" in healthy.stdout and "what to do" not in healthy.stdout
