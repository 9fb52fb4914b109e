"""Fault injection against the real `flenwheel` CLI: SIGKILL at seeded moments, a full disk, commands at once.

Each command runs on cpu-tiny in a subprocess, on a copy of a prepared data root. A *kill trial* starts the
command, sends SIGKILL to it alone at a seeded moment (or when it starts writing a checkpoint), checks that its
children went with it, runs the same command again, and compares the catalog with an uninterrupted run's
(tests.conftest.snapshot), then asks `doctor` whether the store holds anything the catalog does not know, any
temporary file or any held lock. A *disk-full trial* runs the command on a size-limited tmpfs that fills up,
checks the one-line error and exit status 1, frees the space, and runs it again.

`make faults` runs the full sweep (`python -m tests.faults --kills 10`) and prints the figures for
docs/reliability.md; tests/test_faults.py runs a fast slice in `make test`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flenwheel import gate
from flenwheel.dataset import versions
from flenwheel.editing import AugmentEditor, EditJob, run_edit_batch
from flenwheel.identity import filter_images
from flenwheel.models.twins import ensure_tiny_models
from flenwheel.store import doctor
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace
from tests.conftest import FACES, PROJECT, snapshot

BIN = Path(sys.executable).parent
ORPHAN_GRACE_S = 15.0  # how long a killed command's children may take to notice (see kill_trial)
FLYWHEEL_ARGS = [
    "--iterations", "2", "--profile", "cpu-tiny", "--editor", "augment", "--review", "auto", "--enrich-seeds", "1",
    "--synthetic-prompts", "pose-portrait,scene-park", "--synthetic-seeds", "1", "--min-new-synthetics", "0",
]  # fmt: skip


@dataclass(frozen=True)
class Command:
    name: str
    argv: tuple[str, ...]
    prepare: Callable[[Workspace], None]  # brings a fresh root to the state the command starts from


def _sources(ws: Workspace) -> None:
    photos = [FACES / "obama" / f"obama_{i}.jpg" for i in (1, 2, 3)]
    ingest_paths(ws, ws.catalog(), "obama", photos, None)


def _approved_edits(ws: Workspace) -> None:
    _sources(ws)
    catalog, character = ws.catalog(), ws.character("obama")
    filter_images(ws, catalog, character, image_ids=None, run_id=None)
    library = ws.prompt_library(character)
    sources = [r["image_id"] for r in catalog.source_images("obama")]
    jobs = [EditJob(s, library[p], 0) for s in sources for p in ("angle-mirror", "bg-blue")]
    made = run_edit_batch(ws, catalog, "obama", AugmentEditor(), jobs, None)
    filter_images(ws, catalog, character, image_ids=made, run_id=None)
    gate.Gate(catalog, "obama", "enrich", ws.settings.review).auto_review(None)


def _frozen(ws: Workspace) -> None:
    _approved_edits(ws)
    versions.freeze(ws, ws.catalog(), ws.character("obama"), None)


COMMANDS: dict[str, Command] = {
    "enrich": Command(
        "enrich",
        (
            "enrich",
            "obama",
            "--editor",
            "augment",
            "--review",
            "auto",
            "--seeds",
            "1",
            "--prompts",
            "angle-mirror,bg-blue,light-golden-hour",
            "--batch-size",
            "2",
        ),
        _sources,
    ),
    "dataset freeze": Command("dataset freeze", ("dataset", "freeze", "obama"), _approved_edits),
    "train": Command("train", ("train", "obama", "--profile", "cpu-tiny", "--steps", "16"), _frozen),
    "train-edit": Command(
        "train-edit",
        ("train-edit", "obama", "--profile", "cpu-tiny", "--steps", "8", "--ops", "edit,augment"),
        _approved_edits,
    ),
    "flywheel": Command("flywheel", ("flywheel", "obama", *FLYWHEEL_ARGS), _sources),
}


@dataclass
class Lab:
    """Where trials run: tiny models built once, configs with the test characters, one template root per command."""

    base: Path
    env: dict[str, str]
    configs: Path = field(init=False)
    models: Path = field(init=False)

    def __post_init__(self) -> None:
        self.configs = self.base / "configs"
        if not self.configs.exists():
            shutil.copytree(PROJECT / "configs", self.configs, ignore=shutil.ignore_patterns("__init__.py"))
            for name in ("obama", "biden"):
                (self.configs / "characters" / f"{name}.yaml").write_text(
                    f"name: {name}\ntrigger: fw_{name}\nidentity:\n  backend: dlib\n"
                )
        self.models = ensure_tiny_models(self.base / "tiny-models")["flux"].parent

    def workspace(self, root: Path) -> Workspace:
        ws = Workspace(root=root, configs=self.configs)
        (root / "models").mkdir(parents=True, exist_ok=True)
        link = root / "models" / "tiny"
        if not link.exists():
            link.symlink_to(self.models)
        return ws

    def template(self, command: Command) -> Path:
        root = self.base / "templates" / command.name.replace(" ", "-")
        if not (root / "catalog.duckdb").exists():
            shutil.rmtree(root, ignore_errors=True)
            command.prepare(self.workspace(root))
        return root

    def fresh(self, command: Command, where: Path) -> Workspace:
        """A copy of the command's starting state at ``where``."""
        shutil.copytree(self.template(command), where, symlinks=True)
        return self.workspace(where)

    def argv(self, ws: Workspace, command: Command) -> list[str]:
        return [str(BIN / "flenwheel"), "--root", str(ws.root), "--configs", str(self.configs), *command.argv]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (read from /proc), so they can be checked after their parent is killed."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Outcome:
    command: str
    moment: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    orphan_s: float = 0.0  # how long the killed command's last child lived on
    finished_s: float | None = None  # the command ended this soon, before the kill came: not a kill


@dataclass
class Reference:
    """An uninterrupted run: the catalog it leaves, how long it took, how many bytes it wrote."""

    catalog: dict
    seconds: float
    wrote: int


def disk_bytes(root: Path) -> int:
    """Bytes the files under ``root`` take: links are not followed (the tiny models are linked, not copied) and
    a hard-linked file counts once (a dataset export hard-links the store's objects)."""
    sizes: dict[tuple[int, int], int] = {}
    for folder, _, files in os.walk(root):
        for f in files:
            st = os.lstat(os.path.join(folder, f))
            sizes[(st.st_dev, st.st_ino)] = st.st_size
    return sum(sizes.values())


def reference(lab: Lab, command: Command, where: Path) -> Reference:
    ws = lab.fresh(command, where)
    before = disk_bytes(ws.root)
    started = time.monotonic()
    done = subprocess.run(lab.argv(ws, command), env=lab.env, capture_output=True, text=True, timeout=1800)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command.name}: the uninterrupted run failed: {done.stderr[-2000:]}")
    return Reference(snapshot(ws.catalog_path), took, disk_bytes(ws.root) - before)


def checkpoint_in_progress(root: Path) -> bool:
    return any((root / "loras").glob("*/checkpoints/.step-*.tmp-*")) if (root / "loras").exists() else False


def kill_trial(
    lab: Lab,
    command: Command,
    expected: dict,
    where: Path,
    after_s: float | None = None,
    when: Callable[[Path], bool] | None = None,
    label: str = "",
) -> Outcome:
    """SIGKILL the command alone after ``after_s`` seconds (or as soon as ``when(root)`` holds), then recover."""
    ws = lab.fresh(command, where)
    outcome = Outcome(command.name, label or (f"t={after_s:.1f}s" if after_s is not None else "trigger"), True)
    started = time.monotonic()
    proc = subprocess.Popen(
        lab.argv(ws, command), env=lab.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    tree: set[int] = set()
    deadline = started + (after_s if after_s is not None else 1800)
    while proc.poll() is None and time.monotonic() < deadline:
        tree |= descendants(proc.pid)
        if when is not None and when(ws.root):
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        outcome.moment += " (finished before the kill)"
        outcome.finished_s = time.monotonic() - started
    else:
        tree |= descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # A running child watches its parent every 0.5 s; one still importing its libraries when the parent died
    # starts watching once it is ready, seconds later on a busy machine. Give them ORPHAN_GRACE_S.
    killed_at = time.monotonic()
    while any(alive(p) for p in tree) and time.monotonic() - killed_at < ORPHAN_GRACE_S:
        time.sleep(0.1)
    outcome.orphan_s = time.monotonic() - killed_at if tree else 0.0
    survivors = sorted(p for p in tree if alive(p))
    if survivors:
        what = [f"{p} {command_line(p)[:160]}" for p in survivors]
        outcome.problems.append(f"processes outlived the killed command by {ORPHAN_GRACE_S:.0f} s: {what}")
        for p in survivors:
            os.kill(p, signal.SIGKILL)
    again = subprocess.run(lab.argv(ws, command), env=lab.env, capture_output=True, text=True, timeout=1800)
    if again.returncode != 0:
        outcome.problems.append(f"the re-run failed ({again.returncode}): {again.stderr.strip()[-800:]}")
    else:
        outcome.problems += compare(expected, snapshot(ws.catalog_path))
    outcome.problems += health(ws)
    outcome.ok = not outcome.problems
    outcome.seconds = time.monotonic() - started
    return outcome


def compare(expected: dict, got: dict) -> list[str]:
    return [f"catalog table {t} differs from an uninterrupted run's" for t in expected if expected[t] != got.get(t)]


def health(ws: Workspace) -> list[str]:
    """What doctor finds: orphans, partial or temporary files, dangling rows, held or stale locks."""
    report = doctor.examine(ws, ws.catalog(), grace_s=0)
    return [f"doctor: {f.kind}: {f.what}" for f in report.problems]


# --------------------------------------------------------------------------- disk full


def mount_tmpfs(path: Path, size_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"cannot mount a size-limited tmpfs at {path} (needs root): {done.stderr.strip()}")


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def disk_full_trial(
    lab: Lab, command: Command, expected: Reference, mount: Path, fraction: float, label: str
) -> Outcome:
    """Run the command on a tmpfs with room for ``fraction`` of what it writes; free the space, run it again."""
    free_kb = max(1, int(expected.wrote * fraction / 1024))
    outcome = Outcome(command.name, label, True)
    started = time.monotonic()
    mount_tmpfs(mount, 1024)
    try:
        ws = lab.fresh(command, mount / "root")
        filler = mount / "filler"
        free = shutil.disk_usage(mount).free
        with filler.open("wb") as f:
            f.truncate(0)
        subprocess.run(["fallocate", "-l", str(max(0, free - free_kb * 1024)), str(filler)], check=True)
        argv = lab.argv(ws, command)
        full = subprocess.run(argv, env=lab.env, capture_output=True, text=True, timeout=1800)
        errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
        if full.returncode != 1:
            outcome.problems.append(f"exit status {full.returncode} on a full disk (expected 1): {full.stderr[-800:]}")
        elif len(errors) != 1 or "no space left" not in errors[0] or "Traceback" in full.stderr:
            outcome.problems.append(f"not a one-line error naming what was not written: {full.stderr[-800:]}")
        else:
            outcome.moment += f": {errors[0][:160]}"
        outcome.problems += health(ws)  # nothing half-written, before space is freed
        filler.unlink()
        again = subprocess.run(argv, env=lab.env, capture_output=True, text=True, timeout=1800)
        if again.returncode != 0:
            outcome.problems.append(f"the run after freeing space failed: {again.stderr[-800:]}")
        else:
            outcome.problems += compare(expected.catalog, snapshot(ws.catalog_path))
        outcome.problems += health(ws)
    finally:
        unmount(mount)
    outcome.ok = not outcome.problems
    outcome.seconds = time.monotonic() - started
    return outcome


# --------------------------------------------------------------------------- the sweep


def sweep(base: Path, kills: int, seed: int, commands: list[str], env: dict[str, str]) -> list[Outcome]:
    lab = Lab(base, env)
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    for name in commands:
        command = COMMANDS[name]
        ref = reference(lab, command, base / "runs" / f"{name}-reference")
        expected = ref.catalog
        print(f"{name}: uninterrupted run {ref.seconds:.0f} s", flush=True)
        # Moments spread over the run; a run that ends before its moment (a trial runs faster than the reference
        # on a quieter machine) is no kill: the span shrinks to that run's length and another moment is drawn.
        span, killed, tries = ref.seconds, 0, 0
        while killed < kills and tries < 3 * kills:
            at = rng.uniform(0.05, 0.95) * span
            where = base / "runs" / f"{name}-kill-{tries}"
            tries += 1
            result = kill_trial(lab, command, expected, where, after_s=at)
            print(f"  {result.moment:28s} {'ok' if result.ok else 'FAIL'} {'; '.join(result.problems)}", flush=True)
            shutil.rmtree(where, ignore_errors=True)
            if result.finished_s is not None:
                span = min(span, result.finished_s)
                continue
            outcomes.append(result)
            killed += 1
        if name in ("train", "train-edit", "flywheel"):
            where = base / "runs" / f"{name}-kill-checkpoint"
            result = kill_trial(
                lab, command, expected, where, when=checkpoint_in_progress, label="while writing a checkpoint"
            )
            print(f"  {result.moment:28s} {'ok' if result.ok else 'FAIL'} {'; '.join(result.problems)}", flush=True)
            outcomes.append(result)
            shutil.rmtree(where, ignore_errors=True)
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    rows = ["| command | kills survived / tried | children gone after (max s) | failures |", "|---|---|---|---|"]
    for name in dict.fromkeys(o.command for o in outcomes):
        mine = [o for o in outcomes if o.command == name]
        failures = "; ".join(f"{o.moment}: {o.problems[0]}" for o in mine if not o.ok) or "-"
        orphan = max(o.orphan_s for o in mine)
        rows.append(f"| `{name}` | {sum(o.ok for o in mine)} / {len(mine)} | {orphan:.1f} | {failures} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=10, help="kill moments per command")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--commands", default=",".join(COMMANDS))
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    base = args.work or Path(tempfile.mkdtemp(prefix="flenwheel-faults-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env |= {"PREFECT_HOME": str(base / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    started = time.monotonic()
    outcomes = sweep(base, args.kills, args.seed, [c.strip() for c in args.commands.split(",")], env)
    print(
        f"\nSIGKILL sweep, seed {args.seed}, {len(outcomes)} trials in {(time.monotonic() - started) / 60:.0f} min:\n"
    )
    print(table(outcomes))
    raise SystemExit(0 if all(o.ok for o in outcomes) else 1)


if __name__ == "__main__":
    main()
