"""The `flenwheel` command: ingest, sql, lineage, characters, demo, --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from flenwheel.catalog import Catalog
from flenwheel.cli import app
from flenwheel.store.workspace import Workspace
from tests.conftest import PROJECT, encode, noise_image, store_files


def all_command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(cmd, prefix):
        paths.append(prefix)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*prefix, name])

    walk(root, [])
    return paths


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda p: " ".join(p) or "flenwheel")
def test_every_command_has_help(cli, path: list[str]) -> None:
    result = cli(*path, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_ingest_reports_each_file_and_exit_status(cli, ws: Workspace, write_file, faces: Path) -> None:
    good = write_file("good.png", encode(noise_image(1, (300, 300))))
    result = cli("ingest", "tester", str(good))
    assert result.exit_code == 0
    assert result.stdout.startswith(f"OK       {good}: ")
    image_id = result.stdout.split(": ")[1].strip()
    bad = write_file("bad.jpg", b"not an image at all")
    missing = good.parent / "missing.jpg"
    result = cli("ingest", "tester", str(good), str(bad), str(missing), str(faces / "obama" / "obama_1.jpg"))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert f"REJECTED {bad}: not an image (unrecognised file content)" in lines
    assert f"REJECTED {missing}: no such file" in lines
    assert f"SKIPPED  {good}: {image_id} (already in the catalog)" in lines
    assert sum(ln.startswith("OK ") for ln in lines) == 1
    catalog = Catalog(ws.catalog_path)
    assert catalog.rows("SELECT count(*) AS n FROM images")[0]["n"] == 2
    assert len(store_files(ws.root)) == 2
    runs = catalog.rows("SELECT flow, status FROM runs ORDER BY started_at")
    assert runs == [{"flow": "cli:ingest", "status": "completed"}] * 2


def test_ingest_folder_and_duplicate_within_batch(cli, ws: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    pic = noise_image(3, (200, 200))
    (folder / "a.png").write_bytes(encode(pic))
    (folder / "b.png").write_bytes(encode(pic, compress_level=9))
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    result = cli("ingest", "tester", str(folder))
    assert result.exit_code == 0
    assert "SKIPPED" in result.stdout and "same picture as a.png" in result.stdout


def test_ingest_refuses_bad_character_names(cli, write_file) -> None:
    good = write_file("good.png", encode(noise_image(1, (300, 300))))
    for name in ("../../etc", "x'; DROP TABLE images; --"):
        result = cli("ingest", name, str(good))
        assert result.exit_code == 2
        assert result.stderr.startswith("error: invalid character name")


def test_ingest_same_image_for_another_character_is_rejected(cli, ws: Workspace, write_file) -> None:
    p = write_file("shared.png", encode(noise_image(5, (300, 300))))
    assert cli("ingest", "obama", str(p)).exit_code == 0
    result = cli("ingest", "biden", str(p))
    assert result.exit_code == 1 and "already catalogued for character 'obama'" in result.stdout


def test_catalog_that_is_not_duckdb(cli, ws: Workspace, write_file) -> None:
    ws.root.mkdir(parents=True)
    ws.catalog_path.write_bytes(b"\x00garbage" * 500)
    p = write_file("ok.png", encode(noise_image(5, (300, 300))))
    result = cli("ingest", "tester", str(p))
    assert result.exit_code == 2 and "is not a DuckDB database" in result.stderr
    assert store_files(ws.root) == []  # nothing stored when the catalog cannot take it


def test_sql_formats_and_refusal(cli, ws: Workspace, write_file) -> None:
    cli("ingest", "tester", str(write_file("a.png", encode(noise_image(1, (300, 300))))))
    as_json = cli("sql", "SELECT character, origin FROM images", "--format", "json")
    assert json.loads(as_json.stdout) == [{"character": "tester", "origin": "source"}]
    as_csv = cli("sql", "SELECT character, origin FROM images", "--format", "csv")
    assert as_csv.stdout.splitlines() == ["character,origin", "tester,source"]
    table = cli("sql", "SELECT character FROM images")
    assert "tester" in table.stdout
    refused = cli("sql", "DELETE FROM images")
    assert refused.exit_code == 2 and "refused" in refused.stderr
    assert cli("sql", "x", "--format", "xml").exit_code == 2


def test_lineage_command(cli, ws: Workspace, write_file) -> None:
    result = cli("ingest", "tester", str(write_file("a.png", encode(noise_image(1, (300, 300))))))
    image_id = result.stdout.split(": ")[1].strip()
    data = json.loads(cli("lineage", image_id[:10], "--json").stdout)
    assert data["image"]["image_id"] == image_id and data["ancestors"] == []
    text = cli("lineage", image_id[:10]).stdout
    assert image_id in text and "ancestry (0 step(s))" in text
    assert cli("lineage", "zzzzzz").exit_code == 2
    assert "no image with id" in cli("lineage", "abcdef").stderr


def test_characters_lists_config_and_catalog(cli, write_file) -> None:
    cli("ingest", "obama", str(write_file("a.png", encode(noise_image(1, (300, 300))))))
    out = cli("characters").stdout
    obama_line = next(ln for ln in out.splitlines() if " obama " in ln)
    assert "1" in obama_line
    assert " biden " in out and " astronaut " in out


@pytest.mark.extended  # the installed-wheel demo of test_layout runs one iteration and checks the same output
def test_demo_runs_offline_and_prints_catalog_and_lineage(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "flenwheel", "--root", str(tmp_path / "demo"), "demo"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"catalog: {tmp_path / 'demo' / 'catalog.duckdb'}" in proc.stdout
    assert "flenwheel lineage" in proc.stdout and "ancestry" in proc.stdout
    # the whole flywheel ran: two iterations, their versions and LoRAs, and a report that exists
    assert "iteration 1: dataset hopper@v1" in proc.stdout and "iteration 2: dataset hopper@v2" in proc.stdout
    report = Path(proc.stdout.split("report: ")[-1].split()[0])
    assert report.is_file() and report.name == "index.html" and "iteration-2" in str(report)
    assert "noise by design" in proc.stdout and "--profile gpu-24gb" in proc.stdout
    assert "review serve hopper" in proc.stdout


def test_failed_catalog_write_leaves_no_files(ws: Workspace, catalog: Catalog, write_file, monkeypatch) -> None:
    from flenwheel.store.ingest import ingest_paths

    files = [write_file(f"{i}.png", encode(noise_image(i, (200, 200)))) for i in range(3)]

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(Catalog, "add_images", broken)
    with pytest.raises(OSError, match="disk full"):
        ingest_paths(ws, catalog, "tester", files, run_id=None)
    assert store_files(ws.root) == []
