"""`dfnode evaluate`: a trained model measured on a dataset, or on a manipulation family it never saw."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from inference.model import Classifier, load_classifier, torch_device
from inference.model_card import read_card
from inference.training.datasets import Sample, load_samples
from inference.training.evaluation import benign_scores, evaluate_scores, score_samples, scorer_for
from inference.training.plots import plot_confusion, plot_roc
from inference.training.splits import split_for_card
from inference.training.train import TrainSpec, train


def evaluate_model(card_path: Path, data: Path, split: str, out_dir: Path, seed: int | None = None,
                   progress: bool = True, workers: int = 0, device: str = "auto") -> dict:
    """Metrics of a model on `data` (its test split, by the card's seed, or all of it). A forensic card is
    scored as the node scores it (onnxruntime on a CPU, the export cached in `out_dir`), as its run
    scored its test set."""
    forensic = read_card(card_path).design == "forensic"
    classifier = load_classifier(card_path, device=str(torch_device(device)), backend="auto" if forensic else "torch",
                                 cache_dir=out_dir / "model-cache")
    card = classifier.card
    samples = load_samples(data)
    if forensic:
        return _evaluate_forensic(classifier, samples, out_dir, data, progress)
    if split != "all":
        samples = split_for_card(samples, card.training, seed)[split]
    scorer = scorer_for(classifier, workers=workers)
    scores = score_samples(scorer, samples, desc=f"evaluate {card.name}", progress=progress)
    benign_seed = int(card.training.get("spec", {}).get("seed", 0)) + 2
    benign = benign_scores(scorer, [s for s in samples if s.label == 0], benign_seed, progress)
    report = evaluate_scores(samples, scores, card.threshold, benign)
    report.update({"model": card.name, "version": card.version, "data": str(data), "split": split})
    _write_outputs(report, np.array([s.label for s in samples]), scores, out_dir, f"{card.name}-{split}")
    return report


def _evaluate_forensic(classifier: Classifier, samples: list[Sample], out_dir: Path, data: Path,
                       progress: bool) -> dict:
    """A forensic-design model on native images, all of them, as its card measures its test set."""
    from inference.forensic_classifier import ForensicClassifier
    from inference.training.native_sets import measure

    assert isinstance(classifier, ForensicClassifier)
    card = classifier.card
    seed = int(card.training.get("spec", {}).get("seed", 0)) + 2
    report, scores = measure(classifier, samples, card.threshold, seed, progress)
    report.update({"model": card.name, "version": card.version, "data": str(data), "split": "all"})
    _write_outputs(report, np.array([s.label for s in samples]), scores, out_dir, f"{card.name}-native")
    return report


def leave_one_family_out(base: TrainSpec, family: str, out_dir: Path) -> dict:
    """Train without `family`, then measure pristine vs `family` on the test split."""
    if base.init_from is not None:  # its weights may have learned the family, or the test split's images
        raise ValueError(f"--leave-out {family} trains from random weights: --init-from {base.init_from} may have "
                         f"seen {family} or the images it is tested on")
    spec = dataclasses.replace(base, exclude_families=(family,), model_name=f"{base.model_name}-without-{family}",
                               weights_dir=out_dir, run_dir=out_dir / "run", resume=False)
    train(spec)
    classifier = load_classifier(out_dir / f"{spec.model_name}.json", device=str(torch_device(base.device)))
    # the test split of the model trained here: none of its groups was seen in training, so the pristine
    # twins of the held-out images were never learned either
    samples = load_samples(base.data)
    test_groups = {s.group for s in split_for_card(samples, classifier.card.training)["test"]}
    held_out = [s for s in samples if s.group in test_groups and (s.label == 0 or s.manipulation == family)]
    scorer = scorer_for(classifier, workers=base.workers)
    scores = score_samples(scorer, held_out, desc=f"held-out {family}", progress=base.progress)
    report = evaluate_scores(held_out, scores, classifier.card.threshold, {})
    report.update({"held_out_family": family, "model": spec.model_name})
    _write_outputs(report, np.array([s.label for s in held_out]), scores, out_dir, f"held-out-{family}")
    return report


def _write_outputs(report: dict, labels: np.ndarray, scores: np.ndarray, out_dir: Path, stem: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2))
    plot_roc(labels, scores, stem, out_dir / f"{stem}.roc.png")
    plot_confusion(report["confusion"], stem, out_dir / f"{stem}.confusion.png")


def format_report(report: dict) -> str:
    """A plain table of the headline figures."""
    rows = [("images", report["images"]), ("manipulated", report["manipulated"]),
            ("ROC AUC", f"{report['roc_auc']:.4f}"), ("threshold", f"{report['threshold']:.3f}"),
            ("accuracy", f"{report['accuracy']:.4f}"), ("precision", f"{report['precision']:.4f}"),
            ("recall", f"{report['recall']:.4f}"), ("F1", f"{report['f1']:.4f}"),
            ("confusion (tn fp fn tp)", " ".join(str(report["confusion"][k]) for k in ("tn", "fp", "fn", "tp")))]
    if report.get("benign_fpr") is not None:
        rows.append(("FPR, benign-processed pristine", f"{report['benign_fpr']:.4f}"))
    rows += [(f"AUC {family}", f"{auc:.4f}") for family, auc in report.get("auc_by_manipulation", {}).items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
