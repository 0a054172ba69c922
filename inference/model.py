"""EfficientNet-B4 manipulation classifiers: building, loading from a card, batched scoring."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch

from inference.model_card import ModelCard, read_card
from inference.weights import load_verified_weights
from node.errors import ModelLoadError


def build_network(card_or_size: ModelCard | int, in_chans: int = 1, drop_rate: float = 0.0) -> torch.nn.Module:
    """A timm EfficientNet-B4 with one output (the manipulation logit), randomly initialised."""
    del card_or_size  # the architecture is size-agnostic; kept so call sites read naturally
    return timm.create_model("efficientnet_b4", pretrained=False, num_classes=1, in_chans=in_chans,
                             drop_rate=drop_rate)


def to_batch(images: list[np.ndarray], mean: float, std: float) -> torch.Tensor:
    """Stack [0, 1] images into a normalised NCHW float32 tensor in channels_last layout."""
    batch = torch.from_numpy(np.stack(images).astype(np.float32, copy=False))[:, None]
    batch = (batch - mean) / std
    return batch.contiguous(memory_format=torch.channels_last)


@dataclass
class Classifier:
    """A loaded model and its card; `scores` turns prepared images into probabilities."""

    card: ModelCard
    network: torch.nn.Module
    device: torch.device
    batch_size: int = 8

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    def scores(self, images: list[np.ndarray]) -> np.ndarray:
        """Manipulation probability in [0, 1] for each prepared image, run in batches."""
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                p = self.card.preprocessing
                chunk = images[start:start + self.batch_size]
                batch = to_batch(chunk, p.normalization_mean, p.normalization_std).to(self.device)
                logits = self.network(batch).float().reshape(-1)
                out.append(torch.sigmoid(logits).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def load_classifier(card_path: Path, device: str = "cpu", batch_size: int = 8) -> Classifier:
    """Load a card and its verified weights; `ModelLoadError` names the file and the fault."""
    card = read_card(card_path)
    state = load_verified_weights(card.weights, card_path.parent)
    network = build_network(card, in_chans=card.in_chans)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelLoadError(f"{card_path.parent / card.weights.file}: weights do not fit "
                             f"{card.architecture} ({first})") from None
    torch_device = torch.device(device)
    network = network.to(torch_device).eval().to(memory_format=torch.channels_last)
    return Classifier(card, network, torch_device, batch_size)
