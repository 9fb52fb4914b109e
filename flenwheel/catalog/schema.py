"""The catalog's schema: tables, views and the migrations that create or upgrade them, in order.

A migration is a list of statements run in one transaction; ``schema_info`` records the versions applied, so
opening an old catalog upgrades it once and a catalog newer than the code is refused (``core``).
"""

from __future__ import annotations

from flenwheel.core.types import ORIGINS, VERDICTS

SCHEMA_VERSION = 9

_IN = lambda values: ", ".join(f"'{v}'" for v in values)  # noqa: E731 - CHECK lists from the shared types

# The effective decision per image and gate: the latest one.
_REVIEW_STATE_VIEW = """CREATE VIEW review_state AS
    SELECT * EXCLUDE (rn) FROM (
        SELECT *, row_number() OVER (PARTITION BY image_id, gate_id ORDER BY decided_at DESC, seq DESC) AS rn
        FROM reviews) WHERE rn = 1"""
# (before, instruction, after) for approved edits: flywheel 2's training data.
_TRIPLETS_VIEW = """CREATE VIEW triplets AS
    SELECT d.parent_id AS before_id, d.prompt AS instruction, d.child_id AS after_id,
           i.character, d.op, d.prompt_id, d.model_ref, d.seed, r.gate_id, r.decided_at
    FROM derivations d
    JOIN images i ON i.image_id = d.child_id
    JOIN review_state r ON r.image_id = d.child_id AND r.decision = 'approved'
    WHERE d.op IN ('edit', 'augment') AND d.parent_id IS NOT NULL AND d.parent_rank = 0"""

_SCHEMA_V1 = [
    f"""CREATE TABLE images (
        image_id     VARCHAR PRIMARY KEY,          -- sha256 of the stored PNG bytes
        character    VARCHAR NOT NULL,
        origin       VARCHAR NOT NULL CHECK (origin IN ({_IN(ORIGINS)})),
        path         VARCHAR NOT NULL,             -- relative to the data root
        width        INTEGER NOT NULL,
        height       INTEGER NOT NULL,
        source_name  VARCHAR,                      -- original file name, for sources
        lineage_root VARCHAR NOT NULL,
        run_id       VARCHAR,
        created_at   TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)""",
    "CREATE INDEX images_root ON images(lineage_root)",
    """CREATE TABLE derivations (
        child_id        VARCHAR NOT NULL,
        parent_rank     INTEGER NOT NULL DEFAULT 0,  -- 0 for the main input; >0 for extra condition images
        parent_id       VARCHAR,                     -- NULL for text-to-image
        root_id         VARCHAR NOT NULL,            -- lineage_root of the child
        op              VARCHAR NOT NULL,
        model_ref       VARCHAR,                     -- hub id@revision or path@sha256
        loras           JSON,
        prompt          VARCHAR,
        prompt_id       VARCHAR,
        negative_prompt VARCHAR,
        seed            BIGINT,
        steps           INTEGER,
        guidance        DOUBLE,
        strength        DOUBLE,
        params          JSON,
        job_key         VARCHAR NOT NULL DEFAULT '', -- hash of everything that determines the output
        run_id          VARCHAR,
        created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        -- two jobs may make the same picture: both are recorded
        PRIMARY KEY (child_id, parent_rank, job_key))""",
    "CREATE INDEX derivations_child ON derivations(child_id)",
    "CREATE INDEX derivations_parent ON derivations(parent_id)",
    "CREATE INDEX derivations_root ON derivations(root_id)",
    """CREATE TABLE reference_sets (
        reference_set_id VARCHAR PRIMARY KEY,
        character        VARCHAR NOT NULL,
        backend          VARCHAR NOT NULL,
        image_ids        VARCHAR[] NOT NULL,
        embeddings       FLOAT[][] NOT NULL,        -- one per image_ids entry, same order
        threshold        DOUBLE,                    -- calibrated (or default) threshold of this set
        calibration      JSON,                      -- pair statistics and how the threshold was chosen
        created_at       TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)""",
    f"""CREATE TABLE identity_scores (
        image_id         VARCHAR NOT NULL,
        backend          VARCHAR NOT NULL,
        reference_set_id VARCHAR NOT NULL,
        verdict          VARCHAR NOT NULL
                         CHECK (verdict IN ({_IN(VERDICTS)})),
        matched          BOOLEAN,                   -- similarity >= threshold (also for multi_face)
        similarity       DOUBLE,                    -- the deciding value (max or mean)
        similarity_max   DOUBLE,
        similarity_mean  DOUBLE,
        threshold        DOUBLE,
        n_faces          INTEGER,
        face_box         INTEGER[],                 -- x0, y0, x1, y1 in stored-image pixels
        det_score        DOUBLE,
        yaw              DOUBLE,                    -- landmark-based head-turn estimate, degrees
        embedding        FLOAT[],
        run_id           VARCHAR,
        scored_at        TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        PRIMARY KEY (image_id, backend, reference_set_id))""",
    "CREATE SEQUENCE reviews_seq",
    """CREATE TABLE reviews (
        seq        BIGINT PRIMARY KEY DEFAULT nextval('reviews_seq'),
        image_id   VARCHAR NOT NULL,
        gate_id    VARCHAR NOT NULL,
        decision   VARCHAR NOT NULL CHECK (decision IN ('approved','rejected')),
        reviewer   VARCHAR,
        source     VARCHAR NOT NULL CHECK (source IN ('fiftyone','cli','auto')),
        note       VARCHAR,
        run_id     VARCHAR,
        decided_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)""",
    """CREATE TABLE dataset_versions (
        version_id      VARCHAR PRIMARY KEY,        -- '<character>@v<number>'
        character       VARCHAR NOT NULL,
        number          INTEGER NOT NULL,
        parent_version  VARCHAR,
        created_by_run  VARCHAR,
        manifest_path   VARCHAR,
        manifest_sha256 VARCHAR NOT NULL,
        n_images        INTEGER NOT NULL,
        frozen_at       TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        UNIQUE (character, number))""",
    """CREATE TABLE dataset_members (
        version_id VARCHAR NOT NULL,
        image_id   VARCHAR NOT NULL,
        caption    VARCHAR,
        PRIMARY KEY (version_id, image_id))""",
    """CREATE TABLE loras (
        lora_id           VARCHAR PRIMARY KEY,
        character         VARCHAR NOT NULL,
        kind              VARCHAR NOT NULL CHECK (kind IN ('flux','qwen_edit')),
        base_model_ref    VARCHAR NOT NULL,
        dataset_version   VARCHAR,
        hyperparams       JSON,
        steps             INTEGER,
        path              VARCHAR NOT NULL,
        sha256            VARCHAR NOT NULL,
        comfy_path        VARCHAR,
        chosen_checkpoint INTEGER,
        run_id            VARCHAR,
        created_at        TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)""",
    """CREATE TABLE runs (
        run_id              VARCHAR PRIMARY KEY,
        flow                VARCHAR NOT NULL,
        prefect_flow_run_id VARCHAR,
        config              JSON,
        config_sha256       VARCHAR,
        code_version        VARCHAR,
        started_at          TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        finished_at         TIMESTAMPTZ,
        status              VARCHAR NOT NULL CHECK (status IN ('running','completed','failed','awaiting_review')),
        error               VARCHAR)""",
    """CREATE TABLE metrics (
        run_id      VARCHAR NOT NULL,
        scope       VARCHAR NOT NULL,   -- dataset_version / lora / iteration / stage / checkpoint ...
        scope_id    VARCHAR NOT NULL,
        name        VARCHAR NOT NULL,
        value       DOUBLE,
        step        INTEGER NOT NULL DEFAULT 0,
        recorded_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        PRIMARY KEY (run_id, scope, scope_id, name, step))""",
    _REVIEW_STATE_VIEW,
    _TRIPLETS_VIEW,
]

# v2: flywheel iterations. One row per character and iteration number says which dataset version and LoRA
# the iteration made and where its report is, so a re-run of the flywheel resumes from the catalog alone.
_SCHEMA_V2 = [
    """CREATE TABLE iterations (
        character       VARCHAR NOT NULL,
        number          INTEGER NOT NULL,
        dataset_version VARCHAR,
        lora_id         VARCHAR,
        status          VARCHAR NOT NULL CHECK (status IN ('running','awaiting_review','completed')),
        report_path     VARCHAR,        -- relative to the workspace root, like images.path
        run_id          VARCHAR,
        started_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        completed_at    TIMESTAMPTZ,
        PRIMARY KEY (character, number))""",
]

# v3: the review gate's rounds; a reviewer's answer given when resuming a run in the Prefect UI is a review
# source of its own; views for the two questions nearly every reader asks.
_REVIEW_SOURCES = ("fiftyone", "cli", "auto", "prefect")
_SCHEMA_V3 = [
    # DuckDB cannot alter a CHECK constraint: rebuild `reviews` (and the views on it) with the new source.
    "DROP VIEW triplets",
    "DROP VIEW review_state",
    f"""CREATE TABLE reviews_v3 (
        seq        BIGINT PRIMARY KEY DEFAULT nextval('reviews_seq'),
        image_id   VARCHAR NOT NULL,
        gate_id    VARCHAR NOT NULL,
        decision   VARCHAR NOT NULL CHECK (decision IN ('approved','rejected')),
        reviewer   VARCHAR,
        source     VARCHAR NOT NULL CHECK (source IN ({_IN(_REVIEW_SOURCES)})),
        note       VARCHAR,
        run_id     VARCHAR,
        decided_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)""",
    "INSERT INTO reviews_v3 SELECT * FROM reviews",
    "DROP TABLE reviews",
    "ALTER TABLE reviews_v3 RENAME TO reviews",
    _REVIEW_STATE_VIEW,
    _TRIPLETS_VIEW,
    # One row per stop of a flow run at a gate: which candidates were pending, and what the reviewer said when
    # resuming. A run that re-executes from the top after a resume finds its open round here and applies the
    # stored answer to exactly those candidates, whatever was decided in FiftyOne or the CLI meanwhile.
    """CREATE TABLE gate_rounds (
        flow_run_id       VARCHAR NOT NULL,
        gate_id           VARCHAR NOT NULL,
        round             INTEGER NOT NULL,
        pause_key         VARCHAR NOT NULL,
        pending_ids       VARCHAR[] NOT NULL,       -- candidates pending when the run stopped
        opened_at         TIMESTAMPTZ NOT NULL,
        resumed_at        TIMESTAMPTZ,
        reviewer          VARCHAR,
        note              VARCHAR,
        approve_rest      BOOLEAN,
        auto_decide_rest  BOOLEAN,
        decided_by_people INTEGER,                  -- of pending_ids, decided while the run waited
        decided_by_policy INTEGER,                  -- of pending_ids, decided by the answer on resume
        run_id            VARCHAR,
        PRIMARY KEY (flow_run_id, gate_id, round))""",
    # The newest identity score of each image (any backend or reference set).
    """CREATE VIEW latest_identity AS
        SELECT * EXCLUDE (rn) FROM (
            SELECT *, row_number() OVER (PARTITION BY image_id ORDER BY scored_at DESC) AS rn
            FROM identity_scores) WHERE rn = 1""",
    # The step that made each image from its main input (or from text): one row per child.
    """CREATE VIEW first_derivation AS
        SELECT DISTINCT ON (child_id) * FROM derivations WHERE parent_rank = 0 ORDER BY child_id, created_at""",
]

# v4: every edit verified (docs/verification.md): the edit region of each (source, category) as a stored mask,
# one row per check of each checked image, and the attempts of each edit job (retries) with the one chosen.
_SCHEMA_V4 = [
    """CREATE TABLE masks (
        image_id   VARCHAR NOT NULL,            -- the image the region was proposed on (the edit's source)
        category   VARCHAR NOT NULL,            -- prompt category the region is for
        mask_id    VARCHAR NOT NULL,            -- sha256 of the PNG under masks/ (255 = may change)
        kind       VARCHAR NOT NULL,            -- whole | face | person | background | person_minus_face
        confidence DOUBLE NOT NULL,             -- how far the region can be trusted (0..1)
        fraction   DOUBLE NOT NULL,             -- share of the image inside the region
        path       VARCHAR NOT NULL,
        params     JSON,                        -- how it was made (face box, landmarks or ellipse, GrabCut)
        run_id     VARCHAR,
        created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        PRIMARY KEY (image_id, category))""",
    """CREATE TABLE verifications (
        image_id    VARCHAR NOT NULL,
        name        VARCHAR NOT NULL,           -- preserve_ssim | preserve_psnr | change | faces
        score       DOUBLE,
        threshold   DOUBLE,
        passed      BOOLEAN NOT NULL,
        mask_id     VARCHAR,
        params      JSON,
        run_id      VARCHAR,
        verified_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        PRIMARY KEY (image_id, name))""",
    """CREATE TABLE edit_attempts (
        job_key    VARCHAR NOT NULL,            -- the job's key (attempt 0's derivation)
        attempt    INTEGER NOT NULL,            -- 0 the job as asked; k > 0 its k-th retry
        image_id   VARCHAR NOT NULL,
        character  VARCHAR NOT NULL,
        prompt_id  VARCHAR,
        category   VARCHAR,
        seed       BIGINT,
        strength   DOUBLE,
        passed     BOOLEAN NOT NULL,            -- every verifier check passed
        chosen     BOOLEAN NOT NULL,            -- the attempt that is the job's review candidate
        failures   VARCHAR[],
        run_id     VARCHAR,
        created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        PRIMARY KEY (job_key, attempt))""",
    "CREATE INDEX edit_attempts_image ON edit_attempts(image_id)",
    # Per checked image: did every check pass, which failed, and is it a review candidate (not an attempt that
    # lost to another of its job). Images never checked have no row here.
    """CREATE VIEW image_checks AS
        SELECT i.image_id, v.verified, coalesce(v.failed_checks, []) AS failed_checks,
               a.image_id IS NULL OR a.chosen AS candidate, a.attempts
        FROM (SELECT image_id FROM verifications UNION SELECT image_id FROM edit_attempts) i
        LEFT JOIN (SELECT image_id, bool_and(passed) AS verified,
                          list(name ORDER BY name) FILTER (WHERE NOT passed) AS failed_checks
                   FROM verifications GROUP BY image_id) v USING (image_id)
        LEFT JOIN (SELECT image_id, bool_or(chosen) AS chosen,
                          max((SELECT count(*) FROM edit_attempts b WHERE b.job_key = e.job_key)) AS attempts
                   FROM edit_attempts e GROUP BY image_id) a USING (image_id)""",
    # Which prompts need retries: attempts per job and the share of jobs that found a passing edit.
    """CREATE VIEW attempts_per_prompt AS
        SELECT character, prompt_id, count(DISTINCT job_key) AS jobs, count(*) AS attempts,
               round(count(*) / count(DISTINCT job_key), 3) AS attempts_per_job,
               count(DISTINCT job_key) FILTER (WHERE passed) AS jobs_passed
        FROM edit_attempts GROUP BY character, prompt_id""",
]

_CAPTION_SOURCES = ("template", "vlm", "fiftyone", "cli")
_SCHEMA_V5 = [
    # Training captions, history kept: a VLM writes one per dataset member, a reviewer's edit adds a row.
    "CREATE SEQUENCE captions_seq",
    f"""CREATE TABLE captions (
        seq        BIGINT PRIMARY KEY DEFAULT nextval('captions_seq'),
        image_id   VARCHAR NOT NULL,
        caption    VARCHAR NOT NULL,             -- the training caption, trigger word included
        source     VARCHAR NOT NULL CHECK (source IN ({_IN(_CAPTION_SOURCES)})),
        model_ref  VARCHAR,                      -- the VLM that wrote it (source vlm)
        params     JSON,                         -- instruction, decoding, the VLM's raw text
        author     VARCHAR,                      -- who edited it (fiftyone, cli)
        run_id     VARCHAR,
        created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)""",
    "CREATE INDEX captions_image ON captions(image_id)",
    # The caption an image has now: its latest row (a freeze copies it into dataset_members).
    """CREATE VIEW latest_captions AS
        SELECT * EXCLUDE (rn) FROM (
            SELECT *, row_number() OVER (PARTITION BY image_id ORDER BY seq DESC) AS rn FROM captions) WHERE rn = 1""",
    # image_checks gains check_margin: how close the closest scored check came to its threshold, relative to the
    # threshold (0.02 = 2 % away), so the gate can put borderline edits in front of people first.
    "DROP VIEW image_checks",
    """CREATE VIEW image_checks AS
        SELECT i.image_id, v.verified, coalesce(v.failed_checks, []) AS failed_checks, v.check_margin,
               a.image_id IS NULL OR a.chosen AS candidate, a.attempts
        FROM (SELECT image_id FROM verifications UNION SELECT image_id FROM edit_attempts) i
        LEFT JOIN (SELECT image_id, bool_and(passed) AS verified,
                          list(name ORDER BY name) FILTER (WHERE NOT passed) AS failed_checks,
                          min(abs(score - threshold) / greatest(abs(threshold), 1e-6))
                              FILTER (WHERE score IS NOT NULL AND threshold IS NOT NULL
                                      AND name <> 'faces') AS check_margin  -- a face count is exact: no margin
                   FROM verifications GROUP BY image_id) v USING (image_id)
        LEFT JOIN (SELECT image_id, bool_or(chosen) AS chosen,
                          max((SELECT count(*) FROM edit_attempts b WHERE b.job_key = e.job_key)) AS attempts
                   FROM edit_attempts e GROUP BY image_id) a USING (image_id)""",
]

# v6: image_checks gains closest_check, the check check_margin measured ({name, score, threshold}), so the review
# queue and FiftyOne can say which check is borderline instead of "a check" (ties go to the first name); and it
# holds catalogued images only: an editor comparison checks its edits too (docs/editing.md), files under evals/
# that are no images and no candidates.
_SCHEMA_V6 = [
    "DROP VIEW image_checks",
    """CREATE VIEW image_checks AS
        SELECT i.image_id, v.verified, coalesce(v.failed_checks, []) AS failed_checks, v.check_margin,
               v.closest_check, a.image_id IS NULL OR a.chosen AS candidate, a.attempts
        FROM (SELECT image_id FROM verifications UNION SELECT image_id FROM edit_attempts) i
        SEMI JOIN images USING (image_id)
        LEFT JOIN (SELECT image_id, bool_and(passed) AS verified,
                          list(name ORDER BY name) FILTER (WHERE NOT passed) AS failed_checks,
                          min(margin) AS check_margin,
                          arg_min({'name': name, 'score': score, 'threshold': threshold}, (margin, name))
                              FILTER (WHERE margin IS NOT NULL) AS closest_check
                   FROM (SELECT *, CASE WHEN score IS NOT NULL AND threshold IS NOT NULL
                                         AND name <> 'faces'  -- a face count is exact: no margin
                                        THEN abs(score - threshold) / greatest(abs(threshold), 1e-6) END AS margin
                         FROM verifications) GROUP BY image_id) v USING (image_id)
        LEFT JOIN (SELECT image_id, bool_or(chosen) AS chosen,
                          max((SELECT count(*) FROM edit_attempts b WHERE b.job_key = e.job_key)) AS attempts
                   FROM edit_attempts e GROUP BY image_id) a USING (image_id)""",
]

# v8 (docs/coverage.md): quality flags and coverage. Flags are ``verifications`` rows named ``flag:<name>``; they are
# shown (image_checks.flags) but are no failed check: whether a flag rejects is the review settings' word
# (``review.auto_reject``), so image_checks' verdict, failed checks and margin leave them out. Each image's measured
# coverage bins, and each aimed enrichment's plan (the set's coverage and gaps when it was planned, what was aimed).
# Self-contained (it rebuilds image_checks whole), so it applies after version 7 or without it.
_SCHEMA_V8 = [
    """CREATE TABLE image_attributes (
        image_id    VARCHAR PRIMARY KEY,
        yaw         DOUBLE,                     -- degrees, positive: turned to the subject's own left
        pitch       DOUBLE,                     -- degrees, positive: chin up (or the camera below)
        face_share  DOUBLE,                     -- landmark face height / image height
        yaw_bin     VARCHAR,                    -- NULL: not measurable (no face)
        pitch_bin   VARCHAR,
        framing     VARCHAR,
        expression  VARCHAR,
        light       VARCHAR,
        warmth_bin  VARCHAR,
        measures    JSON,                       -- the values the bins come from (mouth, L*, b*, ...)
        backend     VARCHAR,                    -- the face detector
        run_id      VARCHAR,
        measured_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)""",
    """CREATE TABLE enrichment_plans (
        plan_id    VARCHAR PRIMARY KEY,
        character  VARCHAR NOT NULL,
        editor     VARCHAR,
        budget     INTEGER,                     -- edit jobs allowed (NULL: until the gaps were full)
        jobs       INTEGER NOT NULL,            -- edit jobs planned
        coverage   JSON NOT NULL,               -- the set's coverage when planned (n, bins, names, gaps)
        aims       JSON NOT NULL,               -- [{axis, bin, prompt_id, source_id, jobs}]
        run_id     VARCHAR,
        planned_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)""",
    "DROP VIEW image_checks",
    """CREATE VIEW image_checks AS
        SELECT i.image_id, v.verified, coalesce(v.failed_checks, []) AS failed_checks, v.check_margin,
               v.closest_check, coalesce(f.flags, []) AS flags, a.image_id IS NULL OR a.chosen AS candidate, a.attempts
        FROM (SELECT image_id FROM verifications UNION SELECT image_id FROM edit_attempts) i
        SEMI JOIN images USING (image_id)
        LEFT JOIN (SELECT image_id, bool_and(passed) AS verified,
                          list(name ORDER BY name) FILTER (WHERE NOT passed) AS failed_checks,
                          min(margin) AS check_margin,
                          arg_min({'name': name, 'score': score, 'threshold': threshold}, (margin, name))
                              FILTER (WHERE margin IS NOT NULL) AS closest_check
                   FROM (SELECT *, CASE WHEN score IS NOT NULL AND threshold IS NOT NULL
                                         AND name <> 'faces'  -- a face count is exact: no margin
                                        THEN abs(score - threshold) / greatest(abs(threshold), 1e-6) END AS margin
                         FROM verifications WHERE NOT starts_with(name, 'flag:'))
                   GROUP BY image_id) v USING (image_id)
        LEFT JOIN (SELECT image_id, list(substr(name, 6) ORDER BY name) AS flags FROM verifications
                   WHERE starts_with(name, 'flag:') AND NOT passed GROUP BY image_id) f USING (image_id)
        LEFT JOIN (SELECT image_id, bool_or(chosen) AS chosen,
                          max((SELECT count(*) FROM edit_attempts b WHERE b.job_key = e.job_key)) AS attempts
                   FROM edit_attempts e GROUP BY image_id) a USING (image_id)""",
]

# v9: licences on record (docs/models.md). A LoRA and a dataset version hold the licences of the models that made
# them (JSON list of {model, role, family, licence, commercial, source}); ``loras.kind`` loses its CHECK, so a new
# model family's trainer needs no migration (its kind is data: the family's ``lora_kind``). Self-contained: it
# touches no table that versions 7 and 8 (other changes, numbered apart) create.
_SCHEMA_V9 = [
    """CREATE TABLE loras_v9 (
        lora_id           VARCHAR PRIMARY KEY,
        character         VARCHAR NOT NULL,
        kind              VARCHAR NOT NULL,
        base_model_ref    VARCHAR NOT NULL,
        dataset_version   VARCHAR,
        hyperparams       JSON,
        steps             INTEGER,
        path              VARCHAR NOT NULL,
        sha256            VARCHAR NOT NULL,
        comfy_path        VARCHAR,
        chosen_checkpoint INTEGER,
        run_id            VARCHAR,
        created_at        TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        licences          JSON)""",
    "INSERT INTO loras_v9 SELECT *, NULL FROM loras",
    "DROP TABLE loras",
    "ALTER TABLE loras_v9 RENAME TO loras",
    "ALTER TABLE dataset_versions ADD COLUMN licences JSON",
]

MIGRATIONS: dict[int, list[str]] = {
    1: _SCHEMA_V1,
    2: _SCHEMA_V2,
    3: _SCHEMA_V3,
    4: _SCHEMA_V4,
    5: _SCHEMA_V5,
    6: _SCHEMA_V6,
    # 7 was numbered for the evaluation change (docs/evaluation.md), which needed no new table in the end
    8: _SCHEMA_V8,
    9: _SCHEMA_V9,
}
