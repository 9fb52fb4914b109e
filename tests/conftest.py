"""Shared fixtures: isolated workspaces, synthetic images, the real face photos in ../shared/faces."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from flenwheel.catalog import Catalog
from flenwheel.store.workspace import Workspace

# FiftyOne fixes its database location when first imported: one bundled mongod data dir for the session,
# unique dataset names per test root (see flenwheel.review.datasets.dataset_name).
os.environ.setdefault("FIFTYONE_DATABASE_DIR", tempfile.mkdtemp(prefix="flenwheel-test-fiftyone-"))
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # flow logs after pytest closed its capture are noise

PROJECT = Path(__file__).resolve().parents[1]
FACES = PROJECT.parent / "shared" / "faces"
ARTIFACTS = PROJECT / "test-artifacts"


def noise_image(seed: int, size: tuple[int, int] = (160, 160), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode) if mode in ("RGB", "RGBA", "CMYK") else 1
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode)


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory):
    """One temporary Prefect server for the whole session (it takes ~10 s to start)."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def faces() -> Path:
    if not FACES.is_dir():
        pytest.fail(f"{FACES} is missing: tests need ../shared/faces beside the project")
    return FACES


@pytest.fixture
def configs_dir(tmp_path: Path) -> Path:
    """A private copy of the repo's configs plus test characters."""
    dst = tmp_path / "configs"
    shutil.copytree(PROJECT / "configs", dst)
    for name in ("obama", "biden", "tester"):
        (dst / "characters" / f"{name}.yaml").write_text(
            f"name: {name}\ntrigger: fw_{name}\nidentity:\n  backend: dlib\n"
        )
    return dst


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny pipelines, built once per test session through the production builder."""
    from flenwheel.models.twins import ensure_tiny_models

    return ensure_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def ws(tmp_path: Path, configs_dir: Path, request: pytest.FixtureRequest) -> Workspace:
    workspace = Workspace(root=tmp_path / "data", configs=configs_dir)
    if "tiny_models" in request.fixturenames or request.node.get_closest_marker("tiny"):
        # cpu-tiny resolves tiny:<kind> under <root>/models/tiny: point it at the session's build.
        models = request.getfixturevalue("tiny_models")
        (workspace.root / "models").mkdir(parents=True, exist_ok=True)
        (workspace.root / "models" / "tiny").symlink_to(next(iter(models.values())).parent)
    return workspace


@pytest.fixture
def catalog(ws: Workspace) -> Catalog:
    return Catalog(ws.catalog_path, lock_timeout_s=60)


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, bytes], Path]:
    folder = tmp_path / "inputs"
    folder.mkdir(exist_ok=True)

    def write(name: str, data: bytes) -> Path:
        p = folder / name
        p.write_bytes(data)
        return p

    return write


@pytest.fixture
def cli(ws: Workspace) -> Callable[..., object]:
    """Invoke the real typer app against the test workspace."""
    from flenwheel.cli import app

    runner = CliRunner()

    def invoke(*args: str) -> object:
        return runner.invoke(
            app, ["--root", str(ws.root), "--configs", str(ws.configs_dir), *args], catch_exceptions=False
        )

    return invoke


def store_files(root: Path) -> list[Path]:
    objects = root / "objects"
    return sorted(p for p in objects.rglob("*") if p.is_file()) if objects.exists() else []


# Rows compared between runs: everything but run ids and timestamps.
SNAPSHOT = {
    "images": "SELECT image_id, character, origin, path, width, height, lineage_root FROM images ORDER BY ALL",
    "derivations": "SELECT child_id, parent_id, op, prompt_id, seed, strength, job_key, params FROM derivations"
    " ORDER BY ALL",
    "identity_scores": "SELECT image_id, backend, reference_set_id, verdict, similarity, threshold FROM identity_scores"
    " ORDER BY ALL",
    "reviews": "SELECT image_id, gate_id, decision, source, note FROM reviews ORDER BY ALL",
    "reference_sets": "SELECT reference_set_id, image_ids, threshold FROM reference_sets ORDER BY ALL",
    "dataset_versions": "SELECT version_id, manifest_sha256, n_images FROM dataset_versions ORDER BY ALL",
    "dataset_members": "SELECT * FROM dataset_members ORDER BY ALL",
    "loras": "SELECT lora_id, sha256, dataset_version, chosen_checkpoint FROM loras ORDER BY ALL",
    "iterations": "SELECT character, number, dataset_version, lora_id, status, report_path FROM iterations"
    " ORDER BY ALL",
    # the VLM's folder (model_ref) lies under each root; what it wrote is compared
    "captions": "SELECT image_id, caption, source, params FROM captions ORDER BY ALL",
    # stage peaks measure the machine, not the data: they differ between any two runs
    "metrics": "SELECT scope, scope_id, name, value, step FROM metrics WHERE scope <> 'stage' ORDER BY ALL",
}


def snapshot(path: Path) -> dict[str, list[tuple]]:
    """The catalog's rows without run ids and timestamps: equal snapshots mean a run added nothing."""
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        return {k: con.execute(q).fetchall() for k, q in SNAPSHOT.items()}
    finally:
        con.close()


def quantize_nf4_on_cpu(module: torch.nn.Module, compute_dtype: torch.dtype) -> torch.nn.Module:
    """Replace every Linear with a bitsandbytes nf4 Linear4bit, quantised on the CPU.

    What diffusers' ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")`` does while loading,
    which diffusers only allows with a GPU; bitsandbytes itself quantises and runs nf4 layers on the CPU.
    """
    import bitsandbytes as bnb

    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            q = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=compute_dtype,
                quant_type="nf4",
            )
            q.weight = bnb.nn.Params4bit(
                child.weight.data.to(compute_dtype).clone(), requires_grad=False, quant_type="nf4"
            )
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data.to(compute_dtype), requires_grad=False)
            setattr(module, name, q.to("cpu"))  # moving the parameter quantises it
        else:
            quantize_nf4_on_cpu(child, compute_dtype)
    return module
