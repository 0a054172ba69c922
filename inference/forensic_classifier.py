"""A loaded model of the forensic design: native-size images in, scores and regions out.

Prepared images (`Preprocessing.native`) keep their own size; each is scored over its whole extent
in tiles (`inference.tiling`), and its score is the mean of its hottest cells, so the region drawn in
the SR and on the key image comes from the same map that gave the score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from inference.forensic import forensic_input, pooled
from inference.localisation import Box, hot_cells
from inference.model import Classifier
from inference.model_card import CardForensic
from inference.tiling import tiled_cells


@dataclass
class ForensicClassifier(Classifier):
    """`Classifier` for cards with `design: forensic`."""

    @property
    def forensic(self) -> CardForensic:
        assert self.card.forensic is not None
        return self.card.forensic

    def input_batch(self, images: list[np.ndarray]) -> Any:
        """The images' two input channels: one tensor when they share a size (a CT series), else one
        tensor per image."""
        inputs = [torch.from_numpy(forensic_input(image)) for image in images]
        if inputs and all(x.shape == inputs[0].shape for x in inputs):
            return [torch.stack(inputs).to(self.device)]
        return [x[None].to(self.device) for x in inputs]

    def batch_scores(self, batch: Any) -> np.ndarray:
        """Probabilities for one batch from `input_batch`."""
        with torch.inference_mode():
            logits = [pooled(self.cell_map(part), self.forensic.top_k)[:, 0] for part in batch]
        return torch.sigmoid(torch.cat(logits)).numpy() if logits else np.zeros(0, dtype=np.float32)

    def cell_map(self, inputs: torch.Tensor) -> torch.Tensor:
        """Cell logits (N, h, w) of input tensors (N, 2, H, W), tile by tile."""
        f = self.forensic
        return tiled_cells(self._cells, inputs, f.cell_stride, f.tile_size, f.tile_halo).float().cpu()

    def _cells(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.runner is not None:
            return self.runner.cells(inputs)
        return self.torch_network.cells(inputs)  # type: ignore[operator]

    def activation_cells(self, image: np.ndarray) -> np.ndarray:
        (inputs,) = self.input_batch([image])
        with torch.inference_mode():
            return np.asarray(self.cell_map(inputs)[0].numpy(), dtype=np.float32)

    def localise(self, image: np.ndarray, source_shape: tuple[int, int]) -> Box | None:
        """The box (source pixels) around the hot region holding the hottest cell."""
        region = hot_cells(self.activation_cells(image))
        if region is None:
            return None
        stride = self.forensic.cell_stride
        rows, cols = source_shape
        r0, c0, r1, c1 = region
        return Box(min(r0 * stride, rows), min(c0 * stride, cols), min(r1 * stride, rows), min(c1 * stride, cols))
