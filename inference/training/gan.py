"""Whole-image synthesis: a small DCGAN trained by the project on its own pristine images.

The public knee deepfake X-ray set is GAN-made; this family gives the detectors that kind of
fake. The GAN works at 64 x 64 on [0, 1] images; `GanSynthesiser` trains it once per synth run
(deterministically for a seed) and then maps each generated image back to the size and the
intensity range of a pristine image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import zoom
from tqdm import tqdm

GAN_FAMILY = "gan"
GAN_SIZE = 64
LATENT = 64


def _generator() -> torch.nn.Module:
    """z (LATENT x 1 x 1) -> a 64 x 64 image in [-1, 1]: transposed convolutions, batch norm, ReLU."""
    def up(cin: int, cout: int) -> list[torch.nn.Module]:
        return [torch.nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), torch.nn.BatchNorm2d(cout),
                torch.nn.ReLU(True)]
    return torch.nn.Sequential(
        torch.nn.ConvTranspose2d(LATENT, 256, 4, 1, 0, bias=False), torch.nn.BatchNorm2d(256), torch.nn.ReLU(True),
        *up(256, 128), *up(128, 64), *up(64, 32),
        torch.nn.ConvTranspose2d(32, 1, 4, 2, 1, bias=False), torch.nn.Tanh())


def _discriminator() -> torch.nn.Module:
    """A 64 x 64 image -> one logit: strided convolutions with leaky ReLU."""
    def down(cin: int, cout: int, norm: bool = True) -> list[torch.nn.Module]:
        layers: list[torch.nn.Module] = [torch.nn.Conv2d(cin, cout, 4, 2, 1, bias=False)]
        if norm:
            layers.append(torch.nn.BatchNorm2d(cout))
        return [*layers, torch.nn.LeakyReLU(0.2, True)]
    return torch.nn.Sequential(*down(1, 32, norm=False), *down(32, 64), *down(64, 128), *down(128, 256),
                               torch.nn.Conv2d(256, 1, 4, 1, 0, bias=False), torch.nn.Flatten())


def _init(module: torch.nn.Module) -> None:
    """The DCGAN paper's initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
        torch.nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, torch.nn.BatchNorm2d):
        torch.nn.init.normal_(module.weight, 1.0, 0.02)
        torch.nn.init.zeros_(module.bias)


def to_gan_size(image: np.ndarray) -> np.ndarray:
    """A [0, 1] image resized to GAN_SIZE x GAN_SIZE."""
    return zoom(image, (GAN_SIZE / image.shape[0], GAN_SIZE / image.shape[1]), order=1).astype(np.float32)


def train_gan(images: np.ndarray, steps: int, seed: int, batch_size: int = 32,
              progress: bool = True, device: torch.device | None = None) -> torch.nn.Module:
    """Train a DCGAN on (N, 64, 64) images in [0, 1] (on `device`, the CPU by default) and return the
    generator on the CPU, in eval mode."""
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    generator, discriminator = _generator().to(device), _discriminator().to(device)
    generator.apply(_init)
    discriminator.apply(_init)
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    data = torch.from_numpy(images.astype(np.float32))[:, None].to(device) * 2 - 1
    rng = np.random.default_rng(seed)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    ones, zeros = torch.ones(batch_size, 1, device=device), torch.zeros(batch_size, 1, device=device)
    for _ in tqdm(range(steps), desc="training the synthesis GAN", unit="step", disable=not progress):
        real = data[torch.from_numpy(rng.integers(0, len(data), batch_size)).to(device)]
        fake = generator(torch.randn(batch_size, LATENT, 1, 1, device=device))
        loss_d = bce(discriminator(real), ones * 0.9) + bce(discriminator(fake.detach()), zeros)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = bce(discriminator(fake), ones)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    return generator.cpu().eval()


@dataclass
class GanSynthesiser:
    """A trained generator that turns a seed into a whole fake image shaped like a pristine one."""

    generator: torch.nn.Module

    def fake_like(self, rng: np.random.Generator, pristine: np.ndarray) -> np.ndarray:
        """A generated image at the pristine image's size, in its intensity range (modality units)."""
        z = torch.from_numpy(rng.standard_normal((1, LATENT, 1, 1)).astype(np.float32))
        with torch.inference_mode():
            unit = (self.generator(z)[0, 0].numpy() + 1) / 2
        big = zoom(unit, (pristine.shape[0] / GAN_SIZE, pristine.shape[1] / GAN_SIZE), order=3)
        low, high = np.percentile(pristine, [0.5, 99.5])
        return (low + np.clip(big, 0, 1) * (high - low)).astype(np.float32)
