"""`dfnode synth`: deterministic, labelled right, manipulations confined to their boxes."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.training import phantoms, synth
from inference.training.gan import GAN_FAMILY, GanSynthesiser, fake_like, train_gan
from inference.training.manipulations import Tampered
from inference.training.synth import SynthSpec, synthesise, worker_pool

FAST_GAN = {"gan_steps": 20, "gan_sources": 16}  # a barely trained GAN: enough to check the plumbing


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.png"))}


@pytest.mark.parametrize("kind", ["xray", "ct"])
def test_same_seed_same_bytes(tmp_path: Path, kind: str) -> None:
    spec = SynthSpec(kind, 8, size=96, seed=7, **FAST_GAN)
    a = synthesise(spec, tmp_path / "a", progress=False)
    b = synthesise(spec, tmp_path / "b", progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert a.read_text() == b.read_text()
    c = synthesise(SynthSpec(kind, 8, size=96, seed=8, **FAST_GAN), tmp_path / "c", progress=False)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c") and c.exists()


@pytest.mark.parametrize("kind", ["xray", "ct"])
def test_labels_and_boxes(tmp_path: Path, kind: str) -> None:
    spec = SynthSpec(kind, 0, size=128, seed=3, **FAST_GAN)
    families = spec.family_names()
    assert GAN_FAMILY in families
    manifest = synthesise(SynthSpec(kind, 2 * len(families), size=128, seed=3, **FAST_GAN), tmp_path,
                          progress=False)
    rows = list(csv.DictReader(manifest.read_text().splitlines()))
    assert len(rows) == 4 * len(families)
    seen = set()
    for pristine, fake in zip(rows[::2], rows[1::2], strict=True):
        assert (pristine["label"], pristine["manipulation"], pristine["box"]) == ("0", "pristine", "")
        assert fake["label"] == "1" and fake["group"] == pristine["group"]
        seen.add(fake["manipulation"])
        a = np.asarray(Image.open(tmp_path / pristine["path"]), dtype=np.int32)
        b = np.asarray(Image.open(tmp_path / fake["path"]), dtype=np.int32)
        assert a.shape == b.shape
        if fake["manipulation"] == GAN_FAMILY:  # a whole generated image: no box, nothing shared
            assert fake["box"] == "" and (a != b).mean() > 0.9
            continue
        r0, c0, r1, c1 = map(int, fake["box"].split())
        outside = np.ones(a.shape, dtype=bool)
        outside[r0:r1, c0:c1] = False
        assert (a[outside] == b[outside]).all(), fake["manipulation"]
        assert (a[r0:r1, c0:c1] != b[r0:r1, c0:c1]).mean() > 0.01, fake["manipulation"]
    assert seen == set(families)


def test_unknown_family_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown manipulation family ct_lesion_inject for xray"):
        synthesise(SynthSpec("xray", 2, families=("ct_lesion_inject",)), tmp_path, progress=False)


def _torch_threads(_: int) -> int:
    return torch.get_num_threads()


def test_pool_workers_run_torch_on_one_thread() -> None:
    """Each of synth's worker processes runs torch on one thread, whatever this process uses: a pool
    as wide as the machine in every worker oversubscribes the cores (bench/synth.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pool = worker_pool(2)
        assert pool is not None and worker_pool(1) is None
        with pool:
            assert set(pool.map(_torch_threads, range(8))) == {1}
    finally:
        torch.set_num_threads(before)


def test_output_does_not_depend_on_blocks_or_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GAN's images are made in blocks, in this process, and handed to the workers: the bytes are
    the same whatever the block size and the number of workers."""
    spec = SynthSpec("xray", 13, size=64, seed=5, **FAST_GAN)
    synthesise(spec, tmp_path / "one", progress=False)
    monkeypatch.setattr(synth, "PAIRS_PER_BLOCK", 4)
    synthesise(spec, tmp_path / "blocks", workers=2, progress=False)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "blocks")
    assert (tmp_path / "one" / "manifest.csv").read_text() == (tmp_path / "blocks" / "manifest.csv").read_text()


def test_gan_at_the_image_size_keeps_its_own_pixels() -> None:
    """A GAN at the pairs' size hands its pixels over unresized (the generator's traces stay); another
    size is resized; a size the GAN cannot make is refused with the sizes it can."""
    images = np.random.default_rng(0).random((8, 128, 128), dtype=np.float32)
    gan = GanSynthesiser(train_gan(images, steps=2, seed=0, batch_size=4, progress=False))
    made = gan.generate([7, 8], run_seed=1)
    assert [m.shape for m in made] == [(128, 128)] * 2
    assert np.array_equal(gan.generate([8], run_seed=1)[0], made[1])  # the same image in any batch
    pristine = np.linspace(100, 4000, 128 * 128, dtype=np.float32).reshape(128, 128)
    low, high = np.percentile(pristine, [0.5, 99.5])
    np.testing.assert_allclose(fake_like(made[0], pristine), low + made[0] * (high - low), rtol=1e-5)
    assert fake_like(made[0], pristine[:96, :80]).shape == (96, 80)
    with pytest.raises(ValueError, match="GAN size 100 is not one of 64, 128, 256"):
        SynthSpec("xray", 1, gan_size=100)


@pytest.mark.parametrize("seed", range(6))
def test_shapes_drawn_in_a_window_lose_nothing(seed: int) -> None:
    """Phantom shapes are drawn in the window `_window` gives (vessels, ribs): every pixel that the shape
    reaches on the whole grid lies inside it, on rotated, shifted and stretched grids alike."""
    rng = np.random.default_rng(seed)
    x, y = phantoms._grid(96, rng, 12)
    x = x * rng.uniform(0.8, 1.2)
    for _ in range(20):
        cx, cy, rx, ry = *rng.uniform(-1.1, 1.1, 2), *rng.uniform(0.01, 0.3, 2)
        reached = phantoms._smooth_step(phantoms._ellipse(x, y, cx, cy, rx, ry), 0.2) > 0
        rows, columns = phantoms._window(x, y, cx, cy, 1.1 * max(rx, ry))
        inside = np.zeros_like(reached)
        inside[rows, columns] = True
        assert not (reached & ~inside).any()
        assert inside.sum() < reached.size or reached.sum() > reached.size // 4  # a window, not the image


@pytest.mark.parametrize("kind", ["xray", "ct"])
def test_every_local_manipulation_is_visible(kind: str) -> None:
    """A local manipulation changes its box by at least one grey level of the model's window on average:
    one the network cannot see would be a manipulated label on an unchanged image."""
    spec = SynthSpec(kind, 0, size=128, seed=4, **FAST_GAN)
    names = spec.family_names()
    local = [i for i in range(40) if names[i % len(names)] != GAN_FAMILY]
    changes = {i: synth.visible_change(p.pristine, p.tampered, kind)
               for i in local for p in [synth.synthesise_pair(spec, i)]}
    assert min(changes.values()) >= synth.MIN_VISIBLE_CHANGE, changes


def test_invisible_draws_are_drawn_again() -> None:
    """Draws that change nothing visible are made again, up to MAX_DRAWS; then the most visible is kept."""
    pristine = np.tile(np.linspace(0, 1000, 64, dtype=np.float32), (64, 1))
    box = (10, 10, 30, 30)
    steps = iter([0.0, 0.5, 3.0, 40.0, 80.0])
    calls = []

    def shifted(rng: np.random.Generator, image: np.ndarray, donor: np.ndarray | None = None) -> Tampered:
        calls.append(1)
        out = image.copy()
        out[10:30, 10:30] += next(steps, 1.0)
        return Tampered(out, box)

    made = synth.visible_manipulation(shifted, np.random.default_rng(0), pristine, None, "xray")
    assert len(calls) == 4 and synth.visible_change(pristine, made, "xray") >= synth.MIN_VISIBLE_CHANGE
    calls.clear()
    steps = iter([2.0, 3.0] + [0.0] * 10)
    made = synth.visible_manipulation(shifted, np.random.default_rng(0), pristine, None, "xray")
    assert len(calls) == synth.MAX_DRAWS
    assert np.array_equal(made.image[10:30, 10:30], pristine[10:30, 10:30] + 3.0)  # the second draw
