"""How the per-cell logits of the last feature map become the image's logit.

EfficientNet's own head averages the feature map, then applies one linear output: the image's logit is
the mean of the per-cell logits (the activation map, `localisation.activation_cells`). A manipulation
that covers a few cells is then diluted by all the others. `top<k>` pools the logits instead: the mean
of the k highest cells, so that a small manipulated region can carry the verdict. Both keep the same
weights (`classifier.weight`, `classifier.bias`), so a card says which one its weights were trained with.
"""

from __future__ import annotations

import re

import torch

MEAN = "mean"
POOLING_PATTERN = r"^(mean|top[1-9][0-9]{0,2})$"  # what a model card's cell_pooling may say


def top_cells(pooling: str) -> int | None:
    """k for `top<k>`; None for `mean`. A ValueError for anything else."""
    if not re.match(POOLING_PATTERN, pooling):
        raise ValueError(f"cell pooling {pooling!r}: use 'mean' or 'top<k>' (the mean of the k highest cells, "
                         f"e.g. top4)")
    return None if pooling == MEAN else int(pooling[3:])


def cell_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A one-output linear head (`weight` (1, C), `bias` (1,)) applied to every cell of an (N, C, H, W)
    feature map: the per-cell logits (N, H, W), in float32."""
    return torch.einsum("nchw,c->nhw", features.float(), weight[0].float()) + bias[0].float()


class TopCellsHead(torch.nn.Module):
    """The one-output linear head applied to every cell of an (N, C, H, W) feature map, then the mean of
    the k highest cell logits: (N, 1). Its parameters keep the linear head's names and shapes."""

    def __init__(self, linear: torch.nn.Linear, cells: int):
        super().__init__()
        self.weight, self.bias, self.cells = linear.weight, linear.bias, cells

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cells = cell_logits(features, self.weight, self.bias).flatten(1)
        return cells.topk(min(self.cells, cells.shape[-1]), dim=-1).values.mean(dim=-1, keepdim=True)


def pool_cells(network: torch.nn.Module, pooling: str) -> torch.nn.Module:
    """`network` (a timm EfficientNet with a one-output linear head) made to pool its logits as `pooling`
    says; unchanged for `mean`. In place; returns the network."""
    cells = top_cells(pooling)
    if cells is not None:
        network.global_pool = torch.nn.Identity()  # the head now takes the whole feature map
        network.classifier = TopCellsHead(network.get_classifier(), cells)  # type: ignore[operator]
    return network
