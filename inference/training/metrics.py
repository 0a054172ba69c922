"""Classification metrics, computed with NumPy so that no other library decides them."""

from __future__ import annotations

from typing import Any

import numpy as np


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and thresholds, highest threshold first."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (1 + distinct) - tps
    pos, neg = max(int(y.sum()), 1), max(int(len(y) - y.sum()), 1)
    return np.r_[0, fps / neg], np.r_[0, tps / pos], np.r_[np.inf, s[distinct]]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, np.asarray(scores, dtype=np.float64))
    return float(np.trapezoid(tpr, fpr))


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 and the confusion matrix at a decision threshold."""
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(scores) >= threshold).astype(int)
    tp = int(((predicted == 1) & (labels == 1)).sum())
    tn = int(((predicted == 0) & (labels == 0)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": (tp + tn) / max(len(labels), 1),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def threshold_for_fpr(pristine_scores: np.ndarray, max_fpr: float) -> float:
    """The lowest threshold at which at most `max_fpr` of pristine images score at or above it."""
    s = np.sort(np.asarray(pristine_scores, dtype=np.float64))
    if len(s) == 0:
        return 0.5
    k = int(np.floor(max_fpr * len(s)))  # this many may lie at or above
    above = s[len(s) - k] if k > 0 else np.inf
    candidate = np.nextafter(s[len(s) - k - 1], 1.0)
    return float(min(max(candidate, 0.05), above if np.isfinite(above) else 0.999, 0.999))
