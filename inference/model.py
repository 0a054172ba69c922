"""EfficientNet-B4 manipulation classifiers: building, loading from a card, batched scoring."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import timm
import torch
from timm.models.efficientnet import EfficientNet

from core.errors import ModelLoadError
from inference.localisation import Box, activation_maps, hottest_box
from inference.model_card import ModelCard, read_card
from inference.pooling import MEAN, pool_cells
from inference.weights import load_verified_weights, verify_weights

if TYPE_CHECKING:
    from inference.onnx_runtime import OnnxRunner


def build_network(in_chans: int = 1, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                  cell_pooling: str = MEAN) -> EfficientNet:
    """A timm EfficientNet-B4 with one output (the manipulation logit), randomly initialised; it takes
    any input size. The drop rates regularise training only (dropout before the head, stochastic depth);
    `cell_pooling` is how its per-cell logits make the image's (`inference.pooling`)."""
    network = cast(EfficientNet, timm.create_model("efficientnet_b4", pretrained=False, num_classes=1,
                                                   in_chans=in_chans, drop_rate=drop_rate,
                                                   drop_path_rate=drop_path_rate))
    # a zero head starts every image at logit 0 (p = 0.5): from-scratch training is stable from step one
    classifier = cast(Any, network.get_classifier())
    torch.nn.init.zeros_(classifier.weight)
    torch.nn.init.zeros_(classifier.bias)
    return cast(EfficientNet, pool_cells(network, cell_pooling))


_BLUR_TAPS = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)  # the 5 x 5 binomial blur is this, along rows and columns


def binomial_blur(batch: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) blurred by the 5 x 5 binomial kernel, edges reflected: two passes of shifted,
    weighted sums (a sixth of a one-channel conv2d's time on a CPU, the same values within float32's
    rounding)."""
    height, width = batch.shape[-2:]
    padded = torch.nn.functional.pad(batch, (2, 2, 2, 2), mode="reflect")
    rows = padded[..., :, 0:width] * _BLUR_TAPS[0]
    for shift in range(1, 5):
        rows.add_(padded[..., :, shift:shift + width], alpha=_BLUR_TAPS[shift])
    blurred = rows[..., 0:height, :] * _BLUR_TAPS[0]
    for shift in range(1, 5):
        blurred.add_(rows[..., shift:shift + height, :], alpha=_BLUR_TAPS[shift])
    return blurred


def noise_residual(batch: torch.Tensor) -> torch.Tensor:
    """The image minus its blur, divided by its own noise level: the trace of noise, interpolation and
    in-painting that manipulations disturb. (N, 1, H, W) in, (N, 1, H, W) out, roughly in [-2.5, 2.5]."""
    residual = batch - binomial_blur(batch)
    level = residual.abs().mean(dim=(2, 3), keepdim=True).mul_(1.2533).add_(1e-4)
    return residual.div_(level).clamp_(-5.0, 5.0).mul_(0.5)


def stack_images(images: list[np.ndarray]) -> torch.Tensor:
    """[0, 1] images as one (N, 1, H, W) float32 tensor."""
    return torch.from_numpy(np.stack(images).astype(np.float32, copy=False))[:, None]


def network_input(batch: torch.Tensor, mean: float, std: float, residual: bool = False) -> torch.Tensor:
    """Stacked [0, 1] images (N, 1, H, W) to the normalised input, channels_last, on the batch's device;
    with `residual`, a second channel holds the noise residual."""
    channels = [(batch - mean) / std]
    if residual:
        channels.append(noise_residual(batch))
    return torch.cat(channels, dim=1).contiguous(memory_format=torch.channels_last)


@dataclass
class Classifier:
    """A loaded model and its card; `scores` turns prepared images into probabilities."""

    card: ModelCard
    network: torch.nn.Module | None  # None with the onnxruntime backend: `runner` does all the work
    device: torch.device
    batch_size: int = 8
    runner: OnnxRunner | None = None

    @property
    def backend(self) -> str:
        return "torch" if self.runner is None else "onnxruntime"

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    def scores(self, images: list[np.ndarray]) -> np.ndarray:
        """Manipulation probability in [0, 1] for each prepared image, run in batches."""
        out = [self.batch_scores(self.input_batch(images[start:start + self.batch_size]))
               for start in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def input_batch(self, images: list[np.ndarray]) -> torch.Tensor:
        """Prepared images as the network's input on the classifier's device (`network_input`); any thread
        may build the next batch while the model runs this one."""
        p = self.card.preprocessing
        with torch.inference_mode():
            stacked = stack_images(images).to(self.device, non_blocking=True)
            return network_input(stacked, p.normalization_mean, p.normalization_std, p.residual_channel)

    def batch_scores(self, batch: torch.Tensor) -> np.ndarray:
        """Probabilities for one input batch from `input_batch`."""
        with torch.inference_mode():
            logits = self._forward(batch).float().reshape(-1)
            return torch.sigmoid(logits).cpu().numpy()

    def localise(self, image: np.ndarray, source_shape: tuple[int, int]) -> Box | None:
        """The box (source pixels) around the region that drives one prepared image's score."""
        return hottest_box(self.activation_cells(image), self.card.input_size, source_shape)

    def activation_cells(self, image: np.ndarray) -> np.ndarray:
        """Per-cell logits (h, w) of one prepared image: where the score comes from."""
        batch = self.input_batch([image])
        with torch.inference_mode():
            maps = self.runner.cells(batch) if self.runner is not None else activation_maps(self.torch_network, batch)
        return np.asarray(maps[0].cpu().numpy(), dtype=np.float32)

    @property
    def torch_network(self) -> torch.nn.Module:
        """The PyTorch network (the torch backend; training and evaluation load that one)."""
        if self.network is None:
            raise RuntimeError(f"model {self.name} runs on onnxruntime; load it with backend='torch'")
        return self.network

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.runner is not None:
            return self.runner(batch)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):  # AMP on a GPU
            return self.torch_network(batch)


def torch_threads_for(classifiers: list[Classifier], configured: int = 0) -> int:
    """Torch's intra-op threads for a process running these models: `configured` (0: as it is now) while
    any model runs on PyTorch; one when onnxruntime runs them all and torch only builds their inputs,
    so that torch's OpenMP threads do not spin on the cores onnxruntime needs (the knee path about 15%
    faster on 2 cores; bench/inference.py)."""
    if classifiers and all(classifier.runner is not None for classifier in classifiers):
        return 1
    return configured or torch.get_num_threads()


Backend = Literal["auto", "torch", "onnxruntime"]


def torch_device(name: str) -> torch.device:
    """A device by name; `auto` is CUDA when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_backend(backend: Backend, device: str) -> Literal["torch", "onnxruntime"]:
    """`auto`: onnxruntime on a CPU when it is installed, PyTorch otherwise."""
    from inference import onnx_runtime

    if backend == "auto":
        return "onnxruntime" if device == "cpu" and onnx_runtime.available() else "torch"
    if backend == "onnxruntime" and device != "cpu":
        raise ModelLoadError(f"inference.backend onnxruntime runs on the CPU, not on {device!r}")
    if backend == "onnxruntime" and not onnx_runtime.available():
        raise ModelLoadError("inference.backend onnxruntime: the onnxruntime package is not installed")
    return backend


def load_classifier(card_path: Path, device: str = "cpu", batch_size: int = 8, backend: Backend = "torch",
                    cache_dir: Path | None = None, threads: int = 0) -> Classifier:
    """Load a card and its verified weights; `ModelLoadError` names the file and the fault.

    With the onnxruntime backend the network is exported to `cache_dir` on first use; later loads check
    the weights' hashes and open the export without building the PyTorch network at all."""
    chosen = resolve_backend(backend, device)
    card = read_card(card_path)
    kind: type[Classifier] = Classifier
    if card.design == "forensic":
        from inference.forensic_classifier import ForensicClassifier

        kind = ForensicClassifier
    if chosen == "onnxruntime":
        from inference.onnx_runtime import onnx_runner

        verify_weights(card.weights, card_path.parent)
        runner = onnx_runner(card, cache_dir or card_path.parent / ".onnx-cache", threads,
                             lambda: _network(card_path, card, torch.device("cpu")))
        return kind(card, None, torch.device(device), batch_size, runner)
    return kind(card, _network(card_path, card, torch.device(device)), torch.device(device), batch_size)


def build_for_card(card: ModelCard) -> torch.nn.Module:
    """The untrained network a card's weights belong to."""
    if card.forensic is not None:
        from inference.forensic import ForensicNet

        return ForensicNet(top_k=card.forensic.top_k)
    return build_network(in_chans=card.in_chans, cell_pooling=card.cell_pooling)


def _network(card_path: Path, card: ModelCard, device: torch.device) -> torch.nn.Module:
    """The PyTorch network with the card's verified weights, in eval mode and channels_last."""
    state = load_verified_weights(card.weights, card_path.parent)
    network = build_for_card(card)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelLoadError(f"{card_path.parent / card.weights.file}: weights do not fit "
                             f"{card.architecture} ({first})") from None
    return network.to(device).eval().to(memory_format=torch.channels_last)
