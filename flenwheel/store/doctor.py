"""``flenwheel doctor``: does the store hold what the catalog says, and nothing else?

Checks, in order: every catalogued image has its object file and the file's sha256 is its id; every
derivation's child and parent are catalogued; every dataset member is catalogued; every LoRA's files exist and
the diffusers file matches its recorded sha256; every edit-region mask exists with its sha256; the store holds
no file the catalog does not know (orphans: objects or masks of a batch whose catalog write never happened)
and no temporary file of an interrupted write; no lock
file names a holder that is gone. ``fix`` removes orphans older than a grace period (a running command may
be between writing a file and recording it) and temporary files whose writer has ended, and clears stale
lock files; it never touches a catalogued file. What it spares says why (:attr:`Finding.spared`), and what a
person does about the rest is in :data:`ADVICE` (per kind) and :attr:`Finding.hint` (per file).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flenwheel.catalog import Catalog
from flenwheel.core.files import file_sha256, is_temporary, writer_gone
from flenwheel.store.objects import MASKS, OBJECTS
from flenwheel.store.workspace import Workspace

DATA_FOLDERS = ("objects", "masks", "loras", "manifests", "exports", "cache", "reports", "evals", "models")


FIX_TOUCHES = (
    "--fix removes only orphans older than --grace, temporary files of writers that have ended and stale locks; it "
    "never touches a catalogued file, so the problems above are yours to mend"
)
_STORE_COPY = (
    "a copy of the data root's store folders (objects/, masks/, loras/) kept with your catalog backups "
    "(`flenwheel catalog backup` saves the catalog's rows, not the files)"
)
_RESTORE_CATALOG = "restore the catalog from a backup (`flenwheel catalog restore DIR --replace`, no command running)"
# What a person does about each kind of problem --fix leaves alone (docs/reliability.md), one line per kind.
ADVICE: dict[str, str] = {
    "bad_hash": "a catalogued image's file holds other bytes than the ones recorded (a disk error, or something "
    "outside flenwheel wrote to it): move the file out of the data root, then put the recorded bytes back: copy "
    f"it from {_STORE_COPY}, or, for a source photo, ingest the original photo again (`flenwheel ingest "
    "CHARACTER PHOTO` stores the same bytes under the same id)",
    "missing_object": f"a catalogued image's file is gone: copy it back from {_STORE_COPY}, or, for a source photo, "
    "ingest the original photo again (`flenwheel ingest CHARACTER PHOTO`)",
    "bad_lora_hash": f"a LoRA's weights changed: copy the file back from {_STORE_COPY}",
    "missing_lora": f"a LoRA's file is gone: copy it back from {_STORE_COPY}",
    "bad_mask_hash": f"an edit-region mask changed: copy it back from {_STORE_COPY}",
    "missing_mask": f"an edit-region mask is gone: copy it back from {_STORE_COPY}",
    "dangling_derivation": f"a derivation names an image the catalog does not hold: {_RESTORE_CATALOG}",
    "dangling_member": f"a dataset version names an image the catalog does not hold: {_RESTORE_CATALOG}",
}


@dataclass
class Finding:
    kind: str  # missing_object, bad_hash, dangling_derivation, dangling_member, missing_lora, bad_lora_hash,
    #            missing_mask, bad_mask_hash, orphan, temporary, stale_lock, open_run
    what: str
    fixable: bool = False
    path: Path | None = None
    spared: str = ""  # why --fix leaves a finding of a kind it removes (an orphan younger than the grace period)
    hint: str = ""  # what to do about this one file, beyond its kind's ADVICE


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        """Everything but open runs, which may be commands working right now."""
        return [f for f in self.findings if f.kind != "open_run"]

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def left(self) -> list[Finding]:
        """Problems still there (not removed by ``fix``)."""
        return [f for f in self.problems if f.what not in self.fixed]

    @property
    def spared(self) -> list[Finding]:
        """Problems ``fix`` would remove but keeps for now, each saying why."""
        return [f for f in self.left if f.spared]


def _recorded_file(report: Report, kind: str, label: str, root: Path, relpath: str, sha256: str) -> None:
    """A file a catalog row names: it must exist and hold the bytes whose sha256 the row recorded."""
    path = root / relpath
    if not path.is_file():
        report.findings.append(Finding(f"missing_{kind}", f"{label}: {relpath} is missing"))
    elif file_sha256(path) != sha256:
        report.findings.append(Finding(f"bad_{kind}_hash", f"{label}: {relpath} changed"))


def examine(
    ws: Workspace,
    catalog: Catalog,
    fix: bool = False,
    grace_s: float = 600.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Check the data root against its catalog; with ``fix``, remove what is safe to remove."""
    report = Report()
    images = catalog.all_images()
    known = {ws.root / r["path"] for r in images}
    for done, r in enumerate(images, start=1):
        path = ws.root / r["path"]
        if not path.is_file():
            report.findings.append(
                Finding(
                    "missing_object",
                    f"image {r['image_id'][:12]}: {r['path']} is missing",
                    hint=_restore_hint(r, moved_away=False),
                )
            )
        elif file_sha256(path) != r["image_id"]:
            report.findings.append(
                Finding(
                    "bad_hash",
                    f"image {r['image_id'][:12]}: {r['path']} has other bytes",
                    hint=_restore_hint(r, moved_away=True),
                )
            )
        if on_progress:
            on_progress(done, len(images))
    report.checked["images"] = len(images)
    if catalog.path.exists():
        for d in catalog.dangling_derivations():
            report.findings.append(
                Finding(
                    "dangling_derivation",
                    f"{d['op']} {d['child_id'][:12]} <- "
                    f"{(d['parent_id'] or 'text')[:12]}: an image it names is not catalogued",
                )
            )
        for m in catalog.dangling_members():
            report.findings.append(
                Finding("dangling_member", f"{m['version_id']}: member {m['image_id'][:12]} is not catalogued")
            )
        loras = catalog.all_loras()
        for lora in loras:
            _recorded_file(report, "lora", f"LoRA {lora['lora_id']}", ws.root, lora["path"], lora["sha256"])
            if lora["comfy_path"] and not (ws.root / lora["comfy_path"]).is_file():
                report.findings.append(
                    Finding("missing_lora", f"LoRA {lora['lora_id']}: {lora['comfy_path']} is missing")
                )
        report.checked["loras"] = len(loras)
        masks = catalog.all_masks()
        for m in masks:
            _recorded_file(report, "mask", f"mask {m['mask_id'][:12]}", ws.root, m["path"], m["mask_id"])
            known.add(ws.root / m["path"])
        report.checked["masks"] = len(masks)
        for run in catalog.open_runs():
            report.findings.append(
                Finding(
                    "open_run",
                    f"run {run['run_id'][:8]} ({run['flow']}, started "
                    f"{str(run['started_at'])[:19]}) never recorded its end: working now, "
                    "or killed",
                )
            )
    started = time.time()
    for path in [*_files(ws.root / OBJECTS), *_files(ws.root / MASKS)]:
        if is_temporary(path):
            continue  # reported with the temporary files below
        if path not in known:
            mtime = path.stat().st_mtime
            old, age = mtime < started - grace_s, started - mtime
            spared = "" if old else f"written {age:.0f} s ago, younger than --grace {grace_s:g} s"
            report.findings.append(
                Finding("orphan", f"{path.relative_to(ws.root)} is in no catalog row", old, path, spared)
            )
    for path in _temporaries(ws.root):
        if writer_gone(path):  # a live writer's temporary file is a write in progress
            report.findings.append(
                Finding("temporary", f"{path.relative_to(ws.root)}: left by an interrupted write", True, path)
            )
    for path in sorted((ws.root / "locks").glob("*.lock")) if (ws.root / "locks").is_dir() else []:
        if path.stat().st_size and not _held(path):
            report.findings.append(
                Finding("stale_lock", f"{path.relative_to(ws.root)} names a holder that is gone", True, path)
            )
    if fix:
        for f in report.findings:
            if f.fixable and f.path is not None:
                _remove(f)
                report.fixed.append(f.what)
    return report


def _restore_hint(image: dict[str, Any], moved_away: bool) -> str:
    """How to put one catalogued image's bytes back: a source photo can be ingested again, anything else copied."""
    first = f"move {image['path']} out of the data root, then " if moved_away else ""
    if image["origin"] == "source":
        photo = image["source_name"] or "the original photo"
        return (
            f"{first}ingest {photo} again: flenwheel ingest {image['character']} PATH/{photo} (or copy "
            f"{image['path']} back from a copy of the store)"
        )
    what = f"{image['origin']} image of {image['character']}"
    return f"{first}copy {image['path']} back from a copy of the store ({what})"


def _files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file()) if folder.is_dir() else iter(())


def _temporaries(root: Path) -> Iterator[Path]:
    """Temporary files and folders of atomic writes (``.<name>.tmp-*``) anywhere in the data folders."""
    yield from (p for p in sorted(root.glob(".*")) if is_temporary(p))  # e.g. a catalog restore's staging file
    for folder in DATA_FOLDERS:
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob(".*")):
            if is_temporary(path) and not any(is_temporary(parent) for parent in path.relative_to(root).parents):
                yield path  # a temporary folder's contents go with it


def _held(lock: Path) -> bool:
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _remove(finding: Finding) -> None:
    path = finding.path
    assert path is not None
    if finding.kind == "stale_lock":
        os.truncate(path, 0)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
