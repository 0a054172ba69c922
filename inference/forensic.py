"""The forensic design: a full-resolution front before timm's EfficientNet-B4, scoring an image at its
own pixel scale from a map of cells.

Why written here: no library ships a forensic front for timm. It follows the steganalysis and
forensics literature: fixed high-pass (SRM) filters and a constrained (Bayar) convolution read the
noise residual at native resolution, a few stride-1 layers combine them, one stride-2 layer hands
the result to the B4 (`in_chans` = the front's width). The B4's residual blocks start as identities
(their last batch norm zeroed), so from scratch it starts shallow.

Input: two channels at the image's own pixel scale, made by `forensic_input` from the windowed [0, 1]
image: the content, normalised, and the image divided by its noise level (`noise_level`), which the
front's filters turn into a residual. Output: per-cell logits (N, h, w), one cell per CELL_STRIDE
pixels; the image's logit is the mean of the k hottest cells, so a small region carries the verdict
and the same map gives the region.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from timm.models.efficientnet import EfficientNet

CELL_STRIDE = 64  # pixels per cell: the front's stride 2 times the B4's 32
CONTENT_MEAN, CONTENT_STD = 0.5, 0.25
TRUNCATION = 3.0  # residuals are clipped here (the steganalysis TLU): strong edges do not drown the noise
FRONT_WIDTH = 32  # channels the front hands to the B4

# fixed high-pass kernels (the SRM family): second order across, second order along rows and columns,
# and the 5 x 5 "KV" kernel; each sums to zero, so a constant or a ramp gives nothing
_SQUARE_3 = [[-1, 2, -1], [2, -4, 2], [-1, 2, -1]]
_ROWS_3 = [[0, 0, 0], [1, -2, 1], [0, 0, 0]]
_KV_5 = [[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]]


def _padded_5(kernel: list[list[int]], scale: float) -> np.ndarray:
    k = np.asarray(kernel, dtype=np.float32) / scale
    pad = (5 - k.shape[0]) // 2
    return np.pad(k, pad)


def srm_kernels() -> torch.Tensor:
    """The fixed high-pass kernels, (4, 1, 5, 5)."""
    kernels = [_padded_5(_SQUARE_3, 4), _padded_5(_ROWS_3, 2), _padded_5(_ROWS_3, 2).T, _padded_5(_KV_5, 12)]
    return torch.from_numpy(np.stack(kernels)[:, None].copy())


class ConstrainedConv(torch.nn.Module):
    """Bayar and Stamm's constrained convolution: each 5 x 5 kernel has -1 at its centre and the rest
    summing to 1, so it predicts the centre from its neighbours and outputs the prediction error (it
    cannot pass image content). The constraint holds by construction, in every forward pass."""

    def __init__(self, out_channels: int = 4, size: int = 5):
        super().__init__()
        self.size = size
        self.free = torch.nn.Parameter(torch.rand(out_channels, 1, size, size) * 0.1 + 0.01)

    def kernels(self) -> torch.Tensor:
        centre = torch.zeros_like(self.free)
        centre[..., self.size // 2, self.size // 2] = 1.0
        off = self.free * (1 - centre)
        off = off / off.sum(dim=(2, 3), keepdim=True).clamp(min=1e-6)
        return off - centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, self.kernels(), padding=self.size // 2)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[torch.nn.Module]:
    return [torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False), torch.nn.BatchNorm2d(cout), torch.nn.ReLU(True)]


class ForensicFront(torch.nn.Module):
    """Full-resolution front: (N, 2, H, W) -> (N, FRONT_WIDTH, H/2, W/2). Channel 0 is the content,
    channel 1 the image over its noise level; the filters see channel 1 only."""

    def __init__(self, width: int = 24, constrained: int = 4):
        super().__init__()
        fixed = srm_kernels()
        self.register_buffer("srm", fixed, persistent=False)
        self.constrained = ConstrainedConv(constrained)
        channels = 1 + fixed.shape[0] + constrained
        self.mix = torch.nn.Sequential(*_conv_bn_relu(channels, width), *_conv_bn_relu(width, width),
                                       *_conv_bn_relu(width, FRONT_WIDTH, stride=2))

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed and the constrained residuals of channel 1, truncated: (N, 4 + constrained, H, W)."""
        fine = x[:, 1:2]
        fixed = torch.nn.functional.conv2d(fine, cast(torch.Tensor, self.srm), padding=2)
        return torch.cat([fixed, self.constrained(fine)], dim=1).clamp(-TRUNCATION, TRUNCATION)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.cat([x[:, 0:1], self.residuals(x)], dim=1))


def _zero_last_norms(backbone: torch.nn.Module) -> None:
    """Zero the last batch norm's scale in every residual block, so each starts as the identity."""
    for stage in cast(Any, backbone).blocks:
        for block in stage:
            if getattr(block, "has_skip", False):
                last = getattr(block, "bn3", None) or getattr(block, "bn2", None)
                if last is not None:
                    torch.nn.init.zeros_(last.weight)


class ForensicNet(torch.nn.Module):
    """Front, EfficientNet-B4, and a one-output linear head applied to every cell of its last map."""

    def __init__(self, top_k: int = 4, drop_path_rate: float = 0.0, zero_init_last: bool = True):
        super().__init__()
        import timm

        self.front = ForensicFront()
        self.backbone = cast(EfficientNet, timm.create_model(
            "efficientnet_b4", pretrained=False, num_classes=0, global_pool="", in_chans=FRONT_WIDTH,
            drop_path_rate=drop_path_rate))
        if zero_init_last:
            _zero_last_norms(self.backbone)
        self.head = torch.nn.Conv2d(self.backbone.num_features, 1, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(cast(torch.Tensor, self.head.bias))
        self.top_k = top_k

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.backbone.forward_features(self.front(x)))

    def cells(self, x: torch.Tensor) -> torch.Tensor:
        """Per-cell logits, (N, h, w)."""
        return self.head(self.features(x))[:, 0].float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The image logit, (N, 1): the mean of the k hottest cells."""
        return pooled(self.cells(x), self.top_k)


def pooled(cells: torch.Tensor, top_k: int) -> torch.Tensor:
    """(N, h, w) cell logits to (N, 1) image logits: the mean of the `top_k` highest."""
    flat = cells.flatten(1)
    return flat.topk(min(top_k, flat.shape[1]), dim=1).values.mean(dim=1, keepdim=True)


NOISE_BLOCK = 32


def noise_level(image: np.ndarray) -> float:
    """The image's typical noise: the median over 32 x 32 blocks of each block's mean absolute
    second-order residual. A block holds its own noise, and the median ignores the few a
    manipulation changed and the flat ones of a collimated border (unless most are flat)."""
    x = np.asarray(image, dtype=np.float32)
    residual = np.abs(4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]) / 4
    h, w = (s // NOISE_BLOCK * NOISE_BLOCK for s in residual.shape)
    if h == 0 or w == 0:
        return float(max(residual.mean(), 1e-4))
    blocks = residual[:h, :w].reshape(h // NOISE_BLOCK, NOISE_BLOCK, w // NOISE_BLOCK, NOISE_BLOCK).mean(axis=(1, 3))
    return float(max(np.median(blocks), 1e-4))


def forensic_input(image: np.ndarray, level: float | None = None) -> np.ndarray:
    """A windowed [0, 1] image (H, W) as the network's two channels (2, H, W), float32; `level` is the
    noise level of the whole image it comes from (computed here when None)."""
    level = noise_level(image) if level is None else level
    x = np.asarray(image, dtype=np.float32)
    return np.stack([(x - CONTENT_MEAN) / CONTENT_STD, x / np.float32(level)]).astype(np.float32)
