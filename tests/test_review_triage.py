"""Review where it matters: uncertain candidates first, clear ones decided by the policy, agreement reported; and
the report's per-prompt view of checks, retries and failures."""

from __future__ import annotations

from pathlib import Path

from flenwheel import gate
from flenwheel.catalog import Catalog
from flenwheel.core.config import ReviewSettings
from flenwheel.editing import AugmentEditor, EditJob, run_edit_batch
from flenwheel.editing.checks import EditChecker
from flenwheel.identity import filter_images, load_backend
from flenwheel.report.checks import enrichment_section, failure_kinds, per_prompt, review_section
from flenwheel.store.ingest import ingest_paths
from flenwheel.store.workspace import Workspace

SETTINGS = ReviewSettings(auto_margin=0.02, clear_band=0.08, check_band=0.1)


def _cand(sim: float | None, verdict: str | None = "pass", failed=(), margin: float | None = None) -> dict:
    threshold = 0.5 if sim is not None else None
    return {
        "image_id": f"{sim}-{verdict}-{len(failed)}-{margin}",
        "verdict": verdict,
        "similarity": sim,
        "threshold": threshold,
        "failed_checks": list(failed),
        "check_margin": margin,
    }


def test_triage_puts_near_threshold_and_failed_checks_first_and_clear_cases_aside() -> None:
    assert gate.triage(_cand(0.9, margin=0.5), SETTINGS).clear == "approved"  # far above, checks far from bars
    assert gate.triage(_cand(0.3, "fail"), SETTINGS).clear == "rejected"  # far below
    assert gate.triage(_cand(None, "no_face"), SETTINGS).clear == "rejected"
    # far below the threshold stays a clear rejection whatever the checks say
    assert gate.triage(_cand(0.3, "fail", failed=["change"]), SETTINGS).clear == "rejected"
    near = gate.triage(_cand(0.51), SETTINGS)
    assert near.clear is None and 0.85 < near.uncertainty <= 1 and "near threshold" in near.why
    assert gate.triage(_cand(0.55), SETTINGS).uncertainty < near.uncertainty  # farther: less uncertain
    assert gate.triage(_cand(0.49, "fail"), SETTINGS).clear is None  # just below: a person decides
    failed = gate.triage(_cand(0.9, failed=["preservation"]), SETTINGS)
    assert failed.uncertainty == 1.0 and "failed checks: preservation" in failed.why
    borderline = gate.triage(_cand(0.9, margin=0.03), SETTINGS)
    assert borderline.clear is None and abs(borderline.uncertainty - 0.7) < 1e-9
    assert gate.triage(_cand(None, None), SETTINGS) is None  # not scored yet: waits


def _enriched(ws: Workspace, catalog: Catalog, faces: Path) -> list[str]:
    character = ws.character("obama")
    ingest_paths(ws, catalog, "obama", [faces / "obama" / "obama_1.jpg", faces / "obama" / "obama_2.jpg"], None)
    filter_images(ws, catalog, character, image_ids=None, run_id=None)
    library = ws.prompt_library(character)
    sources = [r["image_id"] for r in catalog.source_images("obama")]
    jobs = [EditJob(s, library[p], 0) for s in sources for p in ("angle-mirror", "bg-blue", "light-golden-hour")]
    checker = EditChecker(ws.root, load_backend("dlib", ws.settings.identity), ws.settings.verify)
    made = run_edit_batch(ws, catalog, "obama", AugmentEditor(), jobs, None, checker)
    filter_images(ws, catalog, character, image_ids=made, run_id=None)
    return made


def test_the_queue_the_clear_cases_and_the_agreement_report(ws: Workspace, catalog: Catalog, faces: Path) -> None:
    _enriched(ws, catalog, faces)
    queue = gate.Gate(catalog, "obama", "enrich", SETTINGS).review_queue()
    assert len(queue) == len(gate.Gate(catalog, "obama", "enrich").candidates()) == 6
    us = [r["uncertainty"] for r in queue]
    assert us == sorted(us, reverse=True) and all(u is not None for u in us)  # hardest first
    clear = [r for r in queue if gate.triage(r, SETTINGS).clear is not None]
    uncertain = [r for r in queue if r not in clear]

    approved, rejected = gate.Gate(catalog, "obama", "enrich", SETTINGS).auto_decide_clear(None)
    assert approved + rejected == len(clear)
    assert {r["image_id"] for r in gate.Gate(catalog, "obama", "enrich", SETTINGS).review_queue()} == {
        r["image_id"] for r in uncertain
    }
    notes = {r["image_id"]: r["note"] for r in catalog.rows("SELECT * FROM review_state")}
    assert all(notes[r["image_id"]].startswith("clear: ") for r in clear)

    # people: decide every uncertain one against the policy, and override one clear decision
    people = [
        (r["image_id"], "rejected" if gate.policy_decision(r, 0.02)[0] == "approved" else "approved", None)
        for r in uncertain
    ]
    overridden = clear[0]
    flip = "rejected" if gate.policy_decision(overridden, 0.02)[0] == "approved" else "approved"
    gate.Gate(catalog, "obama", "enrich").decide(
        [*people, (overridden["image_id"], flip, "looks off")], "cli", "ann", None
    )
    stats = gate.Gate(catalog, "obama", "enrich", SETTINGS).review_stats()
    counts = (stats.candidates, stats.by_policy, stats.by_people, stats.pending)
    assert counts == (6, len(clear) - 1, len(people) + 1, 0)
    assert stats.compared == len(people) + 1 and stats.agreed == 0 and stats.agreement == 0.0
    assert stats.overridden == 1 and sum(stats.confusion.values()) == stats.compared
    assert abs(stats.auto_share - (len(clear) - 1) / 6) < 1e-9

    section = review_section(catalog, "obama", SETTINGS)
    [row] = section.table
    assert row["gate"] == "obama:enrich" and row["by policy"] == len(clear) - 1 and row["policy overridden"] == 1


def test_the_report_shows_pass_rates_retries_and_failures_per_prompt(
    ws: Workspace, catalog: Catalog, faces: Path, tmp_path: Path
) -> None:
    _enriched(ws, catalog, faces)
    gate.Gate(catalog, "obama", "enrich").auto_review(None)
    outcomes = catalog.edit_outcomes("obama")
    attempts = catalog.rows("SELECT * FROM edit_attempts")
    assert len(outcomes) == len(attempts)  # every attempt, chosen or not
    table = {r["prompt"]: r for r in per_prompt(outcomes)}
    assert set(table) == {"angle-mirror", "bg-blue", "light-golden-hour"}
    for prompt, row in table.items():
        mine = [a for a in attempts if a["prompt_id"] == prompt]
        assert row["attempts"] == len(mine) and row["jobs"] == len({a["job_key"] for a in mine}) == 2
        changes = catalog.rows(
            "SELECT passed FROM verifications WHERE name = 'change' AND list_contains(?, image_id)",
            [[a["image_id"] for a in mine]],
        )
        assert row["change pass"] == sum(c["passed"] for c in changes) / len(changes)
        approved = catalog.rows(
            "SELECT a.attempt FROM edit_attempts a JOIN review_state r USING (image_id)"
            " WHERE a.prompt_id = ? AND r.decision = 'approved'",
            [prompt],
        )
        assert row["approved"] == len(approved)
        expected = sum(a["attempt"] for a in approved) / len(approved) if approved else None
        assert row["retries per approved"] == expected
    # the mirror keeps nothing in place outside the face: it is the prompt that never fails preservation
    # because angle edits do not ask for it; the background edit does
    assert table["angle-mirror"].get("preservation pass") is None
    assert table["bg-blue"]["preservation pass"] is not None

    section = enrichment_section(ws.root, catalog, "obama", tmp_path)
    kinds = {k for r in outcomes for k in failure_kinds(r)}
    assert len(section.images) == len(kinds) and all(p.exists() for p, _ in section.images)
    assert all(cap.startswith("failed ") for _, cap in section.images)


def test_people_see_the_queue_in_the_cli_and_in_fiftyone(ws: Workspace, catalog: Catalog, faces: Path, cli) -> None:
    _enriched(ws, catalog, faces)
    queue = gate.Gate(catalog, "obama", "enrich", ws.settings.review).review_queue()
    shown = cli("review", "queue", "obama")
    assert shown.exit_code == 0 and "6 undecided in obama:enrich" in shown.output
    assert shown.output.index(queue[0]["image_id"][:12]) < shown.output.index(queue[-1]["image_id"][:12])

    from flenwheel.review.datasets import QUEUE_VIEW, open_dataset, sync_candidates

    sync_candidates(ws, catalog, "obama")
    view = open_dataset(ws, "obama").load_saved_view(QUEUE_VIEW)
    assert len(view) == 6  # the candidates, not the two source photos
    assert view.values("uncertainty") == sorted((r["uncertainty"] for r in queue), reverse=True)
    gate.Gate(catalog, "obama", "enrich").decide([(queue[0]["image_id"], "approved", None)], "cli", "ann", None)
    sync_candidates(ws, catalog, "obama")
    assert queue[0]["image_id"] not in open_dataset(ws, "obama").load_saved_view(QUEUE_VIEW).values("image_id")
    status = cli("review", "status", "obama")
    assert "by people 1" in status.output and "people agreed with the policy" in status.output


def test_a_borderline_check_is_named_with_its_score_and_threshold(
    ws: Workspace, catalog: Catalog, faces: Path, cli
) -> None:
    """Issue 28.3: the queue says which check is within the band of its threshold, with its score and threshold,
    in the CLI and in FiftyOne's ``uncertainty_reason``; the check is the one SQL finds closest."""
    settings = ws.configs_dir / "flenwheel.yaml"
    # a wide band makes every passing scored check borderline, so the real edits of the photos have some
    settings.write_text(settings.read_text().replace("check_band: 0.1 ", "check_band: 1.0 "))
    ws = Workspace(root=ws.root, configs=ws.configs_dir)  # read the settings again
    assert ws.settings.review.check_band == 1.0
    _enriched(ws, catalog, faces)
    closest = {
        r["image_id"]: r
        for r in catalog.rows(
            """SELECT image_id, name, score, threshold, abs(score - threshold) / abs(threshold) AS margin
           FROM verifications WHERE name <> 'faces' AND threshold IS NOT NULL
           QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY margin, name) = 1"""
        )
    }
    queue = gate.Gate(catalog, "obama", "enrich", ws.settings.review).review_queue()
    borderline = [
        r for r in queue if not r["failed_checks"] and r["check_margin"] is not None and r["check_margin"] < 1.0
    ]
    assert borderline
    said = {}
    for r in borderline:
        c = closest[r["image_id"]]
        said[r["image_id"]] = (
            f"check {c['name']} {c['score']:.4g} within {c['margin']:.1%} of its threshold {c['threshold']:.4g}"
        )
        assert said[r["image_id"]] in r["why"] and "a check within" not in r["why"]

    shown = cli("review", "queue", "obama")
    assert shown.exit_code == 0 and all(text in shown.output for text in said.values())

    from flenwheel.review.datasets import open_dataset, sync_candidates

    sync_candidates(ws, catalog, "obama")
    ds = open_dataset(ws, "obama")
    reasons = dict(zip(ds.values("image_id"), ds.values("uncertainty_reason"), strict=True))
    assert all(text in reasons[image_id] for image_id, text in said.items())
