"""Random-weight models with valid cards, for tests and benchmarks (no node imports: light to load)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch

from inference.model import build_network
from inference.model_card import CardPreprocessing, ModelCard, write_card
from inference.weights import save_weights

TEST_INPUT_SIZE = 64


def write_test_model(folder: Path, name: str, kind: str, threshold: float = 0.5, seed: int = 0,
                     input_size: int = TEST_INPUT_SIZE, cell_pooling: str = "mean") -> Path:
    """A real EfficientNet-B4 with random weights and a valid card: the node cannot tell it apart.

    The head is random too, so that scores differ between images and activation maps are not flat."""
    torch.manual_seed(seed)
    network = build_network(in_chans=2, cell_pooling=cell_pooling)
    torch.nn.init.normal_(network.get_classifier().weight, std=1.0)
    weights = save_weights(network.state_dict(), folder, name)
    card = ModelCard(name=name, input_size=input_size, in_chans=2, cell_pooling=cell_pooling,
                     preprocessing=CardPreprocessing(kind=kind, residual_channel=True),  # type: ignore[arg-type]
                     threshold=threshold, weights=weights, training={"data": "random initialisation (tests)"})
    path = folder / f"{name}.json"
    write_card(card, path)
    return path


def random_forensic_network(seed: int = 0):  # -> ForensicNet (imported lazily: light to load)
    """The forensic design with random weights and a random head (O(1) logits that differ by image)."""
    from inference.forensic import ForensicNet

    torch.manual_seed(seed)
    network = ForensicNet().eval()
    torch.nn.init.normal_(network.head.weight, std=1.0)
    torch.nn.init.normal_(cast(torch.Tensor, network.head.bias), std=1.0)
    return network


def write_forensic_test_model(folder: Path, name: str, kind: str, tile: int = 512, halo: int = 128,
                              threshold: float = 0.5) -> Path:
    """A forensic-design model with random weights and a valid card."""
    from inference.model_card import CardForensic

    weights = save_weights(random_forensic_network().state_dict(), folder, name)
    card = ModelCard(name=name, design="forensic", input_size=192, in_chans=2, threshold=threshold,
                     forensic=CardForensic(tile_size=tile, tile_halo=halo),
                     preprocessing=CardPreprocessing(kind=kind, resize="none: the image's own pixel scale"),  # type: ignore[arg-type]
                     weights=weights, training={"data": "random initialisation (tests)"})
    path = folder / f"{name}.json"
    write_card(card, path)
    return path
