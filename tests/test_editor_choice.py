"""Editor choice per character and prompt category, enrichment with the vibe editor end to end on cpu-tiny, and
``flenwheel eval-editors`` comparing qwen and vibe on the same jobs (tiny twins through the production loader)."""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path

import pytest

from flenwheel.catalog import Catalog
from flenwheel.core.config import ConfigError
from flenwheel.editing import editor_plan
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace

ROUTED = "editors:\n  default: qwen\n  categories: {lighting: vibe}\n"


def obama_yaml(ws: Workspace, extra: str) -> None:
    (ws.configs_dir / "characters" / "obama.yaml").write_text(
        f"name: obama\ntrigger: fw_obama\nidentity:\n  backend: dlib\n{extra}"
    )


def test_routing_is_validated_and_names_the_bad_key(ws: Workspace) -> None:
    obama_yaml(ws, "editors:\n  categories: {lighting: dalle}\n")
    with pytest.raises(ConfigError, match=r"editors\.categories\.lighting.*'augment', 'qwen', 'vibe' or 'klein'"):
        ws.character("obama")
    obama_yaml(ws, "editors:\n  categories: {lightning: vibe}\n")
    character = ws.character("obama")
    library = list(ws.prompt_library(character).values())
    with pytest.raises(ConfigError, match=r"obama\.yaml: editors\.categories\.lightning: no prompt has this category"):
        editor_plan("configured", character, library, library)

    obama_yaml(ws, ROUTED)
    character = ws.character("obama")
    plan = editor_plan("configured", character, library, library)
    assert {p.category for p in plan["vibe"]} == {"lighting"}
    assert "lighting" not in {p.category for p in plan["qwen"]}
    assert len(plan["qwen"]) + len(plan["vibe"]) == len(library)
    assert editor_plan("augment", character, library, library) == {"augment": library}  # a named editor: all


@pytest.mark.tiny
def test_configured_enrichment_routes_each_category_and_keys_differ(
    prefect_harness, ws: Workspace, faces: Path
) -> None:
    from flenwheel.flows.enrich import EnrichParams, enrich

    obama_yaml(ws, ROUTED)
    catalog = Catalog(ws.catalog_path)
    ingest_paths(ws, catalog, "obama", [faces / "obama" / "obama_small.jpg"], None)
    prompts = ["light-studio-soft", "angle-left-45"]
    params = EnrichParams(
        character="obama", editor="configured", profile="cpu-tiny", prompts=prompts, seeds=1, review="auto"
    )
    made = enrich(params, root=str(ws.root), configs=str(ws.configs_dir)).images
    # tiny random weights paint noise: every attempt fails the face check and is retried (docs/verification.md)
    assert made == len(catalog.rows("SELECT * FROM derivations")) >= 2
    rows = {r["prompt_id"]: r for r in catalog.rows("SELECT * FROM derivations WHERE job_key NOT LIKE '%:retry%'")}
    assert json.loads(rows["light-studio-soft"]["params"])["editor"] == "vibe"
    assert json.loads(rows["angle-left-45"]["params"])["editor"] == "qwen"
    assert rows["light-studio-soft"]["model_ref"].startswith("tiny:vibe@sha256:")

    # The same job with a named editor is another job (the editor is part of its key), so it runs too ...
    vibe_all = params.model_copy(update={"editor": "vibe", "prompts": ["light-studio-soft"]})
    assert enrich(vibe_all, root=str(ws.root), configs=str(ws.configs_dir)).images == 0  # ... unless it is this one
    qwen_light = params.model_copy(update={"editor": "qwen", "prompts": ["light-studio-soft"]})
    assert enrich(qwen_light, root=str(ws.root), configs=str(ws.configs_dir)).images >= 1
    keys = catalog.rows(
        "SELECT job_key, params->>'editor' AS editor FROM derivations"
        " WHERE prompt_id = 'light-studio-soft' AND job_key NOT LIKE '%:retry%'"
    )
    assert sorted(r["editor"] for r in keys) == ["qwen", "vibe"] and len({r["job_key"] for r in keys}) == 2


@pytest.mark.tiny
def test_enrich_with_the_vibe_editor_from_the_cli(prefect_harness, cli, ws: Workspace, faces: Path) -> None:
    catalog = Catalog(ws.catalog_path)
    ingest_paths(ws, catalog, "obama", [faces / "obama" / "obama_small.jpg"], None)
    result = cli(
        "enrich",
        "obama",
        "--editor",
        "vibe",
        "--profile",
        "cpu-tiny",
        "--prompts",
        "light-studio-soft,bg-blue",
        "--seeds",
        "1",
        "--review",
        "auto",
    )
    assert result.exit_code == 0, result.output
    rows = catalog.rows("SELECT d.*, i.width, i.height FROM derivations d JOIN images i ON i.image_id = d.child_id")
    assert {r["prompt_id"] for r in rows} == {"bg-blue", "light-studio-soft"}
    attempts = catalog.rows("SELECT * FROM edit_attempts")  # the vibe editor goes through the same verifier
    assert {a["prompt_id"] for a in attempts if a["chosen"]} == {"bg-blue", "light-studio-soft"}
    assert len(attempts) == len(rows)
    [source] = catalog.rows("SELECT width, height FROM images WHERE origin = 'source'")
    for r in rows:
        params = json.loads(r["params"])
        assert params["editor"] == "vibe" and params["pipeline"] == "VibePipeline" and r["steps"] == 2
        assert (r["width"], r["height"]) == (source["width"], source["height"])  # revert-resize: the input's size
    scored = catalog.rows(
        "SELECT DISTINCT image_id FROM identity_scores WHERE image_id IN (SELECT child_id FROM derivations)"
    )
    assert len(scored) == len({r["child_id"] for r in rows})


@pytest.mark.tiny
def test_eval_editors_writes_both_editors_metrics_and_grids(cli, ws: Workspace, faces: Path) -> None:
    catalog = Catalog(ws.catalog_path)
    ingest_paths(ws, catalog, "obama", [faces / "obama" / "obama_small.jpg"], None)
    command = ("eval-editors", "obama", "--editors", "qwen,vibe", "--profile", "cpu-tiny", "--seeds", "1",
               "--prompts", "light-studio-soft,angle-left-45")  # fmt: skip
    result = cli(*command)
    assert result.exit_code == 0, result.output
    metrics = {
        (r["scope_id"], r["name"]): r["value"]
        for r in catalog.rows("SELECT scope_id, name, value FROM metrics WHERE scope = 'editor_eval'")
    }
    [eval_id] = {k.split(":")[0] for k, _ in metrics}
    for editor in ("qwen", "vibe"):
        assert metrics[(f"{eval_id}:{editor}", "n")] == 1  # angles are left out for both: vibe does not do them
        assert metrics[(f"{eval_id}:{editor}:lighting", "n")] == 1
        assert metrics[(f"{eval_id}:{editor}", "seconds_per_edit")] > 0
        assert metrics[(f"{eval_id}:{editor}", "peak_gib")] >= 0
    assert (f"{eval_id}:qwen:angles", "n") not in metrics
    report = ws.root / "reports" / "obama" / eval_id / "index.html"
    page = report.read_text()
    assert report.is_file() and "side_by_side_lighting.png" in page and "angle-left-45" in page  # named as left out
    assert (report.parent / "side_by_side_lighting.png").is_file() and (report.parent / "pass_rates.png").is_file()
    edits = sorted(p.name.split("-")[0] for p in (ws.root / "evals" / eval_id).glob("*.png"))
    assert edits == ["qwen", "vibe"]
    rows = json.loads((ws.root / "evals" / eval_id / "evaluation.json").read_text())
    assert {r["editor"] for r in rows} == {"qwen", "vibe"} and {r["seed"] for r in rows} == {0}

    again = cli(*command)
    assert again.exit_code == 0 and eval_id in again.output  # same jobs, same id; metrics recorded once
    assert len(catalog.rows("SELECT * FROM metrics WHERE scope = 'editor_eval'")) == len(metrics)
    bad = cli("eval-editors", "obama", "--editors", "qwen,dalle")
    assert bad.exit_code == 2 and "unknown editor(s) dalle" in bad.stderr


def page_tables(page: str) -> list[dict[str, dict[str, str]]]:
    """The report page's tables as {first cell: {column: cell text}} (the template writes one row per line)."""
    tables = []
    for block in re.findall(r"<table>(.*?)</table>", page, re.S):
        head, *rows = re.findall(r"<tr>(.*?)</tr>", block, re.S)
        columns = [html.unescape(c) for c in re.findall(r"<th>(.*?)</th>", head)]
        cells = [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", r)] for r in rows]
        tables.append({c[0]: dict(zip(columns, c, strict=True)) for c in cells})
    return tables


@pytest.mark.tiny
def test_eval_editors_checks_every_edit_like_enrichment_and_the_page_matches_sql(
    cli, ws: Workspace, faces: Path
) -> None:
    """Issue 28.1: the comparison runs enrichment's masks, verifier (face count included) and critic on every
    edit of every editor; its checks are in `verifications`, and the page's numbers are what SQL says."""
    from flenwheel import gate
    from flenwheel.report.format import cell
    from flenwheel.store import doctor

    settings = ws.configs_dir / "flenwheel.yaml"
    settings.write_text(
        settings.read_text()
        .replace("enabled: true", "enabled: true\n  critic: editor")
        .replace(
            "strength_factor: 0.7",
            "strength_factor: 0.7\n  critic_checks: [{id: photo, question: 'Is this a photo?', threshold: 0.05}]",
        )
    )
    catalog = Catalog(ws.catalog_path)
    ingest_paths(ws, catalog, "obama", [faces / "obama" / "obama_small.jpg"], None)
    result = cli(
        "eval-editors",
        "obama",
        "--editors",
        "augment,vibe",
        "--profile",
        "cpu-tiny",
        "--prompts",
        "bg-blue,light-golden-hour",
        "--seeds",
        "1",
    )
    assert result.exit_code == 0, result.output
    [eval_id] = {
        r["scope_id"].split(":")[0]
        for r in catalog.rows("SELECT scope_id FROM metrics")
        if r["scope_id"].startswith("editors-")
    }

    # Every edit of every editor is checked, keyed by the sha256 of its file under evals/
    edits = json.loads((ws.root / "evals" / eval_id / "evaluation.json").read_text())
    assert len(edits) == 4  # 2 editors x 1 source x 2 prompts
    for e in edits:
        data = (ws.root / "evals" / eval_id / e["file"]).read_bytes()
        assert e["image_id"] == hashlib.sha256(data).hexdigest()
    checks = catalog.rows(
        "SELECT image_id, name, passed, params->>'$.arm' AS arm FROM verifications WHERE params->>'$.eval_id' = ?",
        [eval_id],
    )
    by_image: dict[str, set[str]] = {}
    for c in checks:
        by_image.setdefault(c["image_id"], set()).add(c["name"])
    assert set(by_image) == {e["image_id"] for e in edits}
    assert all({"change", "faces", "critic:photo"} <= names for names in by_image.values())  # as in enrichment
    assert {c["arm"] for c in checks} == {"augment", "vibe"}
    assert {m["category"] for m in catalog.rows("SELECT * FROM masks")} == {"background", "lighting"}

    # The page's verifier pass rate and failed checks per kind, per editor and per category, are the catalog's
    checked = """WITH v AS (SELECT image_id, params->>'$.arm' AS arm, params->>'$.category' AS category,
                                   CASE WHEN name LIKE 'preserve_%' THEN 'preservation' ELSE name END AS kind, passed
                            FROM verifications WHERE params->>'$.eval_id' = $id)"""
    rates = catalog.rows(
        checked
        + """, e AS (SELECT image_id, arm, category, bool_and(passed) AS ok FROM v GROUP BY ALL)
        SELECT arm, category, count(*) AS n, avg(ok::INT) AS rate FROM e
        GROUP BY GROUPING SETS ((arm), (arm, category))""",
        {"id": eval_id},
    )
    failed = catalog.rows(
        checked
        + """SELECT arm, category, kind, count(DISTINCT image_id) FILTER (WHERE NOT passed) AS failed FROM v
        GROUP BY GROUPING SETS ((arm, kind), (arm, category, kind))""",
        {"id": eval_id},
    )
    per_arm, per_category = page_tables((ws.root / "reports" / "obama" / eval_id / "index.html").read_text())
    metrics = {
        (r["scope_id"], r["name"]): r["value"]
        for r in catalog.rows("SELECT * FROM metrics WHERE scope = 'editor_eval'")
    }

    def shown(row: dict) -> dict[str, str]:
        return per_category[f"{row['arm']}:{row['category']}"] if row["category"] else per_arm[row["arm"]]

    for row in rates:
        key = row["arm"] + (f":{row['category']}" if row["category"] else "")
        assert shown(row)["verifier_pass_rate"] == cell(row["rate"], "verifier_pass_rate") != "-"
        assert shown(row)["n"] == str(row["n"])  # a count reads as a count (issue 28.2), not 2.000
        assert metrics[(f"{eval_id}:{key}", "verifier_pass_rate")] == pytest.approx(row["rate"])
    assert len(rates) == 6 and all(shown(row)[f"failed:{row['kind']}"] == str(row["failed"]) for row in failed)
    assert len(per_category) == 4 and len(per_arm) == 2
    assert "failed checks" in result.output and "2.000" not in result.output

    # Evaluation edits are no candidates and no images: gates, FiftyOne's rows, reports and doctor ignore them
    assert catalog.rows("SELECT count(*) AS n FROM images")[0]["n"] == 1
    assert catalog.rows("SELECT * FROM image_checks") == []  # the view of catalogued images' checks
    assert gate.Gate(catalog, "obama", "enrich").candidates() == [] and catalog.edit_outcomes("obama") == []
    assert [r["origin"] for r in catalog.review_dataset_rows("obama")] == ["source"]
    assert doctor.examine(ws, catalog, grace_s=0).healthy
