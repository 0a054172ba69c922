"""Measuring a network on labelled samples: AUC, metrics at the threshold, AUC per manipulation
family, and false positives on pristine images after benign processing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from inference.letterbox import fit_to_square
from inference.model import Classifier, network_input, stack_images
from inference.preprocess import Preprocessing, to_unit_range
from inference.training.augment import BENIGN, benign_degrade
from inference.training.datasets import Sample, load_values
from inference.training.metrics import at_threshold, roc_auc


@dataclass(frozen=True)
class Scorer:
    """A network and how to feed it."""

    network: torch.nn.Module
    prep: Preprocessing
    mean: float
    std: float
    device: torch.device
    batch_size: int = 16
    residual: bool = False
    workers: int = 0  # data-loading processes


def scorer_for(classifier: Classifier, batch_size: int = 32, workers: int = 0) -> Scorer:
    """A scorer that feeds a loaded model exactly as its card says."""
    p = classifier.card.preprocessing
    return Scorer(classifier.torch_network, classifier.card.preprocessing_spec(), p.normalization_mean,
                  p.normalization_std, classifier.device, batch_size, p.residual_channel, workers)


def prepare_sample(sample: Sample, prep: Preprocessing) -> np.ndarray:
    """A sample as a [0, 1] image at its own resolution (before the final resize)."""
    values, monochrome1 = load_values(sample.path, prep.kind)
    return to_unit_range(values, prep, monochrome1)


class _ScoringImages(torch.utils.data.Dataset):
    """Samples as the network sees them, optionally after one benign degradation (seeded per index)."""

    def __init__(self, samples: list[Sample], prep: Preprocessing, degrade: str | None, seed: int):
        self.samples, self.prep, self.degrade, self.seed = samples, prep, degrade, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> np.ndarray:
        image = prepare_sample(self.samples[i], self.prep)
        if self.degrade is not None:
            image = benign_degrade(np.random.default_rng([self.seed, i]), image, self.degrade)
        return fit_to_square(image, self.prep.input_size)


def score_samples(scorer: Scorer, samples: list[Sample], degrade: str | None = None, seed: int = 0,
                  desc: str = "scoring", progress: bool = True) -> np.ndarray:
    """Manipulation probabilities for samples, optionally after one benign degradation; images are
    prepared in `scorer.workers` loader processes (0: in this one)."""
    scorer.network.eval()
    loader = torch.utils.data.DataLoader(
        _ScoringImages(samples, scorer.prep, degrade, seed), batch_size=scorer.batch_size,
        num_workers=scorer.workers, collate_fn=stack_images,
        pin_memory=scorer.device.type == "cuda")
    out = []
    bar = tqdm(total=len(samples), desc=desc, unit="img", disable=not progress, leave=False)
    with torch.inference_mode():
        for batch in loader:
            inputs = network_input(batch.to(scorer.device, non_blocking=True), scorer.mean, scorer.std,
                                   scorer.residual)
            logits = scorer.network(inputs)
            out.append(torch.sigmoid(logits.float().reshape(-1)).cpu().numpy())
            bar.update(len(batch))
    bar.close()
    return np.concatenate(out) if out else np.zeros(0)


def benign_scores(scorer: Scorer, pristine: list[Sample], seed: int, progress: bool = True) -> dict[str, np.ndarray]:
    """Scores of pristine images after each benign degradation."""
    return {name: score_samples(scorer, pristine, name, seed, f"benign {name}", progress) for name in BENIGN}


def evaluate_scores(samples: list[Sample], scores: np.ndarray, threshold: float,
                    benign: dict[str, np.ndarray]) -> dict:
    """The full report for scored samples."""
    labels = np.array([s.label for s in samples])
    report: dict[str, Any] = {"images": len(samples), "manipulated": int(labels.sum()), "threshold": threshold,
              "roc_auc": roc_auc(labels, scores), **at_threshold(labels, scores, threshold)}
    pristine = labels == 0
    families = sorted({s.manipulation for s in samples if s.label == 1})
    report["auc_by_manipulation"] = {
        family: roc_auc(np.r_[np.zeros(pristine.sum()), np.ones(len(idx))], np.r_[scores[pristine], scores[idx]])
        for family in families
        if len(idx := np.array([i for i, s in enumerate(samples) if s.manipulation == family])) and pristine.any()
    }
    all_benign = np.concatenate(list(benign.values())) if benign else np.zeros(0)
    report["benign_fpr"] = float((all_benign >= threshold).mean()) if len(all_benign) else None
    report["benign_fpr_by_processing"] = {k: float((v >= threshold).mean()) for k, v in benign.items()}
    return report
