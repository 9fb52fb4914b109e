"""Calibrate the preservation verifier's thresholds on real faces and the augment editor's known edits.

    .venv/bin/python bench/calibrate_verifier.py [--faces ../shared/faces] [--seeds 2]

Every single-person photo of ../shared/faces is edited by the augment editor with every enrich prompt that has
an ``augment`` transform (mirror and reframes, relighting, background replacement, clothing recolour), and by
three no-op "editors": the input itself, a JPEG re-encode (quality 85) and a half-size round trip (what a VAE
does to pixels it was told to keep). Each output is scored under every category's verifier against the
category's edit region on the original, and the scores are split into:

* the verifier's own category (a background edit under the background verifier): must pass;
* the no-op editors: must fail ``change`` and pass preservation;
* the other categories (a mirror under the background verifier): should fail, unless the edit happened to
  touch nothing the verifier keeps (a recolour of clothes that GrabCut did not find changes nothing).

Thresholds are set from the good side - a correct editor must not be rejected - and then shown against the
wrong edits: preservation sits just below the lowest score of the verifier's own edits and the no-ops (SSIM
0.01 below, PSNR 1 dB below, structure 0.02 below); change sits midway between the largest no-op change and
the smallest relight (the subtlest edit category), rounded down to 0.005.
Expression has no augment transform: it shares the outside thresholds with background and outfit (the same
measure). The last table gives, per verifier, how many outputs of each source fail. Recorded in
docs/verification.md.
"""

from __future__ import annotations

import argparse
import io
import math
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image

from flenwheel.core.config import PromptEntry, VerifierSpec
from flenwheel.editing.augment import AugmentEditor
from flenwheel.editing.jobs import EditJob
from flenwheel.editing.masks import propose
from flenwheel.editing.verify import WORK_SIDE, count_faces, verify

PROJECT = Path(__file__).resolve().parents[1]
PEOPLE = ("obama", "biden", "kit_harington", "rose_leslie", "alex_lacamoire", "lin_manuel_miranda")
CATEGORIES = ("background", "lighting", "angles", "expression", "outfit")
KINDS = {
    "background": "outside",
    "lighting": "structure",
    "angles": "none",
    "expression": "outside",
    "outfit": "outside",
}


def noop_edits(rgb: np.ndarray) -> dict[str, np.ndarray]:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=85)
    jpeg = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    h, w = rgb.shape[:2]
    half = cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    roundtrip = cv2.resize(half, (w, h), interpolation=cv2.INTER_CUBIC)
    return {"noop-identity": rgb.copy(), "noop-jpeg85": jpeg, "noop-halfsize": roundtrip}


def equalised_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of the histogram-equalised grey images at the verifier's working size (the rejected structure idea)."""
    from skimage.metrics import structural_similarity

    h, w = a.shape[:2]
    scale = min(1.0, WORK_SIDE / max(h, w))
    size = (round(w * scale), round(h * scale))

    def grey(x: np.ndarray) -> np.ndarray:
        return cv2.equalizeHist(cv2.cvtColor(cv2.resize(x, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY))

    return float(structural_similarity(grey(a), grey(b), data_range=255))


def stats(values: list[float]) -> str:
    if not values:
        return "-"
    v = np.array(values)
    return f"n={len(v):3d} min={v.min():.3f} p5={np.percentile(v, 5):.3f} med={np.median(v):.3f} max={v.max():.3f}"


def floor_to(value: float, step: float) -> float:
    """``value`` rounded down to a multiple of ``step`` (a threshold errs on the side of passing good edits)."""
    return round(math.floor(value / step + 1e-9) * step, 6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=Path, default=PROJECT.parent / "shared" / "faces")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()

    from flenwheel.core.config import IdentityBackendSettings
    from flenwheel.identity.backends import load_backend

    backend = load_backend("dlib", IdentityBackendSettings())
    library = yaml.safe_load((PROJECT / "configs" / "prompts" / "enrich.yaml").read_text())["prompts"]
    prompts = [PromptEntry.model_validate(p) for p in library if p.get("augment")]
    editor = AugmentEditor()
    raw = {c: VerifierSpec(preserve=KINDS[c], min_change=0.0, faces=None) for c in CATEGORIES}  # type: ignore[arg-type]

    # scores[verifier][source][metric]: source is the edit's prompt category or the no-op's name
    scores: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    equalised: dict[str, list[float]] = defaultdict(list)  # the structure measure first tried, for the record
    face_counts: dict[str, list[int]] = defaultdict(list)
    conf: dict[str, list[float]] = defaultdict(list)
    started = time.perf_counter()
    photos = sorted(p for person in PEOPLE for p in (args.faces / person).iterdir() if p.suffix in (".jpg", ".png"))
    for path in photos:
        img = Image.open(path).convert("RGB")
        rgb = np.asarray(img)
        faces = [f for f in backend.detect(rgb) if f.score >= backend.facts.confident_score]
        if not faces:
            print(f"skip {path.name}: no confident face")
            continue
        box = tuple(round(v) for v in max(faces, key=lambda f: f.area).box)
        regions = {c: propose(rgb, c, box) for c in CATEGORIES}
        for c, m in regions.items():
            conf[c].append(m.confidence)
        outputs: list[tuple[str, int, np.ndarray]] = [(n, 0, e) for n, e in noop_edits(rgb).items()]
        for prompt in prompts:
            for seed in range(args.seeds):
                out = np.asarray(editor.edit(img, EditJob("calibration", prompt, seed), box).image)  # type: ignore[arg-type]
                outputs.append((prompt.category, seed, out))
        for source, seed, out in outputs:
            if not source.startswith("noop") and seed == 0:
                face_counts[source].append(count_faces(backend, out))
            if source in ("lighting", "angles"):
                equalised[source].append(equalised_ssim(rgb, out))
            for verifier in CATEGORIES:
                v = verify(rgb, out, regions[verifier], raw[verifier])
                if v.ssim_outside is not None:
                    scores[verifier][source]["ssim"].append(v.ssim_outside)
                if v.psnr_outside is not None:
                    scores[verifier][source]["psnr"].append(v.psnr_outside)
                scores[verifier][source]["change"].append(v.change)
        print(f"{path.parent.name}/{path.name}: {len(outputs)} outputs ({time.perf_counter() - started:.0f} s)")

    sources = (*CATEGORIES, "noop-identity", "noop-jpeg85", "noop-halfsize")
    print("\n== score distributions per verifier and edit source")
    print("   ssim: SSIM over the kept region (structure: contrast-structure term); psnr: dB over the kept region;")
    print("   change: mean |difference| in the edit region (0..1)")
    for verifier in CATEGORIES:
        print(f"\n[{verifier}] preserve={KINDS[verifier]}")
        for source in sources:
            for metric in ("ssim", "psnr", "change"):
                vals = scores[verifier][source][metric]
                if vals:
                    mark = "*" if source == verifier else " "
                    print(f" {mark}{source:14s} {metric:6s} {stats(vals)}")

    print("\n== region confidence (median):", {c: round(float(np.median(v)), 2) for c, v in conf.items()})
    print("== faces found in augment outputs (seed 0):", {c: sorted(set(v)) for c, v in face_counts.items()})
    print("== histogram-equalised grey SSIM (first structure idea): lighting", stats(equalised["lighting"]))
    print("                                                          angles  ", stats(equalised["angles"]))

    def pool(verifiers: tuple[str, ...], srcs: tuple[str, ...], metric: str) -> list[float]:
        return [x for v in verifiers for s in srcs for x in scores[v][s][metric]]

    noops = ("noop-identity", "noop-jpeg85", "noop-halfsize")
    outside = ("background", "outfit", "expression")
    print("\n== chosen thresholds (good = the verifier's own edits and the no-ops; a threshold sits below them all)")
    good = [x for v in ("background", "outfit") for x in scores[v][v]["ssim"]] + pool(outside, noops, "ssim")
    min_ssim = round(floor_to(min(good), 0.01) - 0.01, 2)
    good_p = [x for v in ("background", "outfit") for x in scores[v][v]["psnr"]] + pool(outside, noops, "psnr")
    min_psnr = float(math.floor(min(good_p)) - 1)
    print(f"outside   min_ssim {min_ssim:.2f} (lowest good {min(good):.3f})")
    print(f"outside   min_psnr {min_psnr:.0f} dB (lowest good {min(good_p):.2f})")
    good_s = scores["lighting"]["lighting"]["ssim"] + pool(("lighting",), noops, "ssim")
    min_struct = round(floor_to(min(good_s), 0.01) - 0.02, 2)
    print(f"structure min_ssim {min_struct:.2f} (lowest good {min(good_s):.3f})")
    noop_change = pool(CATEGORIES, noops, "change")
    subtle = min(scores["lighting"]["lighting"]["change"])
    min_change = floor_to((max(noop_change) + subtle) / 2, 0.005)
    print(f"change    min_change {min_change:.3f} (midway: no-ops <= {max(noop_change):.4f}, relights >= {subtle:.4f})")

    print("\n== what the chosen thresholds reject: outputs failing preserve / change, per verifier and source")
    for verifier in CATEGORIES:
        line = []
        thr_ssim = min_struct if KINDS[verifier] == "structure" else min_ssim
        for source in sources:
            ss, ps, ch = (scores[verifier][source][m] for m in ("ssim", "psnr", "change"))
            if not ch:
                continue
            keep = sum((bool(ss) and ss[i] < thr_ssim) or (bool(ps) and ps[i] < min_psnr) for i in range(len(ch)))
            line.append(f"{source}={keep}/{sum(c < min_change for c in ch)}/{len(ch)}")
        print(f"  {verifier:10s} " + " ".join(line))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
