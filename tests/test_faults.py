"""The fault-injection suite's pytest half (tests/faults.py holds the machinery and the SIGKILL sweep).

`make test` runs the fast slice, each fault kind once: a SIGKILL at a seeded moment of `dataset freeze`; a
SIGKILL while `train` writes a checkpoint (resume ends with bitwise the same weights; the local Prefect API and
the identity workers die with the command); identity workers killed while still starting exit too; a full
disk while checkpoints are written; a reviewer's decisions while a flow writes. `make faults` adds the tests
marked ``faults_full`` (a killed `enrich` and `flywheel`, a full disk during ingest, edit and report, nightly +
flywheel of one character at once, two characters at once) and the sweep of seeded kills per command.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from flenwheel import gate
from flenwheel.store.objects import expand_paths
from tests.conftest import FACES, snapshot
from tests.faults import (
    COMMANDS,
    FLYWHEEL_ARGS,
    Command,
    Lab,
    Reference,
    alive,
    checkpoint_in_progress,
    command_line,
    descendants,
    disk_bytes,
    disk_full_trial,
    health,
    kill_trial,
    reference,
)

pytestmark = [pytest.mark.slow, pytest.mark.tiny]
SEED = 2026


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Lab:
    base = tmp_path_factory.mktemp("faults")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(base / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return Lab(base, env)


class References(dict):
    """Uninterrupted runs, each made when a trial first needs it and shared by the module's trials."""

    def __init__(self, lab: Lab) -> None:
        super().__init__()
        self.lab = lab

    def __missing__(self, name: str) -> Reference:
        self[name] = reference(self.lab, COMMANDS[name], self.lab.base / "ref" / name.replace(" ", "-"))
        return self[name]


@pytest.fixture(scope="module")
def references(lab: Lab) -> References:
    return References(lab)


@pytest.mark.parametrize(
    "name", [*(pytest.param(n, marks=pytest.mark.faults_full) for n in ("enrich", "flywheel")), "dataset freeze"]
)
def test_killed_at_a_seeded_moment_then_rerun(lab: Lab, references, name: str, tmp_path: Path) -> None:
    ref = references[name]
    at = random.Random(f"{SEED}-{name}").uniform(0.3, 0.9) * ref.seconds
    outcome = kill_trial(lab, COMMANDS[name], ref.catalog, tmp_path / "root", after_s=at)
    assert outcome.ok, f"{name} killed at {outcome.moment}: {outcome.problems}"


@pytest.mark.faults_full  # a faster resume-to-identical-weights test: test_edit_training (killed edit training)
def test_killed_while_writing_a_checkpoint_resumes_to_the_same_weights(lab: Lab, references, tmp_path: Path) -> None:
    outcome = kill_trial(
        lab,
        COMMANDS["train"],
        references["train"].catalog,
        tmp_path / "root",
        when=checkpoint_in_progress,
        label="while writing a checkpoint",
    )
    assert "finished before" not in outcome.moment
    assert outcome.ok, outcome.problems  # the loras row's sha256 is in the snapshot: bitwise the same weights


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "small-disk"
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.faults_full
def test_disk_full_during_ingest(lab: Lab, tmp_path: Path, mount: Path) -> None:
    """A folder of photos onto a nearly full disk: one line, exit 1, nothing half-written; then it finishes."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in expand_paths([FACES / "obama"]):
        shutil.copy(f, photos)
    ingest = Command("ingest", ("ingest", "obama", str(photos)), lambda ws: None)
    expected = reference(lab, ingest, tmp_path / "reference")
    outcome = disk_full_trial(lab, ingest, expected, mount, fraction=0.5, label="ingest")
    assert outcome.ok, outcome.problems


@pytest.mark.parametrize(
    "name", [pytest.param("enrich", marks=pytest.mark.faults_full), "train"], ids=["edit", "checkpoint"]
)
def test_disk_full_during_edit_and_checkpoint(lab: Lab, references, mount: Path, name: str) -> None:
    """Room for half of what the command writes: edits (enrich), checkpoints (most of what train writes)."""
    outcome = disk_full_trial(lab, COMMANDS[name], references[name], mount, fraction=0.5, label=name)
    assert outcome.ok, outcome.problems


@pytest.mark.faults_full
def test_disk_full_while_writing_the_report(lab: Lab, references, tmp_path: Path, mount: Path) -> None:
    """The report is rewritten from the catalog of a finished flywheel onto a full disk."""
    references["flywheel"]  # made when first needed
    done = lab.workspace(lab.base / "ref" / "flywheel")
    report = Command("report", ("report", "obama"), lambda ws: None)
    template = lab.template(report)
    shutil.rmtree(template)
    shutil.copytree(done.root, template, symlinks=True, ignore=shutil.ignore_patterns("reports"))
    wrote = disk_bytes(done.root / "reports")
    expected = Reference(snapshot(done.catalog_path), 0.0, wrote)
    outcome = disk_full_trial(lab, report, expected, mount, fraction=0.5, label="report")
    assert outcome.ok, outcome.problems


def run_at_once(lab: Lab, ws_argvs: list[list[str]]) -> list[subprocess.CompletedProcess]:
    procs = [
        subprocess.Popen(argv, env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in ws_argvs
    ]
    results = []
    for argv, p in zip(ws_argvs, procs, strict=True):
        out, err = p.communicate(timeout=1800)
        results.append(subprocess.CompletedProcess(argv, p.returncode, out, err))
    return results


@pytest.mark.faults_full
def test_nightly_and_flywheel_of_one_character_at_once(lab: Lab, tmp_path: Path) -> None:
    """The character lock: one works, the other skips or refuses in one line; nothing is corrupted, and the
    flywheel run again afterwards completes."""
    ws = lab.fresh(COMMANDS["flywheel"], tmp_path / "root")
    inbox = ws.inbox_dir("obama")
    inbox.mkdir(parents=True)
    with Image.open(FACES / "obama" / "obama_1.jpg") as photo:  # a new photo arrives in the inbox
        photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(inbox / "obama_new.jpg")
    base = [str(lab.argv(ws, COMMANDS["flywheel"])[0]), "--root", str(ws.root), "--configs", str(lab.configs)]
    nightly = [*base, "nightly", "--characters", "obama", "--editor", "augment", "--review", "auto", "--seeds", "1"]
    fly = lab.argv(ws, COMMANDS["flywheel"])
    nightly_run, fly_run = run_at_once(lab, [nightly, fly])
    assert nightly_run.returncode == 0, nightly_run.stderr[-1500:]
    assert fly_run.returncode in (0, 2), fly_run.stderr[-1500:]
    if fly_run.returncode == 2:  # refused at once, in one line, naming the holder
        assert "another run is working on obama" in fly_run.stderr and "Traceback" not in fly_run.stderr
    elif "skipped" in nightly_run.stdout:
        assert "another run is working on obama" in nightly_run.stdout
    assert not health(ws)
    again = subprocess.run(fly, env=lab.env, capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stderr[-1500:]
    assert [r["status"] for r in ws.catalog().iterations("obama")] == ["completed", "completed"]
    assert not health(ws)


@pytest.mark.faults_full
def test_two_characters_at_once_do_not_interfere(lab: Lab, references, tmp_path: Path) -> None:
    """obama's flywheel beside biden's: obama ends exactly as when it ran alone."""
    ws = lab.fresh(COMMANDS["flywheel"], tmp_path / "root")
    from flenwheel.store.ingest import ingest_paths

    ingest_paths(ws, ws.catalog(), "biden", expand_paths([FACES / "biden"])[:2], None)
    biden = [*lab.argv(ws, COMMANDS["flywheel"])[:5], "flywheel", "biden", *FLYWHEEL_ARGS]
    results = run_at_once(lab, [lab.argv(ws, COMMANDS["flywheel"]), biden])
    assert all(r.returncode == 0 for r in results), [r.stderr[-1500:] for r in results]
    expected = references["flywheel"].catalog
    got = snapshot(ws.catalog_path)
    obama = {row[0] for row in got["images"] if row[1] == "obama"}  # (image_id, character, ...)
    assert obama == {row[0] for row in expected["images"]}
    assert [r for r in got["derivations"] if r[0] in obama] == expected["derivations"]
    for table in ("dataset_versions", "dataset_members", "loras", "iterations"):
        assert [r for r in got[table] if "biden" not in repr(r)] == expected[table], table
    assert [r["status"] for r in ws.catalog().iterations("biden")] == ["completed", "completed"]
    assert not health(ws)


@pytest.mark.faults_full
def test_review_decide_while_a_flow_writes(lab: Lab, tmp_path: Path) -> None:
    """A reviewer's decisions land while an enrichment writes to the same catalog (lock retries, no loss)."""
    ws = lab.fresh(COMMANDS["train-edit"], tmp_path / "root")  # has approved augment edits of obama
    catalog = ws.catalog()
    pending = [c["image_id"] for c in gate.Gate(catalog, "obama", "enrich").candidates()]
    enrich = [
        *lab.argv(ws, COMMANDS["enrich"])[:5],
        "enrich",
        "obama",
        "--editor",
        "augment",
        "--review",
        "cli",
        "--seeds",
        "2",
        "--prompts",
        "light-golden-hour,bg-studio-grey",
        "--batch-size",
        "1",
    ]
    proc = subprocess.Popen(enrich, env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(gate.Gate(catalog, "obama", "enrich").candidates()) == len(pending):
        time.sleep(0.2)  # until the flow is writing its first batch
    decided = []
    for image_id in pending[:3]:
        argv = [
            *lab.argv(ws, COMMANDS["enrich"])[:5],
            "review",
            "decide",
            "obama",
            "--reject",
            image_id,
            "--reviewer",
            "carol",
        ]
        result = subprocess.run(argv, env=lab.env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        decided.append(image_id)
    _, err = proc.communicate(timeout=1800)
    assert proc.returncode == 3, err[-1500:]  # stopped at its gate, as a cli-review run does
    state = {r["image_id"]: r for r in catalog.rows("SELECT * FROM review_state WHERE reviewer = 'carol'")}
    assert set(state) == set(decided) and {r["decision"] for r in state.values()} == {"rejected"}
    assert not health(ws)


def test_scoring_workers_still_starting_when_their_command_dies_exit(lab: Lab, tmp_path: Path) -> None:
    """What the sweep found: `flenwheel identity filter` killed as its identity workers start. They used to
    re-run the console script (the whole CLI's imports, 20+ s on a busy machine) before watching their parent,
    and a worker that asked for its parent's pid after the kill watched its new parent forever."""
    ws = lab.fresh(COMMANDS["dataset freeze"], tmp_path / "root")  # sources of obama, not yet all scored
    ws.catalog().write(lambda con: con.execute("DELETE FROM identity_scores"))  # so there is scoring to do
    proc = subprocess.Popen(
        [*lab.argv(ws, COMMANDS["enrich"])[:5], "identity", "filter", "obama"],
        env=lab.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tree: set[int] = set()
    while proc.poll() is None and not any("spawn_main" in command_line(p) for p in tree):
        tree |= descendants(proc.pid)
        time.sleep(0.01)
    assert proc.poll() is None, "the command ended before its workers started"
    proc.kill()
    proc.wait()
    killed = time.monotonic()
    while any(alive(p) for p in tree) and time.monotonic() - killed < 60:
        time.sleep(0.1)
    gone_after = time.monotonic() - killed
    assert not [p for p in tree if alive(p)], [command_line(p) for p in tree if alive(p)]
    assert gone_after < 10, f"the workers lived {gone_after:.1f} s after their command"
