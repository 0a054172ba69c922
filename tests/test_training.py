"""`dfnode train` and `dfnode evaluate` end to end on a tiny set; grouped splits never leak a source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.model import load_classifier
from inference.training.datasets import Sample, load_samples
from inference.training.splits import grouped_split
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


def test_folder_and_csv_layouts(tmp_path: Path) -> None:
    import numpy as np
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
                 "--weights-dir", str(weights),
                 "--run-dir", str(tmp_path / "run")]) == 0
    card = json.loads((weights / "knee.json").read_text())
    assert card["training"]["command"].startswith("dfnode train --data")
    assert card["metrics"]["split"] == "test" and 0 <= card["metrics"]["roc_auc"] <= 1
    assert len(card["training"]["history"]) == 2
    for plot in ("knee.roc.png", "knee.confusion.png", "knee.metrics.json"):
        assert (tmp_path / "run" / plot).stat().st_size > 0
    classifier = load_classifier(weights / "knee.json")
    capsys.readouterr()
    assert main(["evaluate", "--weights", str(weights / "knee.json"), "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "eval")]) == 0
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
