"""Catalog: migration, idempotent writes, lineage, read-only SQL, runs, concurrent writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from flenwheel.catalog import (
    SCHEMA_VERSION,
    Catalog,
    CatalogError,
    DerivationRecord,
    ImageRecord,
)
from flenwheel.catalog.schema import MIGRATIONS
from flenwheel.core.errors import AwaitingReview
from flenwheel.store.workspace import Workspace
from tests.conftest import PROJECT, encode, noise_image

TABLES = {
    "images",
    "derivations",
    "identity_scores",
    "reviews",
    "dataset_versions",
    "dataset_members",
    "loras",
    "runs",
    "metrics",
    "reference_sets",
    "schema_info",
    "image_attributes",
    "enrichment_plans",
}


def img(i: int, character: str = "tester", origin: str = "source") -> ImageRecord:
    iid = f"{i:064x}"
    return ImageRecord(iid, character, origin, f"objects/{iid[:2]}/{iid}.png", 512, 512)


def test_migration_is_idempotent(catalog: Catalog) -> None:
    assert catalog.schema_version() == 0
    catalog.migrate()
    Catalog(catalog.path).migrate()
    assert catalog.schema_version() == SCHEMA_VERSION
    tables = {r["table_name"] for r in catalog.rows("SELECT table_name FROM information_schema.tables")}
    assert TABLES <= tables and {"triplets", "review_state"} <= tables
    applied = [r["version"] for r in catalog.rows("SELECT version FROM schema_info ORDER BY version")]
    assert applied == sorted(MIGRATIONS) and applied[-1] == SCHEMA_VERSION


def test_a_migration_of_a_parallel_branch_applies_after_a_later_one(catalog: Catalog, monkeypatch) -> None:
    """Versions 7 and 8 were written on parallel branches: a catalog already at 8 still takes 7 when it lands."""
    from flenwheel.catalog import core, schema

    catalog.migrate()
    late = {**schema.MIGRATIONS, 7: ["CREATE TABLE arrived_late (x INTEGER)"]}
    monkeypatch.setattr(core, "MIGRATIONS", late)
    monkeypatch.setattr(core, "_MIGRATED", set())
    Catalog(catalog.path).migrate()
    assert [r["version"] for r in catalog.rows("SELECT version FROM schema_info ORDER BY version")] == sorted(late)
    assert catalog.rows("SELECT count(*) AS n FROM arrived_late")[0]["n"] == 0


def test_newer_schema_is_refused(catalog: Catalog) -> None:
    catalog.migrate()
    catalog.write(lambda con: con.execute("INSERT INTO schema_info VALUES (99, now())"))
    # another process (this one has already migrated the file and trusts it from now on)
    code = "import sys; from flenwheel.catalog import Catalog; Catalog(sys.argv[1]).migrate()"
    out = subprocess.run([sys.executable, "-c", code, str(catalog.path)], capture_output=True, text=True, cwd=PROJECT)
    assert out.returncode != 0 and "newer than this flenwheel" in out.stderr


def test_not_a_duckdb_file(tmp_path: Path) -> None:
    bad = tmp_path / "catalog.duckdb"
    bad.write_text("definitely not a database " * 100)
    with pytest.raises(CatalogError, match="is not a DuckDB database"):
        Catalog(bad).migrate()
    with pytest.raises(CatalogError, match="is not a DuckDB database"):
        Catalog(bad).rows("SELECT 1")


def test_read_without_catalog_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="ingest some photos first"):
        Catalog(tmp_path / "none.duckdb").rows("SELECT 1")


def test_add_images_is_idempotent_and_guards_characters(catalog: Catalog) -> None:
    first = catalog.add_images([img(1), img(2)], run_id=None)
    assert first == {img(1).image_id: True, img(2).image_id: True}
    again = catalog.add_images([img(1), img(2), img(3)], run_id=None)
    assert again == {img(1).image_id: False, img(2).image_id: False, img(3).image_id: True}
    with pytest.raises(CatalogError, match="already catalogued for character 'tester'"):
        catalog.add_images([img(4, "obama"), img(1, "obama")], run_id=None)
    assert catalog.rows("SELECT count(*) AS n FROM images")[0]["n"] == 3  # the failed batch wrote nothing


def chain(catalog: Catalog) -> list[str]:
    """source -> edit -> augment -> edit, plus a sibling branch; returns the chain's ids."""
    src = img(10)
    catalog.add_images([src], run_id=None)
    ids = [src.image_id]
    with catalog.run("test:chain", {"purpose": "lineage"}) as run_id:
        for depth, (op, origin) in enumerate([("edit", "edit"), ("augment", "augment"), ("edit", "edit")], start=1):
            child = img(10 + depth, origin=origin)
            d = DerivationRecord(
                child.image_id,
                ids[-1],
                op,
                model_ref="Qwen/Qwen-Image-Edit-2509@abc",
                prompt=f"step {depth}",
                prompt_id=f"p{depth}",
                seed=1000 + depth,
                steps=8,
                guidance=1.0,
                strength=0.9,
                loras=[{"ref": "lightx2v/Qwen-Image-Lightning", "weight": 1.0}],
                params={"depth": depth},
            )
            catalog.add_images([child], run_id, [d])
            ids.append(child.image_id)
        sibling = img(20, origin="edit")
        catalog.add_images([sibling], run_id, [DerivationRecord(sibling.image_id, ids[1], "edit", seed=7)])
    return ids


def test_lineage_ancestry_and_descendants(catalog: Catalog) -> None:
    ids = chain(catalog)
    leaf = catalog.lineage(ids[3])
    assert [a["depth"] for a in leaf.ancestors] == [1, 2, 3]
    assert [a["parent_id"] for a in leaf.ancestors] == [ids[2], ids[1], ids[0]]
    nearest = leaf.ancestors[0]
    assert nearest["seed"] == 1003 and nearest["prompt"] == "step 3" and nearest["params"] == {"depth": 3}
    assert nearest["loras"] == [{"ref": "lightx2v/Qwen-Image-Lightning", "weight": 1.0}]
    assert nearest["run_flow"] == "test:chain" and nearest["run_code_version"]
    assert leaf.descendants == []
    source = catalog.lineage(ids[0])
    assert source.ancestors == []
    assert sorted(d["child_id"] for d in source.descendants) == sorted([*ids[1:], img(20).image_id])
    middle = catalog.lineage(ids[1])
    assert [a["parent_id"] for a in middle.ancestors] == [ids[0]]
    assert {d["child_id"] for d in middle.descendants} == {ids[2], ids[3], img(20).image_id}
    assert all(i["lineage_root"] == ids[0] for i in catalog.rows("SELECT lineage_root FROM images"))


def test_derivation_needs_a_known_parent(catalog: Catalog) -> None:
    orphan = img(99, origin="edit")
    with pytest.raises(CatalogError, match="is not in the catalog"):
        catalog.add_images([orphan], None, [DerivationRecord(orphan.image_id, "f" * 64, "edit")])


def test_runs_record_status(catalog: Catalog) -> None:
    with catalog.run("test:ok", {"a": 1}):
        pass
    with pytest.raises(ValueError), catalog.run("test:bad", {"a": 2}):
        raise ValueError("boom")
    with pytest.raises(AwaitingReview), catalog.run("test:wait", {"a": 3}):
        raise AwaitingReview("gate")
    rows = {r["flow"]: r for r in catalog.rows("SELECT * FROM runs")}
    assert rows["test:ok"]["status"] == "completed" and rows["test:ok"]["finished_at"] is not None
    assert rows["test:bad"]["status"] == "failed" and "boom" in rows["test:bad"]["error"]
    assert rows["test:wait"]["status"] == "awaiting_review"
    assert len(rows["test:ok"]["config_sha256"]) == 64


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO images VALUES ('x')",
        "DELETE FROM images",
        "DROP TABLE images",
        "COPY images TO 'x.csv'",
        "ATTACH 'other.db'",
        "SET threads = 1",
        "SELECT 1; DELETE FROM images",
    ],
)
def test_user_sql_is_read_only(catalog: Catalog, statement: str) -> None:
    catalog.add_images([img(1)], None)
    with pytest.raises(CatalogError, match="refused"):
        catalog.query_readonly(statement)
    assert catalog.rows("SELECT count(*) AS n FROM images")[0]["n"] == 1


def test_user_sql_errors_are_one_line(catalog: Catalog) -> None:
    catalog.migrate()
    with pytest.raises(CatalogError, match="SQL error"):
        catalog.query_readonly("SELECT nope FROM images")
    assert catalog.query_readonly("SELECT count(*) AS n FROM images")["n"][0] == 0


def test_metrics_upsert(catalog: Catalog) -> None:
    catalog.add_metrics("r1", "lora", "l1", {"pass_rate": 0.5}, step=250)
    catalog.add_metrics("r1", "lora", "l1", {"pass_rate": 0.75}, step=250)
    assert catalog.rows("SELECT value FROM metrics")[0]["value"] == 0.75


def test_write_waits_for_another_process(catalog: Catalog) -> None:
    catalog.migrate()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(2)",
            str(catalog.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    catalog.add_images([img(5)], None)  # blocks until the holder exits, then succeeds
    holder.wait()
    assert catalog.image(img(5).image_id) is not None
    impatient = Catalog(catalog.path, lock_timeout_s=0.2)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(3)",
            str(catalog.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    holder.stdout.readline()
    with pytest.raises(CatalogError, match="stayed locked"):
        impatient.add_images([img(6)], None)
    holder.kill()
    holder.wait()


def test_two_processes_ingest_400_images_at_once(ws: Workspace, tmp_path: Path) -> None:
    """Two `flenwheel ingest` processes, 200 distinct images each, one catalog: all 400 land, no errors."""
    folders = []
    for p in range(2):
        folder = tmp_path / f"batch{p}"
        folder.mkdir()
        for i in range(200):
            (folder / f"{i:03d}.png").write_bytes(encode(noise_image(p * 1000 + i, (128, 128))))
        folders.append(folder)
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    cmd = [
        sys.executable,
        "-m",
        "flenwheel",
        "--root",
        str(ws.root),
        "--configs",
        str(ws.configs_dir),
        "ingest",
        "tester",
        "--batch-size",
        "4",
    ]
    procs = [
        subprocess.Popen([*cmd, str(f)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for f in folders
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (stdout, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr
        assert "error" not in stderr.lower()
        assert stdout.count("OK ") == 200
    con = duckdb.connect(str(ws.catalog_path), read_only=True)
    assert con.execute("SELECT count(*) FROM images WHERE character = 'tester'").fetchone()[0] == 400
    assert con.execute("SELECT count(DISTINCT run_id) FROM images").fetchone()[0] == 2
    assert con.execute("SELECT count(*) FROM runs WHERE status = 'completed'").fetchone()[0] == 2
    con.close()
    assert len(list((ws.root / "objects").rglob("*.png"))) == 400


def test_lineage_json_shape(catalog: Catalog) -> None:
    ids = chain(catalog)
    data = json.loads(json.dumps(catalog.lineage(ids[2]).to_json(), default=str))
    assert set(data) == {"image", "ancestors", "descendants"}
    assert data["ancestors"][0]["op"] == "augment"


def test_version_9_keeps_a_v6_catalogs_loras_and_records_licences(tmp_path: Path) -> None:
    """A catalog made before licences were recorded upgrades in place: its LoRA rows keep every value, gain an
    empty licence record, and a LoRA kind no CHECK listed (a new family's) is accepted from then on."""
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_info (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)")
    for version in range(1, 7):
        for statement in MIGRATIONS[version]:
            con.execute(statement)
        con.execute("INSERT INTO schema_info VALUES (?, now())", [version])
    con.execute(
        "INSERT INTO loras (lora_id, character, kind, base_model_ref, path, sha256) "
        "VALUES ('old', 'obama', 'flux', 'tiny:flux@sha256:1', 'loras/old/w.safetensors', 'abc')"
    )
    con.close()
    catalog = Catalog(path)
    catalog.migrate()
    row = catalog.lora("old")
    assert (row["kind"], row["sha256"], row["licences"]) == ("flux", "abc", None)
    licences = [{"model": "black-forest-labs/FLUX.2-klein-4B", "role": "base model", "licence": "Apache-2.0",
                 "commercial": True, "family": "flux2-klein", "source": "card"}]  # fmt: skip
    catalog.register_lora(
        lora_id="new", character="obama", kind="flux2_klein", base_model_ref="tiny:flux2-klein@sha256:2",
        dataset_version=None, hyperparams={}, steps=1, path="loras/new/w.safetensors", sha256="def", comfy_path=None,
        chosen_checkpoint=1, run_id=None, licences=licences,
    )  # fmt: skip
    assert catalog.lora("new")["licences"] == licences
