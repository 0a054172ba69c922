"""The forensic design: its front's filters and constraint, tiled scoring, cards, training to a card."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ModelLoadError
from inference.forensic import ConstrainedConv, ForensicFront, forensic_input, noise_level, srm_kernels
from inference.model import load_classifier
from inference.tiling import pass_pixels, tiled_cells
from inference.training.crops import CURRICULUM, cell_coverage, make_twins, phantom_sources
from inference.training.datasets import load_samples
from node.cli import main
from tests.models import random_forensic_network, write_forensic_test_model


def test_fixed_kernels_remove_constants_and_ramps() -> None:
    kernels = srm_kernels()
    assert kernels.shape == (4, 1, 5, 5)
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for plane in (torch.full((32, 32), 7.0), 3 * rows + 2 * cols + 1):
        out = torch.nn.functional.conv2d(plane[None, None], kernels)
        assert out.abs().max() < 1e-4
    noise = torch.randn(1, 1, 32, 32)
    assert torch.nn.functional.conv2d(noise, kernels).abs().mean() > 0.3  # noise passes


def test_constrained_kernels_predict_the_centre_even_after_training() -> None:
    """Centre -1, the rest summing to 1, however the optimiser moves the free weights."""
    conv = ConstrainedConv(4)
    optimiser = torch.optim.SGD(conv.parameters(), lr=1.0)
    for _ in range(3):
        loss = conv(torch.randn(2, 1, 16, 16)).pow(2).mean() - conv.free.sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        kernels = conv.kernels()
        assert torch.allclose(kernels[:, 0, 2, 2], torch.full((4,), -1.0))
        assert torch.allclose(kernels.sum(dim=(1, 2, 3)), torch.zeros(4), atol=1e-5)
    assert conv(torch.full((1, 1, 16, 16), 5.0))[..., 2:-2, 2:-2].abs().max() < 1e-4  # no content passes


def test_front_keeps_full_resolution_until_its_last_layer() -> None:
    front = ForensicFront().eval()
    x = torch.randn(1, 2, 96, 80)
    assert front.residuals(x).shape == (1, 8, 96, 80)
    assert front(x).shape == (1, 32, 48, 40)
    assert front.residuals(x).abs().max() <= 3.0  # truncated


def test_noise_level_is_the_images_and_ignores_a_small_smooth_region() -> None:
    rng = np.random.default_rng(0)
    image = 0.5 + 0.01 * rng.standard_normal((512, 512)).astype(np.float32)
    level = noise_level(image)
    smoothed = image.copy()
    smoothed[100:160, 100:160] = 0.5  # a flat in-painted patch
    assert noise_level(smoothed) == pytest.approx(level, rel=0.05)
    assert noise_level(image * 2 - 0.5) == pytest.approx(2 * level, rel=1e-3)
    channels = forensic_input(image)
    assert channels.shape == (2, 512, 512) and channels.dtype == np.float32


def test_tiled_scoring_equals_one_pass_over_the_whole_image() -> None:
    network = random_forensic_network()
    image = torch.randn(1, 2, 704, 640)
    with torch.inference_mode():
        whole = network.cells(image)
        tiled = tiled_cells(network.cells, image, 64, 128, 256)
    assert tiled.shape == whole.shape == (1, 11, 10)
    assert (tiled - whole).abs().max() <= 1e-3 * whole.abs().max()
    with pytest.raises(ValueError, match="multiples of the cell stride"):
        tiled_cells(network.cells, image, 64, 100, 0)


def test_a_series_batch_is_scored_a_few_slices_a_pass_with_the_same_map() -> None:
    network = random_forensic_network()
    slices = torch.randn(5, 2, 128, 128)
    passes: list[int] = []

    def counted(batch: torch.Tensor) -> torch.Tensor:
        passes.append(batch.shape[0] * batch.shape[-2] * batch.shape[-1])
        return network.cells(batch)
    with torch.inference_mode():
        whole = network.cells(slices)
        bounded = tiled_cells(counted, slices, 64, 128, 64)  # at most 256 x 256 pixels a pass: 4 slices
    assert passes == [4 * 128 * 128, 128 * 128] and max(passes) <= pass_pixels(128, 64)
    assert (bounded - whole).abs().max() <= 1e-4 * whole.abs().max()


def test_forensic_card_scores_native_images_on_both_backends(tmp_path: Path) -> None:
    """Images of their own sizes, never resized; onnxruntime (dynamic height and width) agrees with torch;
    the region is in source pixels on the map's 64-pixel grid."""
    card = write_forensic_test_model(tmp_path / "w", "knee", "xray", tile=256, halo=128)
    rng = np.random.default_rng(1)
    images = [rng.random((300, 420)).astype(np.float32), rng.random((512, 512)).astype(np.float32)]
    eager = load_classifier(card, backend="torch")
    fast = load_classifier(card, backend="onnxruntime", cache_dir=tmp_path / "cache")
    assert type(eager).__name__ == type(fast).__name__ == "ForensicClassifier"
    assert np.allclose(eager.scores(images), fast.scores(images), atol=1e-4)
    cells = eager.activation_cells(images[0])
    assert cells.shape == (5, 7)
    box = eager.localise(images[0], (300, 420))
    assert box is not None and box.row1 <= 300 and box.col1 <= 420 and box.row0 % 64 == 0


def test_cards_of_either_design_load_and_a_half_forensic_card_is_refused(tmp_path: Path, model_dir: Path) -> None:
    assert type(load_classifier(model_dir / "knee.json")).__name__ == "Classifier"  # the letterbox design
    card = write_forensic_test_model(tmp_path, "knee", "xray")
    raw = json.loads(card.read_text())
    raw.pop("forensic")
    card.write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="forensic design needs its 'forensic' section"):
        load_classifier(card)


def test_twin_crops_differ_only_where_the_box_covers() -> None:
    (source,) = phantom_sources("ct", 3, range(1), workers=1)
    twins = make_twins(np.random.default_rng(2), "ct", source, source, "ct_lesion_inject", CURRICULUM[0], 192)
    assert twins.pristine.shape == twins.tampered.shape == (2, 192, 192)
    assert twins.coverage.shape == (3, 3) and twins.coverage.max() > 0
    changed = np.abs(twins.tampered[0] - twins.pristine[0]) > 1e-6
    mask_cells = cell_coverage(changed.astype(np.float32)) > 0
    assert mask_cells[twins.coverage == 0].sum() == 0  # nothing changed outside the box's cells


def test_a_folder_of_pristine_images_becomes_sources_split_by_file(tmp_path: Path) -> None:
    from pydicom import examples

    from inference.training.crops import folder_sources, split_sources

    folder = tmp_path / "pristine"
    folder.mkdir()
    for n in range(3):
        examples.ct.save_as(folder / f"slice{n}.dcm")
    sources = folder_sources("ct", folder)
    assert [s.group for s in sources] == ["user-slice0", "user-slice1", "user-slice2"]
    assert sources[0].values.shape == (128, 128) and sources[0].values.min() < -500  # in HU
    split = split_sources("ct", 0, 1, 1, 128, workers=1, pristine=folder)
    users = {s.group for s in split.train + split.test if s.group.startswith("user-")}
    assert users == {s.group for s in sources} and not {s.group for s in split.train} & {s.group for s in split.test}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no DICOM or PNG images"):
        folder_sources("ct", tmp_path / "empty")


def test_a_held_out_familys_native_set_holds_only_that_family(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "inpaint"
    assert main(["synth", "--native", "--kind", "lung", "--count", "2", "--family", "inpaint", "--out", str(out)]) == 0
    samples = load_samples(out / "manifest.csv")
    manipulated = [s.manipulation for s in samples if s.label == 1]
    assert len(manipulated) == len(samples) // 2 >= 2 and set(manipulated) == {"inpaint"}
    assert main(["synth", "--native", "--kind", "lung", "--count", "2", "--family", "gan", "--out",
                 str(tmp_path / "gan")]) == 1
    assert "no gan family for ct" in capsys.readouterr().err and not (tmp_path / "gan" / "manifest.csv").exists()


@pytest.mark.slow
def test_a_short_forensic_run_writes_a_card_the_node_loads_and_evaluate_reproduces(tmp_path: Path) -> None:
    weights, run = tmp_path / "weights", tmp_path / "run"
    common = ["train", "--model", "lung", "--weights-dir", str(weights), "--run-dir", str(run),
              "--minutes", "0.4", "--front-minutes", "0.15", "--crop", "128", "--batch-pairs", "2",
              "--train-sources", "3", "--val-sources", "2", "--test-count", "6", "--validate-minutes", "0.1",
              "--gan-steps", "3", "--gan-sources", "8"]
    assert main(common) == 0
    card = json.loads((weights / "lung.json").read_text())
    assert card["design"] == "forensic" and card["forensic"]["training_crop"] == 128
    assert card["training"]["command"].startswith("dfnode train --model lung")
    assert [h["phase"] for h in card["training"]["history"]][:1] == ["front"]
    assert 0 <= card["metrics"]["roc_auc"] <= 1 and "region_hit_rate" in card["metrics"]
    assert "gan" in card["metrics"]["auc_by_manipulation"] and "--gan" in card["training"]["test_data"]
    assert all((run / name).is_file() for name in ("resume.json", "network.safetensors.index.json", "last.pt"))
    classifier = load_classifier(weights / "lung.json")
    assert classifier.version == card["weights"]["sha256"][:12]
    test_set = Path(card["training"]["test_data"].split("--out ")[1])
    assert main(["evaluate", "--weights", str(weights / "lung.json"), "--data", str(test_set),
                 "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "lung-native.json").read_text())
    assert report["roc_auc"] == pytest.approx(card["metrics"]["roc_auc"], abs=1e-6)
    assert report["confusion"] == card["metrics"]["confusion"]
    assert report["benign_fpr_by_processing"] == pytest.approx(card["metrics"]["benign_fpr_by_processing"])
    # the same command again resumes from the run folder: its budget is spent, so it trains no further
    assert main([*common, "--probe"]) == 0
    again = json.loads((run / "resume.json").read_text())["state"]
    assert again["step"] == card["training"]["steps"] and again["history"][-1]["note"] == "end"


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_saves_its_state_and_exits_cleanly(tmp_path: Path) -> None:
    """What a session ending (or an admin's Ctrl-C) does to a long run: it keeps what it learned."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "node.cli", "train", "--model", "lung", "--run-dir", str(run),
               "--weights-dir", str(tmp_path / "weights"), "--minutes", "30", "--front-minutes", "10",
               "--crop", "128", "--batch-pairs", "2", "--train-sources", "2", "--val-sources", "1",
               "--val-pairs", "2", "--validate-minutes", "0.02", "--gan-steps", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # the first validation record: the loop is running
        assert first.startswith("lung: step="), first
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "stopped at" in rest
    state = json.loads((run / "resume.json").read_text())["state"]
    assert 0 < state["minutes"] < 30 and state["step"] > 0
    assert not (tmp_path / "weights" / "lung.json").exists()  # no card for a run that has not finished
