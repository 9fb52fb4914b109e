"""The engine stays plain Python: its modules import neither Prefect nor FiftyOne."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import flenwheel
from tests.conftest import PROJECT

ORCHESTRATION = {"tasks", "flows", "review"}


def engine_modules() -> list[str]:
    return sorted(
        f"flenwheel.{m.name}"
        for m in pkgutil.iter_modules(flenwheel.__path__)
        if m.name not in ORCHESTRATION and m.name != "__main__"
    )


def test_engine_imports_no_orchestration_libraries() -> None:
    mods = engine_modules()
    assert "flenwheel.catalog" in mods and "flenwheel.cli" in mods
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "bad = sorted({n.split('.')[0] for n in sys.modules} & {'prefect', 'fiftyone'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT, check=True)
    assert out.stdout.strip() == "", f"engine modules import {out.stdout.strip()}"


def test_data_root_is_not_a_package() -> None:
    assert not (PROJECT / "datasets" / "__init__.py").exists()
