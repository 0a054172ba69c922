"""Random-weight models with valid cards, for tests and benchmarks (no node imports: light to load)."""

from __future__ import annotations

from pathlib import Path

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
