"""Whole native-size images for measuring the forensic design: what the node would receive.

`write_native_set` writes pristine images and manipulated copies at their own size (16-bit PNGs and a
manifest with each box in image pixels, as `synth` writes); `measure` scores such a set the way the
node does (tile by tile, the mean of the hottest cells) and reports the test metrics a card holds:
AUC overall and per family, the threshold's confusion, false positives on pristine images after each
benign degradation, and how often the region found overlaps the true box.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from inference.forensic_classifier import ForensicClassifier
from inference.preprocess import Preprocessing, to_unit_range
from inference.training.augment import NATIVE_BENIGN, benign_degrade
from inference.training.crops import (
    CURRICULUM,
    Source,
    anatomy_origin,
    donor_region_for,
    generated_like,
    strong_enough,
)
from inference.training.datasets import Sample, load_values
from inference.training.evaluation import evaluate_scores
from inference.training.gan import GAN_FAMILY, GanSynthesiser
from inference.training.manipulations import families_for
from inference.training.synth import SynthRow, write_manifest, write_png

REGION = {"xray": 512, "ct": 512}  # the side of the region a native manipulation is made in
MIN_IOU = 0.1  # a found region counts as a hit at this overlap with the true box


def native_manipulation(rng: np.random.Generator, kind: str, source: Source, donor: Source, family: str,
                        gan: GanSynthesiser | None = None) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """`source` with `family` applied inside a region of it at its own scale, and the box in image pixels;
    for the `gan` family an image of the synthesis GAN in its place, and no box."""
    if family == GAN_FAMILY:
        return generated_like(rng, gan, source.values), None
    side = min(REGION[kind], *source.values.shape)
    r, c = anatomy_origin(rng, source, (side, side))
    region = source.values[r:r + side, c:c + side]
    donor_region = donor_region_for(rng, family, source, donor, side)
    tampered, _ = strong_enough(families_for(kind)[family], rng, region, donor_region, CURRICULUM[-1])
    assert tampered.box is not None
    image = source.values.copy()
    image[r:r + side, c:c + side] = tampered.image
    r0, c0, r1, c1 = tampered.box
    return image, (r0 + r, c0 + c, r1 + r, c1 + c)


def write_native_set(kind: str, sources: list[Source], families: list[str], seed: int, out_dir: Path,
                     progress: bool = True, gan: GanSynthesiser | None = None) -> Path:
    """Each source and one manipulated copy of it (families in turn) under `out_dir`, with a manifest."""
    (out_dir / kind).mkdir(parents=True, exist_ok=True)
    rows = []
    for index, source in enumerate(tqdm(sources, desc=f"native {kind} set", disable=not progress)):
        rng = np.random.default_rng([seed, index])
        family = families[index % len(families)]
        donor = sources[(index + 1) % len(sources)]
        tampered, box = native_manipulation(rng, kind, source, donor, family, gan)
        for label, image, name, where in ((0, source.values, "pristine", None), (1, tampered, family, box)):
            rel = f"{kind}/{index:05d}_{label}.png"
            write_png(image, kind, out_dir / rel)
            rows.append(SynthRow(rel, label, kind, name, source.group, " ".join(map(str, where)) if where else ""))
    return write_manifest(rows, out_dir)


@dataclass(frozen=True)
class Scored:
    score: float
    box: tuple[int, int, int, int] | None


def score_image(classifier: ForensicClassifier, image: np.ndarray) -> Scored:
    """Score and region of one windowed native image, as the node finds them."""
    (probability,) = classifier.scores([image])
    box = classifier.localise(image, (image.shape[0], image.shape[1]))
    return Scored(float(probability), None if box is None else (box.row0, box.col0, box.row1, box.col1))


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    rows = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    cols = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = rows * cols
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def windowed(sample: Sample, prep: Preprocessing) -> np.ndarray:
    values, monochrome1 = load_values(sample.path, prep.kind)
    return to_unit_range(values, prep, monochrome1)


def score_set(classifier: ForensicClassifier, samples: list[Sample], progress: bool = True,
              desc: str = "scoring") -> list[Scored]:
    prep = classifier.card.preprocessing_spec()
    return [score_image(classifier, windowed(s, prep)) for s in tqdm(samples, desc=desc, disable=not progress)]


def benign_set(classifier: ForensicClassifier, pristine: list[Sample], seed: int, per_image: int = 2,
               progress: bool = True) -> dict[str, np.ndarray]:
    """Scores of pristine images after benign degradations: `per_image` kinds each, in turn."""
    prep = classifier.card.preprocessing_spec()
    scores: dict[str, list[float]] = {name: [] for name in NATIVE_BENIGN}
    jobs = [(i, NATIVE_BENIGN[(i * per_image + k) % len(NATIVE_BENIGN)])
            for i in range(len(pristine)) for k in range(per_image)]
    for i, name in tqdm(jobs, desc="benign", disable=not progress):
        image = benign_degrade(np.random.default_rng([seed, i, NATIVE_BENIGN.index(name)]),
                               windowed(pristine[i], prep), name)
        scores[name].append(score_image(classifier, image).score)
    return {name: np.array(values) for name, values in scores.items() if values}


def measure(classifier: ForensicClassifier, samples: list[Sample], threshold: float, seed: int,
            progress: bool = True) -> tuple[dict[str, Any], np.ndarray]:
    """The card's test metrics for native samples (see the module's docstring), and each sample's score."""
    scored = score_set(classifier, samples, progress, f"test {classifier.name}")
    scores = np.array([s.score for s in scored])
    benign = benign_set(classifier, [s for s in samples if s.label == 0], seed, progress=progress)
    report = evaluate_scores(samples, scores, threshold, benign)
    detected = [(s, r) for s, r in zip(samples, scored, strict=True)
                if s.label == 1 and s.box is not None and r.score >= threshold]
    hits = [r.box is not None and iou(r.box, s.box) >= MIN_IOU for s, r in detected]  # type: ignore[arg-type]
    report["region_hit_rate"] = float(np.mean(hits)) if hits else None
    report["region_rule"] = f"detected local manipulations whose found box overlaps the true one at IoU >= {MIN_IOU}"
    report["region_detected"] = len(hits)
    return report, scores
