"""Face identity: backends, reference sets with calibrated thresholds, and verdicts.

:mod:`.backends` detects and embeds faces (insightface ArcFace, dlib; :mod:`.permissive`: yunet, sface),
:mod:`.reference` builds and calibrates the character's reference set, :mod:`.scoring` turns an image into a verdict
and records it.
"""

from flenwheel.identity.backends import (
    BACKENDS,
    FACTS,
    LICENCES,
    BackendFacts,
    BackendLicence,
    DlibBackend,
    Face,
    FaceBackend,
    IdentityError,
    IdentityModelMissing,
    InsightFaceBackend,
    estimate_yaw,
    insightface_pack_dir,
    load_backend,
)
from flenwheel.identity.permissive import SfaceBackend, YunetBackend
from flenwheel.identity.reference import (
    Calibration,
    ReferenceSet,
    build_reference_set,
    calibrate,
    recalibrate,
    reference_set_for,
    reference_set_id,
)
from flenwheel.identity.scoring import (
    Judge,
    Score,
    ScoringPlan,
    filter_images,
    judge_for,
    judge_image,
    plan_scoring,
    record_scores,
    score_encoded,
    score_files,
    score_row,
    shutdown_workers,
)

__all__ = [
    "BACKENDS", "FACTS", "LICENCES", "BackendFacts", "BackendLicence", "Calibration", "DlibBackend", "Face",
    "FaceBackend", "IdentityError", "IdentityModelMissing", "InsightFaceBackend", "Judge", "ReferenceSet", "Score",
    "ScoringPlan", "SfaceBackend", "YunetBackend", "build_reference_set", "calibrate", "estimate_yaw", "filter_images",
    "insightface_pack_dir", "judge_for", "judge_image", "load_backend", "plan_scoring", "recalibrate",
    "record_scores", "reference_set_for", "reference_set_id", "score_encoded", "score_files", "score_row",
    "shutdown_workers",
]  # fmt: skip
