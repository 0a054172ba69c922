"""`dfnode train` and `dfnode evaluate` end to end on a tiny set; grouped splits never leak a source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import rotate

from inference.model import load_classifier
from inference.preprocess import Preprocessing
from inference.training import augment as augment_module
from inference.training.augment import _rotated, augment, benign_degrade
from inference.training.datasets import Sample, load_samples
from inference.training.online import online_pairs
from inference.training.splits import grouped_split, split_for_card
from inference.training.train import _TrainImages
from node.cli import main
from node.service import Node
from tests.conftest import node_config


def test_grouped_split_never_puts_a_source_in_two_splits() -> None:
    samples = [Sample(Path(f"{g}-{i}.png"), i % 2, f"patient-{g}") for g in range(50) for i in range(g % 5 + 1)]
    splits = grouped_split(samples, seed=3)
    groups = {name: {s.group for s in part} for name, part in splits.items()}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert sum(len(p) for p in splits.values()) == len(samples)
    share = {name: len(p) / len(samples) for name, p in splits.items()}
    assert abs(share["train"] - 0.6) < 0.08 and abs(share["val"] - 0.2) < 0.08
    assert grouped_split(samples, seed=3) == splits


def test_grouped_split_spreads_big_groups_over_the_splits() -> None:
    """Every crop of one real image shares a group: three such big groups among many small ones must not
    all land in one split (the test split would then hold images unlike any the model was tuned on)."""
    big = [Sample(Path(f"real{g}-{i}.png"), i % 2, f"real-{g}") for g in range(3) for i in range(150)]
    small = [Sample(Path(f"p{g}-{i}.png"), i, f"phantom-{g}") for g in range(600) for i in range(2)]
    for seed in range(5):
        splits = grouped_split(big + small, seed)
        real = {name: {s.group for s in part if s.group.startswith("real")} for name, part in splits.items()}
        assert all(len(groups) == 1 for groups in real.values()), (seed, real)
        share = {name: len(p) / 1650 for name, p in splits.items()}
        assert abs(share["train"] - 0.6) < 0.02 and abs(share["test"] - 0.2) < 0.02
    # cards written before this rule name no rule: their split is reproduced with the earlier one
    old_card = {"split": "60/20/20 grouped by source, seed 1", "spec": {"seed": 1}}
    assert split_for_card(big + small, old_card) == grouped_split(big + small, 1, largest_first=False)
    assert split_for_card(big + small, {"split": "largest groups first", "spec": {"seed": 1}}) == \
        grouped_split(big + small, 1)


def test_online_pairs_are_fresh_each_epoch_and_changed_only_in_their_box() -> None:
    train = [Sample(Path("a.png"), 0, "g1", "pristine"), Sample(Path("b.png"), 1, "g1", "splice", (1, 1, 9, 9)),
             Sample(Path("c.png"), 1, "g2", "copy_move", (1, 1, 9, 9)), Sample(Path("d.png"), 1, "g3", "gan")]
    pairs = online_pairs(train, "ct", 96, seed=2, count=5)
    assert pairs.spec.family_names() == ["copy_move", "splice"]  # the data's local families; gan stays with files
    first = pairs.pair(0, 3)
    again = pairs.pair(0, 3)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1].image, again[1].image)
    assert not np.array_equal(pairs.pair(1, 3)[0], first[0])  # the next epoch brings new phantoms
    for epoch, index in ((0, 0), (0, 1), (2, 4)):
        pristine, tampered, family = pairs.pair(epoch, index)
        assert family in ("copy_move", "splice") and pristine.shape == (96, 96)
        assert np.array_equal(pristine, np.round(pristine))  # stored as synth stores them: 16-bit values
        r0, c0, r1, c1 = tampered.box
        changed = tampered.image != pristine
        assert changed[r0:r1, c0:c1].any()
        changed[r0:r1, c0:c1] = False
        assert not changed.any()
    with pytest.raises(ValueError, match="--online-pairs needs"):
        online_pairs([Sample(Path("x.png"), 1, "g", "unknown")], "xray", 96, 0, 5)


def test_benign_degradations_rise_over_the_warmup(monkeypatch: pytest.MonkeyPatch) -> None:
    """With `degrade_warmup` N the first epoch meets no benign degradation, the odds rise linearly, and from
    epoch N on every item is what it is without a warm-up."""
    online = online_pairs([Sample(Path("b.png"), 1, "g1", "splice", (1, 1, 9, 9))], "xray", 64, seed=1, count=6)
    prep = Preprocessing("xray", 64)
    warm, cold = _TrainImages([], prep, 0, online, degrade_warmup=4), _TrainImages([], prep, 0, online)
    assert [warm.degradation(e) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    degraded: list[str] = []

    def counting(rng: np.random.Generator, image: np.ndarray, name: str) -> np.ndarray:
        degraded.append(name)
        return benign_degrade(rng, image, name)

    monkeypatch.setattr(augment_module, "benign_degrade", counting)
    for i in range(12):
        warm[(0, i)]
    assert degraded == []
    for i in range(12):
        cold[(0, i)]
    assert degraded  # without the warm-up, the first epoch already has them
    for i in range(12):
        assert np.array_equal(warm[(4, i)][0], cold[(4, i)][0])


def test_loader_processes_see_each_epoch(tmp_path: Path) -> None:
    """Loader processes live across epochs: each epoch must still bring new augmentation and new online
    pairs (the epoch travels with every index), and the same epoch must give the same batches."""
    import torch

    from inference.training.synth import SynthSpec, synthesise
    from inference.training.train import TrainSpec, training_loader

    synthesise(SynthSpec("xray", 4, size=48, seed=1, families=("splice",)), tmp_path / "data", progress=False)
    train = load_samples(tmp_path / "data")
    spec = TrainSpec("knee", "xray", tmp_path / "data", tmp_path, tmp_path, input_size=48, batch_size=4,
                     workers=2, online_pairs=2)
    loader, batches = training_loader(spec, train, torch.device("cpu"))
    for epoch in (0, 1, 2):
        batches.epoch = epoch
        from_loader = torch.cat([images for images, *_ in loader])
        assert from_loader.shape == (12, 1, 48, 48)  # 4 pairs from files and 2 online pairs
        # what the loader processes made is this epoch's items, not those of the epoch they started in
        expected = np.stack([loader.dataset[key][0] for batch in batches for key in batch])[:, None]
        assert np.array_equal(from_loader.numpy(), expected)
    items = {epoch: [loader.dataset[(epoch, i)][0] for i in range(12)] for epoch in (0, 1)}
    assert not any(np.array_equal(a, b) for a, b in zip(items[0], items[1], strict=True))  # new each epoch
    assert all(np.array_equal(a, b) for a, b in zip(items[0], [loader.dataset[(0, i)][0] for i in range(12)],
                                                     strict=True))  # and reproducible


def test_folder_and_csv_layouts(tmp_path: Path) -> None:
    from PIL import Image

    for label in ("real", "fake"):
        (tmp_path / "set" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "set" / label / f"p{i}_{label}.png")
    samples = load_samples(tmp_path / "set")
    assert sorted((s.label, s.group) for s in samples)[:3] == [(0, "p0"), (0, "p1"), (0, "p2")]
    (tmp_path / "list.csv").write_text("path,label,group\nset/real/p0_real.png,real,a\nset/fake/p0_fake.png,1,a\n")
    assert [(s.label, s.group) for s in load_samples(tmp_path / "list.csv")] == [(0, "a"), (1, "a")]
    (tmp_path / "bad.csv").write_text("path,label\nx.png,maybe\n")
    with pytest.raises(ValueError, match="bad.csv:2: label 'maybe'"):
        load_samples(tmp_path / "bad.csv")


@pytest.mark.slow
def test_train_then_evaluate_reproduces_the_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "--kind", "knee", "--count", "24", "--size", "96", "--seed", "4", "--workers", "1",
                 "--gan-steps", "20", "--gan-sources", "16", "--out", str(tmp_path / "data")]) == 0
    weights = tmp_path / "weights"
    assert main(["train", "--data", str(tmp_path / "data"), "--model", "knee", "--input-size", "64",
                 "--epochs", "2", "--batch-size", "8", "--workers", "0", "--region-weight", "1",
                 "--online-pairs", "4", "--cell-pooling", "top4",
                 "--weights-dir", str(weights),
                 "--run-dir", str(tmp_path / "run")]) == 0
    card = json.loads((weights / "knee.json").read_text())
    assert card["training"]["command"].startswith("dfnode train --data")
    assert card["metrics"]["split"] == "test" and 0 <= card["metrics"]["roc_auc"] <= 1
    assert len(card["training"]["history"]) == 2
    assert card["training"]["spec"]["online_pairs"] == 4
    assert card["cell_pooling"] == "top4"
    for plot in ("knee.roc.png", "knee.confusion.png", "knee.metrics.json"):
        assert (tmp_path / "run" / plot).stat().st_size > 0
    classifier = load_classifier(weights / "knee.json")
    capsys.readouterr()
    assert main(["evaluate", "--weights", str(weights / "knee.json"), "--data", str(tmp_path / "data"),
                 "--workers", "2", "--out", str(tmp_path / "eval")]) == 0  # prepared in loader processes
    assert "ROC AUC" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "knee-test.json").read_text())
    assert report["images"] == card["metrics"]["images"]
    assert report["roc_auc"] == pytest.approx(card["metrics"]["roc_auc"], abs=1e-6)
    assert report["confusion"] == card["metrics"]["confusion"]
    # the node loads what training wrote
    lung = weights / "lung.json"
    lung.write_text((weights / "knee.json").read_text())
    config = node_config(tmp_path / "var", weights)
    node = Node(config)
    assert node.classifiers["knee"].version == classifier.version
    node.db.close()


@pytest.mark.slow
def test_leave_one_family_out_tests_on_groups_the_model_never_saw(tmp_path: Path) -> None:
    assert main(["synth", "--kind", "knee", "--count", "40", "--size", "80", "--seed", "5", "--workers", "1",
                 "--family", "splice", "--family", "copy_move", "--out", str(tmp_path / "data")]) == 0
    assert main(["evaluate", "--leave-out", "splice", "--data", str(tmp_path / "data"), "--model", "knee",
                 "--input-size", "64", "--epochs", "1", "--batch-size", "8", "--workers", "0",
                 "--out", str(tmp_path / "lofo")]) == 0
    card = json.loads((tmp_path / "lofo" / "knee-without-splice.json").read_text())
    assert card["training"]["excluded_families"] == ["splice"]
    report = json.loads((tmp_path / "lofo" / "held-out-splice.json").read_text())
    samples = load_samples(tmp_path / "data")
    seen = split_for_card(samples, card["training"])
    trained_on = {s.group for s in seen["train"] + seen["val"]}
    tested = {s.group for s in seen["test"]}
    expected = [s for s in samples if s.group in tested and (s.label == 0 or s.manipulation == "splice")]
    assert report["images"] == len(expected) and report["manipulated"] >= 1
    assert not tested & trained_on
    assert (tmp_path / "lofo" / "held-out-splice.roc.png").stat().st_size > 0


def test_unknown_cell_pooling_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["train", "--data", str(tmp_path), "--cell-pooling", "max"])
    assert exited.value.code == 2
    assert "cell pooling 'max': use 'mean' or 'top<k>'" in capsys.readouterr().err


def test_augmentation_moves_the_region_mask_with_the_image() -> None:
    """The manipulated region's mask goes wherever flips, rotation and zoom take the image."""
    image = np.full((128, 128), 0.2, dtype=np.float32)
    image[30:60, 70:110] = 0.9
    mask = np.zeros_like(image)
    mask[30:60, 70:110] = 1.0
    for seed in range(16):
        out, moved = augment(np.random.default_rng(seed), image, mask)
        assert out.shape == moved.shape
        inside = moved > 0.5
        assert 0.6 < inside.sum() / (30 * 40) < 1.05
        assert out[inside].mean() > out[~inside].mean() + 0.5
    empty = augment(np.random.default_rng(0), image)[1]
    assert not empty.any()


def test_rotation_is_scipys_but_at_the_edge_of_what_comes_in() -> None:
    image = np.random.default_rng(0).random((120, 90), dtype=np.float32)
    for degrees in (-9.5, 3.2):
        ours, scipys = _rotated(image, degrees), rotate(image, degrees, reshape=False, order=1, mode="constant")
        assert ours.shape == scipys.shape
        assert (np.abs(ours - scipys) > 1e-5).mean() < 0.02


@pytest.mark.slow
def test_training_can_start_from_a_model_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--init-from CARD` starts from that card's weights: with a learning rate of 0 every learned weight
    comes out as it went in, and the new card names the one it started from. A card whose input differs
    (another kind) is refused, naming the difference; so is a held-out-family run from a card's weights."""
    assert main(["synth", "--kind", "knee", "--count", "12", "--size", "80", "--seed", "6", "--workers", "1",
                 "--family", "splice", "--out", str(tmp_path / "data")]) == 0
    common = ["train", "--data", str(tmp_path / "data"), "--model", "knee", "--input-size", "64",
              "--epochs", "1", "--batch-size", "8", "--workers", "0"]
    assert main([*common, "--weights-dir", str(tmp_path / "a"), "--run-dir", str(tmp_path / "run-a")]) == 0
    assert main([*common, "--lr", "0", "--init-from", str(tmp_path / "a" / "knee.json"),
                 "--weights-dir", str(tmp_path / "b"), "--run-dir", str(tmp_path / "run-b")]) == 0
    first, second = (load_classifier(tmp_path / d / "knee.json", backend="torch") for d in ("a", "b"))
    card = json.loads((tmp_path / "b" / "knee.json").read_text())
    assert card["training"]["started_from"]["version"] == first.version
    learned = {k: v for k, v in first.torch_network.state_dict().items()
               if "running_" not in k and "num_batches" not in k}  # batch norm's statistics move in training
    after = second.torch_network.state_dict()
    assert learned and all(torch.equal(v, after[k]) for k, v in learned.items())
    random_start = json.loads((tmp_path / "a" / "knee.json").read_text())["training"].get("started_from")
    assert random_start is None

    lung = tmp_path / "a" / "lung.json"
    other = json.loads((tmp_path / "a" / "knee.json").read_text())
    other["preprocessing"]["kind"] = "ct"
    lung.write_text(json.dumps(other))
    capsys.readouterr()
    assert main([*common, "--init-from", str(lung), "--weights-dir", str(tmp_path / "c"),
                 "--run-dir", str(tmp_path / "run-c")]) == 1
    assert "preprocessing differs in kind ('ct', this run 'xray')" in capsys.readouterr().err
    assert not (tmp_path / "c" / "knee.json").exists()
    # a held-out family is measured on a model that never saw it: no start from weights that may have
    assert main(["evaluate", "--leave-out", "splice", *common[1:], "--init-from", str(tmp_path / "a" / "knee.json"),
                 "--out", str(tmp_path / "lofo")]) == 1
    assert "--leave-out splice trains from random weights" in capsys.readouterr().err
