"""What a task carries to a cluster worker, which sees neither the data root nor the config folder (docs/scale.md).

* :class:`ConfigBundle` — the config folder's YAML files as text (a few kB). A worker writes them once per content
  digest under its own home and opens a :class:`~flenwheel.store.workspace.Workspace` on them, so profiles, the LoRA
  library and the settings are validated there exactly as in the flow.
* :class:`ShippedLoras` — the catalog LoRAs a task applies (the character LoRA of a generation, a character's editor
  LoRA): their rows and file bytes. On the worker it answers the two questions model loading asks the catalog
  (``lora``, ``lora_file``, plus ``latest_lora``) from what was shipped; files are cached by sha256.
* The worker's home (``FLENWHEEL_WORKER_HOME``, default ``~/.cache/flenwheel/worker``) holds those files, the tiny
  twins a ``tiny:`` model ref builds, and scratch masks; never the data. Images travel as
  :class:`~flenwheel.store.objects.EncodedImage` bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from flenwheel.catalog import Catalog
from flenwheel.core.files import atomic_write
from flenwheel.store.workspace import Workspace, workspace_for

WORKER_HOME_ENV = "FLENWHEEL_WORKER_HOME"


def worker_home() -> Path:
    """This worker's own folder (models, shipped configs and LoRAs, scratch)."""
    raw = os.environ.get(WORKER_HOME_ENV) or "~/.cache/flenwheel/worker"
    home = Path(raw).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


@dataclass(frozen=True)
class ConfigBundle:
    """The config folder's YAML files by relative path, and a digest of them."""

    files: tuple[tuple[str, str], ...]
    digest: str

    @classmethod
    def of(cls, ws: Workspace) -> ConfigBundle:
        root = ws.configs_dir
        files = tuple(
            (p.relative_to(root).as_posix(), p.read_text(encoding="utf-8")) for p in sorted(root.rglob("*.yaml"))
        )
        h = hashlib.sha256()
        for name, text in files:
            h.update(f"{name}\0{text}\0".encode())
        return cls(files, h.hexdigest()[:16])

    def materialise(self, home: Path) -> Path:
        """The bundle as a config folder under ``home`` (written once per digest, renamed into place whole)."""
        target = home / "configs" / self.digest
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.digest}-", dir=target.parent))
        try:
            for name, text in self.files:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_text(text, encoding="utf-8")
            try:
                os.rename(tmp, target)
            except OSError:  # another task of this worker was first
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target


def worker_workspace(bundle: ConfigBundle) -> Workspace:
    """The worker's workspace: its home as the root, the shipped configs as the config folder (one per process and
    bundle, so parsed configs and model managers are reused across tasks)."""
    home = worker_home()
    return _workspace(str(home), str(bundle.materialise(home)))


@lru_cache(maxsize=8)
def _workspace(home: str, configs: str) -> Workspace:
    return workspace_for(home, configs)


@dataclass
class ShippedLoras:
    """Catalog LoRAs sent with a task: rows by id, file bytes by id, and the character's latest LoRA by kind."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    latest: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def collect(
        cls, catalog: Catalog, root: Path, lora_ids: list[str], latest: dict[tuple[str, str], str]
    ) -> ShippedLoras:
        """Read the rows and files of ``lora_ids`` in the flow (ids the catalog does not know are left out: the
        worker then says so as the catalog would)."""
        shipped = cls(latest=dict(latest))
        for lora_id in lora_ids:
            row, found = catalog.lora(lora_id), catalog.lora_file(lora_id, root)
            if row is None or found is None:
                continue
            shipped.rows[lora_id] = row
            shipped.files[lora_id] = found[0].read_bytes()
        return shipped

    # --- what model loading asks the catalog, answered on the worker
    def lora(self, lora_id: str) -> dict[str, Any] | None:
        return self.rows.get(lora_id)

    def latest_lora(self, character: str, kind: str) -> str | None:
        return self.latest.get((character, kind))

    def lora_file(self, lora_id: str, root: Path) -> tuple[Path, str] | None:
        """The shipped file, written once under ``<root>/loras/<sha256>.safetensors`` (root: the worker's home)."""
        row = self.rows.get(lora_id)
        if row is None:
            return None
        sha = row["sha256"]
        path = root / "loras" / f"{sha}.safetensors"
        if not path.is_file():
            atomic_write(path, self.files[lora_id])
        return path, sha
