"""The design card's layout, as installed: a wheel built from the repo holds flows/, tasks/, review/ and the
default configs inside ``flenwheel``, its import graph keeps the layers (import-linter's contracts in
pyproject.toml), and an installed wheel runs the demo outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import PROJECT


@pytest.fixture(scope="module")
def wheel_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A wheel built from a clean copy of the work tree (a stale build/ folder could leak removed modules), and
    what the build printed."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    skip = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "datasets", "test-artifacts", "__pycache__", "*.egg-info"
    )
    shutil.copytree(PROJECT, source, ignore=skip)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(base), str(source)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return next(base.glob("flenwheel-*.whl")), build.stdout + build.stderr


@pytest.fixture(scope="module")
def wheel(wheel_build: tuple[Path, str]) -> Path:
    return wheel_build[0]


def test_the_build_prints_no_setuptools_warnings(wheel_build: tuple[Path, str]) -> None:
    """Every install printed setuptools' deprecation of a TOML-table ``project.license`` (and a warning per data
    folder missing from ``packages``): the license is an SPDX string now, the data folders are listed."""
    wheel, output = wheel_build
    assert "Warning" not in output and "deprecated" not in output, output[-3000:]
    metadata = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()


def test_wheel_ships_the_top_level_folders_inside_the_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("flenwheel-")}
    assert tops == {"flenwheel"}, f"generic top-level names in site-packages: {tops}"
    for expected in (
        "flenwheel/flows/flywheel.py",
        "flenwheel/tasks/enrich.py",
        "flenwheel/review/datasets.py",
        "flenwheel/defaults/profiles/gpu-24gb.yaml",
        "flenwheel/defaults/prompts/enrich.yaml",
        "flenwheel/report/templates/page.html.j2",
        "flenwheel/catalog/schema.py",
    ):
        assert expected in names


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed into a folder of its own (an editable install maps flows/ etc. where import-linter
    cannot look)."""
    target = tmp_path_factory.mktemp("installed") / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(pip, check=True, capture_output=True, timeout=600)
    return target


def lint_imports(site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """import-linter with the contracts of pyproject.toml over the package installed in ``site``; run outside the
    checkout (lint-imports puts its working directory first on sys.path)."""
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(site)}
    command = [str(lint), str(PROJECT / "pyproject.toml")]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_import_contracts_hold(installed: Path, tmp_path: Path) -> None:
    result = lint_imports(installed, tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "5 kept, 0 broken" in result.stdout


def test_the_contracts_cover_a_new_module_of_a_package(installed: Path, tmp_path: Path) -> None:
    """The contracts name packages: a module added to one is checked without editing pyproject.toml. A new store
    module that imports DuckDB (and so reaches past the catalog) breaks the DuckDB contract."""
    site = tmp_path / "site"
    shutil.copytree(installed, site)
    (site / "flenwheel" / "store" / "shortcut.py").write_text(
        '"""Reads the catalog file directly."""\n\nimport duckdb\n'
    )
    result = lint_imports(site, tmp_path)
    assert result.returncode != 0
    assert "DuckDB only in the catalog BROKEN" in result.stdout and "flenwheel.store.shortcut" in result.stdout


def test_importing_the_flows_changes_no_setting() -> None:
    """Prefect is set up by the entry points (the CLI, each flow as it starts), not by an import."""
    env = {k: v for k, v in os.environ.items() if k not in ("DO_NOT_TRACK", "PREFECT_LOGGING_EXTRA_LOGGERS")}
    code = (
        "import logging, os\n"
        "import flenwheel.flows.flywheel, flenwheel.flows.enrich, flenwheel.flows.editor, flenwheel.flows.deployments\n"
        "print(os.environ.get('DO_NOT_TRACK'), logging.getLogger('flenwheel').handlers)"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["None", "[]"]


@pytest.mark.slow
def test_an_installed_wheel_runs_the_demo_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv with only the wheel installed (its dependencies seen through a .pth of this venv's
    site-packages, whose editable-install hook is not run) runs `flenwheel demo` from an empty folder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    Path(site, "deps-from-project-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLENWHEEL_", "PREFECT_API_URL"))}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "FLENWHEEL_HOME": str(tmp_path / "data")}
    code = "from flenwheel.cli import main; import flenwheel; print(flenwheel.__file__); main()"
    where = subprocess.run(
        [str(python), "-c", "import flenwheel; print(flenwheel.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(site), f"flenwheel imported from {where}, not the wheel"
    demo = subprocess.run(
        [str(python), "-c", code, "demo", "--iterations", "1"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "iteration 1: dataset hopper@v1" in demo.stdout and "report:" in demo.stdout
    # what a first user reads: where the catalog is, a lineage, the report, why the images are noise, what next
    assert f"catalog: {tmp_path / 'data'}" in demo.stdout
    assert "flenwheel lineage" in demo.stdout and "ancestry" in demo.stdout
    report = Path(demo.stdout.split("report: ")[-1].split()[0])
    assert report.is_file() and report.name == "index.html" and "iteration-1" in str(report)
    assert "noise by design" in demo.stdout and "--profile gpu-24gb" in demo.stdout
    assert "review serve hopper" in demo.stdout


def test_data_root_is_not_a_package() -> None:
    assert not (PROJECT / "datasets" / "__init__.py").exists()
