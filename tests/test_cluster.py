"""Cluster mode against the real engine: a ``dask scheduler`` and two ``dask worker`` processes on loopback, started
with the command-line tools; enrichment through the real CLI command with ``--cluster`` gives the catalog a local run
gives, both workers work, a worker SIGKILLed mid-run loses nothing, a worker that cannot load the model is named and
left out (docs/scale.md)."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flenwheel.catalog import Catalog
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace
from tests.cluster_lab import DaskLab
from tests.conftest import snapshot

# prompts that aim at no measured coverage bin: the augment stand-in would miss the aim and be retried (time only)
PROMPTS = "light-studio-soft,bg-blue,bg-studio-grey,bg-outdoor-park"
# What the checks wrote, beside the conftest snapshot (images, derivations, identity, reviews, ...).
# The near_duplicate flag's score is the best ORB match among the images recorded *before* it: on a cluster, batches
# come back in the order workers finish, so that score (not whether the flag is raised, checked apart) may differ.
CHECKS = {
    "verifications": """SELECT image_id, name, CASE WHEN name = 'flag:near_duplicate' THEN NULL ELSE score END,
                               threshold, passed, mask_id FROM verifications ORDER BY ALL""",
    "edit_attempts": "SELECT job_key, attempt, image_id, seed, passed, chosen FROM edit_attempts ORDER BY ALL",
    "masks": "SELECT image_id, category, mask_id, kind, path FROM masks ORDER BY ALL",
}


def rows(path: Path) -> dict[str, list[tuple]]:
    out = snapshot(path)
    catalog = Catalog(path)
    for name, sql in CHECKS.items():
        out[name] = [tuple(r.values()) for r in catalog.rows(sql)]
    return out


def enrich(root: Path, configs: Path, *extra: str) -> object:
    from flenwheel.cli import app

    args = ["--root", str(root), "--configs", str(configs), "enrich", "obama", "--editor", "augment"]
    args += ["--review", "auto", "--prompts", PROMPTS, "--seeds", "2", "--batch-size", "2", *extra]
    return CliRunner().invoke(app, args, catch_exceptions=False)


def new_root(base: Path, configs: Path, faces: Path) -> Path:
    root = base / "data"
    ws = Workspace(root=root, configs=configs)
    ingest_paths(ws, ws.catalog(), "obama", [faces / "obama" / "obama_1.jpg", faces / "obama" / "obama_2.jpg"], None)
    return root


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import PROJECT

    dst = tmp_path_factory.mktemp("cluster-configs") / "configs"
    shutil.copytree(PROJECT / "configs", dst)
    (dst / "characters" / "obama.yaml").write_text("name: obama\ntrigger: fw_obama\nidentity:\n  backend: dlib\n")
    return dst


@pytest.fixture(scope="module")
def local_rows(prefect_harness, tmp_path_factory: pytest.TempPathFactory, configs: Path, faces: Path) -> dict:
    """The catalog of the same enrichment without a cluster: what every cluster run must end with."""
    root = new_root(tmp_path_factory.mktemp("local"), configs, faces)
    result = enrich(root, configs)
    assert result.exit_code == 0, result.output
    made = next(line for line in result.output.splitlines() if "new image(s) from" in line)
    return rows(root / "catalog.duckdb") | {"made": made}


@pytest.fixture
def lab(tmp_path: Path, tiny_models: dict[str, Path]) -> Iterator[DaskLab]:
    with DaskLab(tmp_path, next(iter(tiny_models.values())).parent) as lab:
        yield lab


def worked(lab: DaskLab, name: str) -> bool:
    """The worker checked edits: its scratch masks (its own home, never the data root) say so."""
    return any((lab.home(name) / "masks").rglob("*.png"))


@pytest.mark.slow
def test_cluster_enrichment_equals_the_local_run_and_both_workers_work(
    prefect_harness, lab: DaskLab, local_rows: dict, configs: Path, faces: Path, tmp_path: Path, caplog
) -> None:
    lab.start_worker("gpu0")
    lab.start_worker("gpu1")
    lab.wait_for(2)
    root = new_root(tmp_path / "cluster", configs, faces)
    with caplog.at_level(logging.INFO, logger="flenwheel"):
        result = enrich(root, configs, "--cluster", lab.address)
    assert result.exit_code == 0, result.output
    assert local_rows["made"] in result.output  # "N new image(s) from M job(s)": the same attempts as the local run
    assert rows(root / "catalog.duckdb") | {"made": local_rows["made"]} == local_rows
    assert worked(lab, "gpu0") and worked(lab, "gpu1")
    done = [r.getMessage() for r in caplog.records if "done on worker" in r.getMessage()]
    assert any("on worker gpu0" in m for m in done) and any("on worker gpu1" in m for m in done)
    # nothing of the data root reached a worker's home, and a second run adds nothing
    assert not any(p.name == "catalog.duckdb" for p in (tmp_path / "workers").rglob("*"))
    again = enrich(root, configs, "--cluster", lab.address)
    assert "0 new image(s) from 0 job(s)" in again.output
    assert rows(root / "catalog.duckdb") | {"made": local_rows["made"]} == local_rows


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_nothing(
    prefect_harness, lab: DaskLab, local_rows: dict, configs: Path, faces: Path, tmp_path: Path
) -> None:
    lab.start_worker("gpu0")
    lab.start_worker("gpu1")
    lab.wait_for(2)
    root = new_root(tmp_path / "cluster", configs, faces)
    outcome: dict = {}
    run = threading.Thread(target=lambda: outcome.update(result=enrich(root, configs, "--cluster", lab.address)))
    run.start()
    deadline = time.monotonic() + 600
    busy: list[str] = []
    while not busy and time.monotonic() < deadline:  # the first worker to check an edit is in the middle of a batch
        busy = [name for name in ("gpu0", "gpu1") if worked(lab, name)]
        time.sleep(0.05)
    assert busy, "no worker started a batch"
    lab.kill(busy[0])
    run.join(timeout=600)
    assert outcome["result"].exit_code == 0, outcome["result"].output
    assert rows(root / "catalog.duckdb") | {"made": local_rows["made"]} == local_rows  # no duplicate, no lost job


@pytest.mark.slow
@pytest.mark.tiny
def test_a_worker_that_cannot_load_the_model_is_named_and_left_out(
    prefect_harness, lab: DaskLab, configs: Path, faces: Path, tmp_path: Path, caplog
) -> None:
    # gpu1's copy of the editor lost its transformer weights; gpu0's is whole
    broken = lab.base / "workers" / "gpu1" / "models" / "tiny"
    broken.mkdir(parents=True)
    shutil.copytree(lab.tiny_models / "qwen-image-edit", broken / "qwen-image-edit")
    for weights in (broken / "qwen-image-edit" / "transformer").glob("*.safetensors"):
        weights.unlink()
    for kind in ("flux", "vibe"):
        (broken / kind).symlink_to(lab.tiny_models / kind)
    lab.start_worker("gpu0")
    lab.start_worker("gpu1")
    lab.wait_for(2)
    root = new_root(tmp_path / "cluster", configs, faces)
    from flenwheel.cli import app

    def qwen(prompt: str, *extra: str) -> object:
        args = ["--root", str(root), "--configs", str(configs), "enrich", "obama", "--editor", "qwen", "--review"]
        args += ["auto", "--prompts", prompt, "--seeds", "1", "--batch-size", "1", "--cluster", lab.address, *extra]
        return CliRunner().invoke(app, args)

    with caplog.at_level(logging.WARNING, logger="flenwheel"):
        result = qwen("angle-left-45")
    assert result.exit_code == 0, result.output
    assert "6 new image(s) from 2 job(s)" in result.output  # gpu0 did both sources (each with its two retries)
    failed = [r.getMessage() for r in caplog.records if "worker gpu1" in r.getMessage()]
    assert failed and "transformer" in failed[0], failed
    # no worker can load a profile that needs a GPU: the run stops with one line naming each worker and why
    gpu = qwen("bg-blue", "--profile", "gpu-24gb")
    assert gpu.exit_code == 2, gpu.output
    line = gpu.output.strip().splitlines()[-1]
    assert line.startswith("error: no worker of") and "gpu0" in line and "gpu1" in line and "CUDA" in line, line
