"""First contact with the real parts: `prefect server start`, `flenwheel serve`, the `prefect` CLI, a process work
pool from prefect.yaml, the FiftyOne App in headless chromium, and a CLI run on a fresh, busy machine.

One real Prefect server (fresh PREFECT_HOME, free loopback port) serves the whole module. Runs are created
and resumed through the REST API exactly as the Prefect UI does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from flenwheel import gate
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace
from tests.conftest import ARTIFACTS, PROJECT

pytestmark = [pytest.mark.tiny, pytest.mark.slow]

BIN = Path(sys.executable).parent
OBAMA = ("obama_1.jpg", "obama_2.jpg")
PARAMS = {
    "character": "obama", "iterations": 1, "profile": "cpu-tiny", "editor": "augment", "review": "cli",
    "enrich_prompts": ["angle-mirror", "bg-blue"], "enrich_seeds": 1, "synthetic_prompts": ["pose-portrait"],
    "synthetic_seeds": 1, "min_new_synthetics": 0,
    "fill_gaps": False,  # every source x prompt: the gate's rounds need four candidates (aimed: tests/test_flywheel.py)
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 300, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class RetryingClient(httpx.Client):
    """Retries what Prefect's server marks retryable (503: e.g. SQLite busy on a loaded machine), as Prefect's
    own client and UI do."""

    def request(self, *args: Any, **kwargs: Any) -> httpx.Response:
        for attempt in range(10):
            response = super().request(*args, **kwargs)
            if response.status_code != 503:
                return response
            time.sleep(min(0.5 * 2**attempt, 8))
        return response


@dataclass
class Server:
    url: str
    env: dict[str, str]
    api: httpx.Client

    def prefect(
        self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "prefect"), *args],
            env={**self.env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return self.api.get(f"/flow_runs/{run_id}").raise_for_status().json()

    def state(self, run_id: str) -> tuple[str, str]:
        state = self.flow_run(run_id)["state"] or {}
        return state.get("type", ""), state.get("name", "")

    def wait_state(self, run_id: str, wanted: str, timeout_s: float = 600) -> None:
        def reached() -> bool:
            kind, _ = self.state(run_id)
            assert kind not in ("FAILED", "CRASHED", "CANCELLED") or wanted == kind, self.logs(run_id)[-3000:]
            return kind == wanted

        wait_for(f"flow run {run_id} to be {wanted}", reached, timeout_s)

    def logs(self, run_id: str) -> str:
        """Every log line of the run, oldest first (the API pages by 200)."""
        lines: list[str] = []
        while True:
            body = {
                "logs": {"flow_run_id": {"any_": [run_id]}},
                "limit": 200,
                "offset": len(lines),
                "sort": "TIMESTAMP_ASC",
            }
            page = [r["message"] for r in self.api.post("/logs/filter", json=body).raise_for_status().json()]
            lines += page
            if len(page) < 200:
                return "\n".join(lines)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url,
        "PREFECT_UI_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = RetryingClient(base_url=url, timeout=30)
    try:

        def healthy() -> bool:
            assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
            try:
                return api.get("/health").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("prefect server start", healthy, timeout_s=600)
        yield Server(url, env, api)
    finally:
        api.close()
        stop(proc)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path], faces: Path) -> Workspace:
    base = tmp_path_factory.mktemp("first-contact")
    configs = base / "configs"
    shutil.copytree(PROJECT / "configs", configs, ignore=shutil.ignore_patterns("__init__.py"))
    (configs / "characters" / "obama.yaml").write_text("name: obama\ntrigger: fw_obama\nidentity:\n  backend: dlib\n")
    settings = (configs / "flenwheel.yaml").read_text()
    (configs / "flenwheel.yaml").write_text(settings.replace("app_port: 5151", f"app_port: {free_port()}"))
    ws = Workspace(root=base / "data", configs=configs)
    (ws.root / "models").mkdir(parents=True)
    (ws.root / "models" / "tiny").symlink_to(next(iter(tiny_models.values())).parent)
    ingest_paths(ws, ws.catalog(), "obama", [faces / "obama" / f for f in OBAMA], None)
    return ws


def flenwheel(ws: Workspace, *args: str, env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "flenwheel"), "--root", str(ws.root), "--configs", str(ws.configs_dir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        **kw,
    )


@pytest.fixture(scope="module")
def served(server: Server, workspace: Workspace) -> Iterator[subprocess.Popen]:
    """`flenwheel serve` against the real server, until the module's served tests are done."""
    log = (workspace.root / "serve.log").open("w")
    cmd = [str(BIN / "flenwheel"), "--root", str(workspace.root), "--configs", str(workspace.configs_dir), "serve"]
    proc = subprocess.Popen(cmd, env=server.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def deployed() -> str | None:
        assert proc.poll() is None, (workspace.root / "serve.log").read_text()[-3000:]
        r = server.api.get("/deployments/name/flywheel/flywheel")
        return r.json()["id"] if r.status_code == 200 else None

    wait_for("flenwheel serve to register its deployments", deployed, timeout_s=300)
    yield proc
    stop(proc)


def test_ui_run_suspends_keeps_the_reviewers_word_and_completes(
    server: Server, workspace: Workspace, served: subprocess.Popen
) -> None:
    ws, catalog = workspace, workspace.catalog()
    deployment = server.api.get("/deployments/name/flywheel/flywheel").raise_for_status().json()
    # The form offers the configured choices, and Prefect refuses a wrong prompt id when the run is submitted.
    form = deployment["parameter_openapi_schema"]["definitions"]["FlywheelParams"]["properties"]
    assert "obama" in form["character"]["enum"] and "cpu-tiny" in json.dumps(form["profile"])
    assert "light-studio-soft" in json.dumps(form["enrich_prompts"])
    bad = server.api.post(
        f"/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": {"params": {**PARAMS, "enrich_prompts": ["light-studio"]}}},
    )
    assert bad.status_code in (409, 422) and "light-studio" in bad.text

    run = (
        server.api.post(f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": {"params": PARAMS}})
        .raise_for_status()
        .json()
    )
    run_id = run["id"]
    server.wait_state(run_id, "PAUSED")
    assert server.state(run_id)[1] == "Suspended"
    [first_round] = catalog.rows("SELECT * FROM gate_rounds WHERE flow_run_id = ?", [run_id])
    assert first_round["gate_id"] == "obama:enrich" and len(first_round["pending_ids"]) == 4

    # The reviewer decides some candidates in the CLI while the run waits, then resumes with auto_decide_rest.
    ids = first_round["pending_ids"]
    decided = flenwheel(
        ws, "review", "decide", "obama", "--approve", ids[0], "--reject", ids[1], "--reviewer", "alice", env=server.env
    )
    assert decided.returncode == 0, decided.stderr
    resume = {"run_input": {"auto_decide_rest": True, "reviewer": "alice", "note": "policy for the rest"}}
    server.api.post(f"/flow_runs/{run_id}/resume", json=resume).raise_for_status()

    # No second stop at the enrichment gate: the next stop is the synthetic gate.
    def stopped_at_synthetic() -> bool:
        kind, _ = server.state(run_id)
        assert kind not in ("FAILED", "CRASHED"), server.logs(run_id)[-3000:]
        gates = [r["gate_id"] for r in catalog.rows("SELECT gate_id FROM gate_rounds WHERE flow_run_id = ?", [run_id])]
        return kind == "PAUSED" and "obama:synthetic" in gates

    wait_for("the run to stop at the synthetic gate", stopped_at_synthetic, timeout_s=600)
    rounds = catalog.rows("SELECT * FROM gate_rounds WHERE flow_run_id = ? ORDER BY opened_at", [run_id])
    assert [r["gate_id"] for r in rounds] == ["obama:enrich", "obama:synthetic"]
    enrich = rounds[0]
    assert enrich["reviewer"] == "alice" and enrich["note"] == "policy for the rest" and enrich["auto_decide_rest"]
    assert enrich["decided_by_people"] == 2 and enrich["decided_by_policy"] == 2
    status = gate.Gate(catalog, "obama", "enrich").status()
    assert status.pending == 0 and status.candidates == 4
    by_image = {r["image_id"]: r for r in catalog.rows("SELECT * FROM review_state WHERE gate_id = 'obama:enrich'")}
    assert by_image[ids[0]]["source"] == by_image[ids[1]]["source"] == "cli"
    assert {by_image[i]["source"] for i in ids[2:]} == {"auto"}
    assert all("alice" in by_image[i]["note"] and "policy for the rest" in by_image[i]["note"] for i in ids[2:])

    server.api.post(
        f"/flow_runs/{run_id}/resume", json={"run_input": {"approve_rest": True, "reviewer": "bob"}}
    ).raise_for_status()
    server.wait_state(run_id, "COMPLETED")
    [iteration] = catalog.iterations("obama")
    assert iteration["status"] == "completed" and (ws.root / iteration["report_path"]).is_file()
    synthetic = catalog.rows("SELECT * FROM review_state WHERE gate_id = 'obama:synthetic'")
    assert (
        synthetic and {r["source"] for r in synthetic} == {"prefect"} and {r["reviewer"] for r in synthetic} == {"bob"}
    )
    artifacts = server.api.post("/artifacts/filter", json={"artifacts": {"key": {"like_": "obama-iteration-1"}}})
    assert {"obama-iteration-1", "obama-iteration-1-identity"} <= {a["key"] for a in artifacts.json()}

    # the run tells its story in the UI's log view (the last lines arrive when the run's process flushes them)
    lines = (
        "enrichment of obama with the augment editor",
        "identity of",
        "gate obama:enrich waits on 4",
        "http://127.0.0.1:",
        "resumed by alice",
        "dataset version obama@v1",
        "chosen checkpoint step",
        "generated 1 synthetic image",
        "gate obama:synthetic waits on",
        "target 70% not met); report",
    )
    wait_for("the run's last log lines", lambda: all(line in server.logs(run_id) for line in lines), timeout_s=120)


def test_prefect_cli_lists_and_inspects_against_the_server(server: Server, served: subprocess.Popen) -> None:
    for args in (("deployment", "ls"), ("flow-run", "ls"), ("flow", "ls"), ("work-pool", "ls"), ("artifact", "ls")):
        result = server.prefect(*args)
        assert result.returncode == 0, f"prefect {' '.join(args)}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    assert "flywheel/flywheel" in server.prefect("deployment", "ls").stdout.replace("\n", "")
    runs = server.api.post("/flow_runs/filter", json={"limit": 5}).json()
    assert runs and server.prefect("flow-run", "inspect", runs[0]["id"]).returncode == 0


def test_prefect_yaml_work_pool_worker_runs_to_the_first_gate(
    server: Server, workspace: Workspace, served: subprocess.Popen, tmp_path: Path
) -> None:
    stop(served)  # `prefect deploy` takes over the same deployment names; one runner at a time
    created = server.prefect("work-pool", "create", "flenwheel", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = server.prefect("--no-prompt", "deploy", "--all", cwd=PROJECT)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    where = {"FLENWHEEL_HOME": str(workspace.root), "FLENWHEEL_CONFIGS": str(workspace.configs_dir)}
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "flenwheel"],
        env={**server.env, **where},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        params = {**PARAMS, "enrich_prompts": ["light-golden-hour"]}  # new jobs, so a new gate round
        run = server.prefect("deployment", "run", "flywheel/flywheel", "--params", json.dumps({"params": params}))
        assert run.returncode == 0, run.stdout + run.stderr
        run_id = next(line.split()[-1] for line in run.stdout.splitlines() if "UUID" in line)
        server.wait_state(run_id, "PAUSED")
        rounds = workspace.catalog().rows(
            "SELECT gate_id, pending_ids FROM gate_rounds WHERE flow_run_id = ?", [run_id]
        )
        assert [r["gate_id"] for r in rounds] == ["obama:enrich"] and len(rounds[0]["pending_ids"]) == 2
    finally:
        stop(worker)


def test_fiftyone_app_shows_the_samples_without_a_consent_banner(workspace: Workspace, tmp_path: Path) -> None:
    from flenwheel.review.datasets import open_dataset

    # the service must turn tracking off itself; unbuffered, so its "FiftyOne App: URL" line reaches the log
    env = {k: v for k, v in os.environ.items() if k != "FIFTYONE_DO_NOT_TRACK"} | {"PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "app.log").open("w")
    cmd = [
        str(BIN / "flenwheel"),
        "--root",
        str(workspace.root),
        "--configs",
        str(workspace.configs_dir),
        "review",
        "serve",
        "obama",
    ]
    app = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = wait_for("the FiftyOne App", lambda: _app_url(tmp_path / "app.log", app), timeout_s=300)
        count = len(open_dataset(workspace, "obama"))
        browser = shutil.which("chromium")
        assert browser, "chromium is not installed: `make test` installs it"
        flags = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
        ]
        dom = subprocess.run(
            [*flags, "--virtual-time-budget=30000", "--dump-dom", url], capture_output=True, text=True, timeout=300
        ).stdout
        text = " ".join(re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", dom, flags=re.S).split())
        assert f"{count} samples" in text, text[-3000:]  # the grid's header counts the dataset's samples
        assert "Help us improve FiftyOne" not in text and "googletagmanager" not in dom  # no consent, no tracking
        ARTIFACTS.mkdir(exist_ok=True)
        shot = f"--screenshot={ARTIFACTS / 'fiftyone-app.png'}"
        subprocess.run(
            [*flags, "--virtual-time-budget=30000", "--window-size=1400,900", shot, url],
            capture_output=True,
            timeout=300,
        )
    finally:
        stop(app)


def _app_url(log: Path, app: subprocess.Popen) -> str | None:
    assert app.poll() is None, log.read_text()[-3000:]
    for line in log.read_text().splitlines():
        if line.startswith("FiftyOne App: "):
            return line.split()[2]
    return None


def test_cli_run_on_a_fresh_busy_machine(workspace: Workspace, tmp_path: Path) -> None:
    """A first `flenwheel enrich` with a fresh PREFECT_HOME while both cores are kept busy: the local Prefect API's
    first start (database migrations) fits its budget, and nothing outlives the command."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_HOME": str(tmp_path / "fresh-prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        started = time.monotonic()
        cmd = [
            str(BIN / "flenwheel"),
            "--root",
            str(workspace.root),
            "--configs",
            str(workspace.configs_dir),
            "enrich",
            "obama",
            "--prompts",
            "light-studio-soft",
            "--seeds",
            "1",
            "--review",
            "auto",
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = proc.communicate(timeout=900)
        took = time.monotonic() - started
    finally:
        for b in burners:
            b.kill()
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert "2 new image(s) from 2 job(s)" in stdout, stdout
    leftovers = subprocess.run(["pgrep", "-f", f"flenwheel.flows.local_api [0-9]+ {proc.pid}$"], capture_output=True)
    assert leftovers.returncode == 1, "the local Prefect API outlived its command"
    print(f"first CLI run with a fresh PREFECT_HOME on a busy machine: {took:.0f} s")
