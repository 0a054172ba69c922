"""Training pairs synthesised while training: every epoch brings phantoms the network has never seen,
so it cannot get by on memorising its training images.

The pairs are made by `synth`'s own code from procedural phantoms only (crops of the packaged real
images could belong to the validation or test split), with the local manipulation families found
among the training split's fakes, at the training input size, and stored exactly as `synth` stores
them (16-bit values), so they reach the network the way files would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.preprocess import png_values_in_modality_units
from inference.training.datasets import Sample
from inference.training.manipulations import Tampered, families_for
from inference.training.synth import SynthSpec, synthesise_pair, to_png_values

# online sources are numbered from here, far from the files' indices, donors (+1,000,000) and GAN sources
FIRST_INDEX = 10_000_000


@dataclass(frozen=True)
class OnlinePairs:
    """`count` fresh pairs per epoch, deterministic for (seed, epoch, pair)."""

    spec: SynthSpec
    count: int

    def pair(self, epoch: int, index: int) -> tuple[np.ndarray, Tampered, str]:
        """Pristine values, the tampered image with its box, and the family, as stored values."""
        made = synthesise_pair(self.spec, FIRST_INDEX + epoch * self.count + index)
        tampered = Tampered(stored_values(made.tampered.image, self.spec.kind), made.tampered.box)
        return stored_values(made.pristine, self.spec.kind), tampered, made.family


def stored_values(values: np.ndarray, kind: str) -> np.ndarray:
    """Modality values as a synth PNG would give them back (rounded and clipped to 16 bits)."""
    return png_values_in_modality_units(to_png_values(values, kind).astype(np.float32), kind)  # type: ignore[arg-type]


def online_pairs(train: list[Sample], kind: str, size: int, seed: int, count: int) -> OnlinePairs:
    """Online pairs with the local families the training split holds (the gan family needs its own
    GAN and stays with the files); a ValueError if the data names none."""
    known = families_for(kind)
    families = tuple(sorted({s.manipulation for s in train if s.label == 1 and s.manipulation in known}))
    if not families:
        raise ValueError(f"--online-pairs needs training data labelled with local manipulation families "
                         f"({', '.join(known)}), as a synth manifest is")
    return OnlinePairs(SynthSpec(kind, count, size, seed, real_fraction=0.0, families=families), count)
