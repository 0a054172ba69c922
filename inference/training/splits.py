"""Grouped 60/20/20 splits: all images of one patient/scan/source land in the same split."""

from __future__ import annotations

from collections import Counter

import numpy as np

from inference.training.datasets import Sample

SPLITS = ("train", "val", "test")
SPLIT_RULE = "largest groups first"  # named in model cards; cards without it used the earlier rule


def grouped_split(samples: list[Sample], seed: int, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
                  largest_first: bool = True) -> dict[str, list[Sample]]:
    """Assign whole groups to train/val/test so each split holds about its fraction of samples.

    Groups are placed largest first (ties in a seeded random order), each into the split furthest below
    its share: a few big groups (every crop of one real image, say) are spread over the splits instead
    of landing together in one. `largest_first=False` is the earlier rule (a seeded random order), kept
    so older cards' test splits can still be reproduced."""
    sizes = Counter(s.group for s in samples)
    groups = sorted(sizes)
    np.random.default_rng(seed).shuffle(groups)
    if largest_first:
        groups.sort(key=lambda g: -sizes[g])  # stable: equal sizes keep the seeded order
    total = len(samples)
    assignment: dict[str, str] = {}
    filled = dict.fromkeys(SPLITS, 0)
    for group in groups:
        # the split furthest below its target takes the next group
        name = min(SPLITS, key=lambda s: filled[s] / (fractions[SPLITS.index(s)] * total))
        assignment[group] = name
        filled[name] += sizes[group]
    return {name: [s for s in samples if assignment[s.group] == name] for name in SPLITS}


def split_for_card(samples: list[Sample], training: dict, seed: int | None = None) -> dict[str, list[Sample]]:
    """The split a model card was trained with: its seed (unless `seed` is given), its held-out families
    removed, its rule."""
    seed = int(training.get("spec", {}).get("seed", 0)) if seed is None else seed
    excluded = set(training.get("excluded_families", []))
    return grouped_split([s for s in samples if s.manipulation not in excluded], seed,
                         largest_first=SPLIT_RULE in str(training.get("split", "")))
