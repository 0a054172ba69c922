"""Grouped 60/20/20 splits: all images of one patient/scan/source land in the same split."""

from __future__ import annotations

from collections import Counter

import numpy as np

from inference.training.datasets import Sample

SPLITS = ("train", "val", "test")


def grouped_split(samples: list[Sample], seed: int, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
                  ) -> dict[str, list[Sample]]:
    """Assign whole groups to train/val/test so each split holds about its fraction of samples."""
    sizes = Counter(s.group for s in samples)
    groups = sorted(sizes)
    np.random.default_rng(seed).shuffle(groups)
    total = len(samples)
    assignment: dict[str, str] = {}
    filled = dict.fromkeys(SPLITS, 0)
    for group in groups:
        # the split furthest below its target takes the next group
        name = min(SPLITS, key=lambda s: filled[s] / (fractions[SPLITS.index(s)] * total))
        assignment[group] = name
        filled[name] += sizes[group]
    return {name: [s for s in samples if assignment[s.group] == name] for name in SPLITS}
