"""Whole-image synthesis: a small DCGAN trained by the project on its own pristine images.

The public knee deepfake X-ray set is GAN-made; this family gives the detectors that kind of
fake. The GAN works on [0, 1] images at one of GAN_SIZES; `train_gan` trains it once per synth run
(deterministically for a seed and a device) and `GanSynthesiser` maps each generated image to the
size and the intensity range of a pristine image.

At the size the detector sees (256 on a GPU) the fakes carry a generator's own traces, the
transposed convolutions' periodic patterns; a 64-pixel fake enlarged to that size is mostly smooth,
and a detector trained on it learns that smooth means fake (blurred pristine images flagged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from scipy.ndimage import zoom
from tqdm import tqdm

GAN_FAMILY = "gan"
GAN_SIZES = (64, 128, 256)
LATENT = 64
GAN_LATENTS = 0x6A5  # the latent vectors' random stream, apart from the GAN's sources (0x6A4) and the pairs'
_NARROWEST = 32  # channels of the generator's last (largest) feature map
_WIDEST = 512


def check_gan_size(size: int) -> None:
    """A ValueError naming the sizes the GAN can make, for any other."""
    if size not in GAN_SIZES:
        raise ValueError(f"GAN size {size} is not one of {', '.join(map(str, GAN_SIZES))}")


def _widths(size: int) -> list[int]:
    """Channels of the generator's feature maps from 4 x 4 up to size / 2 (the discriminator's, reversed)."""
    check_gan_size(size)
    steps = int(math.log2(size)) - 2  # feature maps at 4, 8, ..., size / 2
    return [min(_WIDEST, _NARROWEST << (steps - 1 - i)) for i in range(steps)]


def generator_for(size: int) -> torch.nn.Module:
    """z (LATENT x 1 x 1) -> a size x size image in [-1, 1]: transposed convolutions, batch norm, ReLU."""
    widths = _widths(size)
    layers: list[torch.nn.Module] = [torch.nn.ConvTranspose2d(LATENT, widths[0], 4, 1, 0, bias=False),
                                     torch.nn.BatchNorm2d(widths[0]), torch.nn.ReLU(True)]
    for cin, cout in pairwise(widths):
        layers += [torch.nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), torch.nn.BatchNorm2d(cout),
                   torch.nn.ReLU(True)]
    return torch.nn.Sequential(*layers, torch.nn.ConvTranspose2d(widths[-1], 1, 4, 2, 1, bias=False),
                               torch.nn.Tanh())


def _discriminator(size: int) -> torch.nn.Module:
    """A size x size image -> one logit: strided convolutions with leaky ReLU."""
    widths = _widths(size)[::-1]
    layers: list[torch.nn.Module] = [torch.nn.Conv2d(1, widths[0], 4, 2, 1, bias=False),
                                     torch.nn.LeakyReLU(0.2, True)]
    for cin, cout in pairwise(widths):
        layers += [torch.nn.Conv2d(cin, cout, 4, 2, 1, bias=False), torch.nn.BatchNorm2d(cout),
                   torch.nn.LeakyReLU(0.2, True)]
    return torch.nn.Sequential(*layers, torch.nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False), torch.nn.Flatten())


def _init(module: torch.nn.Module) -> None:
    """The DCGAN paper's initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
        torch.nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, torch.nn.BatchNorm2d):
        torch.nn.init.normal_(module.weight, 1.0, 0.02)
        torch.nn.init.zeros_(module.bias)


def to_gan_size(image: np.ndarray, size: int) -> np.ndarray:
    """A [0, 1] image resized to size x size."""
    return zoom(image, (size / image.shape[0], size / image.shape[1]), order=1).astype(np.float32)


def train_gan(images: np.ndarray, steps: int, seed: int, batch_size: int = 32,
              progress: bool = True, device: torch.device | None = None) -> torch.nn.Module:
    """Train a DCGAN on (N, size, size) images in [0, 1], size one of GAN_SIZES (on `device`, the CPU
    by default) and return the generator, in eval mode, on that device."""
    device = device or torch.device("cpu")
    size = images.shape[-1]
    torch.manual_seed(seed)
    generator, discriminator = generator_for(size).to(device), _discriminator(size).to(device)
    generator.apply(_init)
    discriminator.apply(_init)
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    data = torch.from_numpy(images.astype(np.float32))[:, None].to(device) * 2 - 1
    rng = np.random.default_rng(seed)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    ones, zeros = torch.ones(batch_size, 1, device=device), torch.zeros(batch_size, 1, device=device)
    for _ in tqdm(range(steps), desc=f"training the synthesis GAN ({size} px)", unit="step", disable=not progress):
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
    return generator.eval()


GENERATING_BATCH = 64


@dataclass
class GanSynthesiser:
    """A trained generator: latent seeds in, whole generated images out."""

    generator: torch.nn.Module

    def generate(self, seeds: list[int], run_seed: int) -> list[np.ndarray]:
        """One [0, 1] image at the GAN's size per seed, its latent vector drawn from
        `default_rng([run_seed, GAN_LATENTS, seed])`: the same image whichever batch it is made in."""
        device = next(self.generator.parameters()).device
        out: list[np.ndarray] = []
        for start in range(0, len(seeds), GENERATING_BATCH):
            z = np.stack([np.random.default_rng([run_seed, GAN_LATENTS, s]).standard_normal((LATENT, 1, 1))
                          for s in seeds[start:start + GENERATING_BATCH]]).astype(np.float32)
            with torch.inference_mode():
                images = (self.generator(torch.from_numpy(z).to(device))[:, 0].float().cpu().numpy() + 1) / 2
            out += [np.clip(image, 0, 1) for image in images]
        return out


def fake_like(generated: np.ndarray, pristine: np.ndarray) -> np.ndarray:
    """A generated [0, 1] image at the pristine image's size (unchanged when the sizes agree), in its
    intensity range (modality units)."""
    if generated.shape != pristine.shape:
        generated = np.clip(zoom(generated, (pristine.shape[0] / generated.shape[0],
                                             pristine.shape[1] / generated.shape[1]), order=3), 0, 1)
    low, high = np.percentile(pristine, [0.5, 99.5])
    return (low + generated * (high - low)).astype(np.float32)
