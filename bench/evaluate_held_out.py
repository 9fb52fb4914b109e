"""The acceptance check of the evaluation band on photos no test and no calibration used (docs/evaluation.md).

    .venv/bin/python bench/evaluate_held_out.py [--faces ../shared/faces] [--copies 12]

alex_lacamoire's two photos are held out of bench/calibrate_likeness.py and of the test suite. Both ways round, one
photo is the character's only source photo and frozen as version v1, and ``flenwheel evaluate --images --json`` (the
command, in a fresh data root) scores a folder of

* ``--copies`` random near-copies of that training photo (bench/nearcopies.py: crop up to 15 %, a 5 % shift,
  brightness/contrast/saturation/hue jitter, a mirror half of the time, resizing 0.5-1.5x, JPEG 40-95; other seeds
  than any test uses): each must be a ``copy``;
* the other photo, as it is and as ``--copies`` random variants of it (a different photo, re-coloured or re-framed,
  is still a different photo): each must be ``good``.

Prints every file's verdict, likeness and copy score, and per group how many got the verdict they must get.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository root for `bench`

from bench.nearcopies import random_near_copy
from flenwheel.store.objects import load_rgb

PROJECT = Path(__file__).resolve().parents[1]
PHOTOS = ("alex_1.jpg", "alex_2.png")
SEED = 20240  # no test draws near-copies with this seed


def flenwheel(root: Path, configs: Path, *args: str) -> str:
    command = [sys.executable, "-m", "flenwheel", "--root", str(root), "--configs", str(configs), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def one_way(faces: Path, train: str, other: str, copies: int, work: Path) -> dict[str, Counter]:
    configs = work / "configs"
    shutil.copytree(PROJECT / "configs", configs)
    (configs / "characters" / "alex.yaml").write_text("name: alex\ntrigger: fw_alex\nidentity:\n  backend: dlib\n")
    root = work / "data"
    flenwheel(root, configs, "ingest", "alex", str(faces / "alex_lacamoire" / train))
    flenwheel(root, configs, "dataset", "freeze", "alex", "--no-captions")
    samples = work / "samples"
    samples.mkdir()
    rng = np.random.default_rng(SEED)
    must: dict[str, str] = {}
    base, other_rgb = load_rgb(faces / "alex_lacamoire" / train), load_rgb(faces / "alex_lacamoire" / other)
    Image.fromarray(other_rgb).save(samples / "other-as-is.png")
    must["other-as-is.png"] = "good"
    for i in range(copies):
        for group, source in (("copy", base), ("other", other_rgb)):
            name, rgb = random_near_copy(source, rng)
            file = f"{group}-{i:02d}-{name}.png"
            Image.fromarray(rgb).save(samples / file)
            must[file] = "copy" if group == "copy" else "good"
    lines = [
        json.loads(x)
        for x in flenwheel(root, configs, "evaluate", "alex", "--images", str(samples), "--json").splitlines()
    ]
    outcome: dict[str, Counter] = {"copy": Counter(), "good": Counter()}
    print(f"\ntraining photo {train}; other photo {other}")
    for r in lines[:-1]:
        wanted = must[r["file"]]
        outcome[wanted][r["verdict"]] += 1
        like = "-" if r.get("likeness") is None else f"{r['likeness']:.3f}"
        copy = "-" if r.get("copy_score") is None else f"{r['copy_score']:.3f}"
        mark = "" if r["verdict"] == wanted else f"   <- should be {wanted}"
        print(f"  {r['verdict']:10s} likeness {like}  copy score {copy}  {r['file']}{mark}")
    return outcome


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=Path, default=PROJECT.parent / "shared" / "faces")
    ap.add_argument("--copies", type=int, default=12)
    args = ap.parse_args()
    total: dict[str, Counter] = {"copy": Counter(), "good": Counter()}
    for train, other in (PHOTOS, PHOTOS[::-1]):
        with tempfile.TemporaryDirectory(prefix="flenwheel-held-out-") as tmp:
            for wanted, counts in one_way(args.faces, train, other, args.copies, Path(tmp)).items():
                total[wanted] += counts
    print()
    for wanted, counts in total.items():
        n = sum(counts.values())
        detail = ", ".join(f"{v} {k}" for k, v in counts.most_common())
        print(f"must be {wanted}: {counts[wanted]}/{n} ({detail})")


if __name__ == "__main__":
    main()
