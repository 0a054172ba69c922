"""Weights and cards: sharded safetensors; a missing, corrupt or mismatched file stops start-up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ModelLoadError
from inference.model import load_classifier, torch_threads_for
from inference.model_card import read_card
from inference.weights import MAX_SHARD_BYTES, weight_files
from node.service import Node, load_models
from tests.conftest import node_config
from tests.models import write_test_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def model_copy(tmp_path: Path, model_dir: Path) -> Path:
    folder = tmp_path / "weights"
    shutil.copytree(model_dir, folder)
    return folder


def test_weights_are_sharded_under_16_mib(model_dir: Path) -> None:
    card = read_card(model_dir / "knee.json")
    files = weight_files(card.weights, model_dir)
    assert len(files) > 1
    assert all(f.stat().st_size < 16 * 1024 * 1024 for f in files)
    assert max(f.stat().st_size for f in files) <= MAX_SHARD_BYTES + 1024 * 1024
    assert card.weights.file.endswith(".safetensors.index.json")


def test_loaded_model_scores_in_unit_range(model_dir: Path) -> None:
    classifier = load_classifier(model_dir / "knee.json")
    scores = classifier.scores([torch.rand(64, 64).numpy() for _ in range(3)])
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    assert classifier.version == read_card(model_dir / "knee.json").weights.sha256[:12]


def test_onnxruntime_backend_scores_as_pytorch_does(model_dir: Path, tmp_path: Path) -> None:
    """The export is made once per weights file and reused; its scores equal eager PyTorch's."""
    images = [torch.rand(64, 64).numpy() for _ in range(11)]  # more than a batch: the batch axis is dynamic
    eager = load_classifier(model_dir / "knee.json", backend="torch")
    fast = load_classifier(model_dir / "knee.json", backend="onnxruntime", cache_dir=tmp_path)
    assert (eager.backend, fast.backend) == ("torch", "onnxruntime")
    assert np.allclose(fast.scores(images), eager.scores(images), atol=1e-5)
    assert fast.network is None  # the PyTorch copy is not kept
    boxes = [(fast.localise(image, (300, 200)), eager.localise(image, (300, 200))) for image in images[:4]]
    assert all(a == b for a, b in boxes) and any(a is not None for a, _ in boxes)
    (export,) = tmp_path.glob("knee-*.onnx")
    written = export.stat().st_mtime_ns
    load_classifier(model_dir / "knee.json", backend="onnxruntime", cache_dir=tmp_path)
    assert export.stat().st_mtime_ns == written
    export.write_bytes(b"damaged")  # a damaged export is made again
    again = load_classifier(model_dir / "knee.json", backend="onnxruntime", cache_dir=tmp_path)
    assert np.allclose(again.scores(images), eager.scores(images), atol=1e-5)
    assert load_classifier(model_dir / "knee.json", backend="auto", cache_dir=tmp_path).backend == "onnxruntime"
    with pytest.raises(ModelLoadError, match="runs on the CPU"):
        load_classifier(model_dir / "knee.json", device="cuda", backend="onnxruntime")


def test_top_cells_pooling_scores_the_hottest_cells(tmp_path: Path) -> None:
    """A card with `cell_pooling: top2` scores an image by the mean of its 2 highest cell logits, on PyTorch
    and on onnxruntime alike (an export of its own); the same weights pooled by the mean score otherwise."""
    mean_card = write_test_model(tmp_path / "mean", "knee", "xray", seed=3, input_size=128)
    top_card = write_test_model(tmp_path / "top", "knee", "xray", seed=3, input_size=128, cell_pooling="top2")
    assert read_card(top_card).weights.sha256 == read_card(mean_card).weights.sha256
    images = [torch.rand(128, 128).numpy() for _ in range(5)]
    top, averaged = (load_classifier(card, backend="torch") for card in (top_card, mean_card))
    cells = np.stack([top.activation_cells(image).reshape(-1) for image in images])  # 4 x 4 cells each
    with torch.inference_mode():
        logits = {c.card.cell_pooling: c.torch_network(c.input_batch(images)).reshape(-1).numpy()
                  for c in (top, averaged)}
    assert np.allclose(logits["top2"], np.sort(cells, axis=1)[:, -2:].mean(axis=1), rtol=1e-4, atol=1e-9)
    assert np.allclose(logits["mean"], cells.mean(axis=1), rtol=1e-4, atol=1e-9)
    assert (logits["top2"] > logits["mean"]).all()
    fast = load_classifier(top_card, backend="onnxruntime", cache_dir=tmp_path / "cache")
    assert np.allclose(fast.scores(images), top.scores(images), rtol=0, atol=1e-7)
    assert [p.name.split("px")[1] for p in (tmp_path / "cache").glob("*.onnx")] == ["-top2-v2.onnx"]


def test_card_with_unknown_cell_pooling_is_refused(model_copy: Path) -> None:
    card = json.loads((model_copy / "knee.json").read_text())
    card["cell_pooling"] = "max"
    (model_copy / "knee.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="invalid model card: cell_pooling"):
        load_classifier(model_copy / "knee.json")


def test_torch_runs_one_thread_where_onnxruntime_runs_every_model(model_dir: Path, tmp_path: Path) -> None:
    """torch then only builds the models' inputs; its idle threads would spin on onnxruntime's cores."""
    eager = load_classifier(model_dir / "knee.json", backend="torch")
    fast = load_classifier(model_dir / "knee.json", backend="onnxruntime", cache_dir=tmp_path)
    assert torch_threads_for([fast, fast], configured=2) == 1
    assert torch_threads_for([fast, eager], configured=3) == 3
    torch.set_num_threads(2)
    load_models(node_config(tmp_path / "torch", model_dir, inference={"backend": "torch"}))
    assert torch.get_num_threads() == 2
    load_models(node_config(tmp_path / "ort", model_dir, inference={"backend": "onnxruntime"}))
    assert torch.get_num_threads() == 1


def test_missing_shard_is_named(model_copy: Path) -> None:
    shard = sorted(model_copy.glob("knee-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ModelLoadError, match=f"{shard.name}: weights file is missing"):
        load_classifier(model_copy / "knee.json")


def test_corrupt_shard_is_named(model_copy: Path) -> None:
    shard = sorted(model_copy.glob("knee-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=f"{shard.name}: SHA-256 does not match"):
        load_classifier(model_copy / "knee.json")


def test_weights_that_do_not_fit_the_card(model_copy: Path) -> None:
    card = json.loads((model_copy / "knee.json").read_text())
    card["in_chans"] = 1
    (model_copy / "knee.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="do not fit efficientnet_b4"):
        load_classifier(model_copy / "knee.json")


def test_missing_or_invalid_card(model_copy: Path) -> None:
    with pytest.raises(ModelLoadError, match="elbow.json: model card is missing"):
        load_classifier(model_copy / "elbow.json")
    (model_copy / "knee.json").write_text('{"name": "knee"}')
    with pytest.raises(ModelLoadError, match="knee.json: invalid model card"):
        load_classifier(model_copy / "knee.json")


def test_weak_models_are_announced(classifiers, caplog: pytest.LogCaptureFixture) -> None:
    from node.service import weak_model_warnings

    warnings = weak_model_warnings(classifiers)  # the test models are untrained: no AUC on their cards
    assert len(warnings) == 2 and all("not reliable" in w for w in warnings)
    strong = classifiers["knee"]
    strong.card.metrics["roc_auc"] = 0.99
    try:
        assert weak_model_warnings({"knee": strong}) == []
    finally:
        del strong.card.metrics["roc_auc"]


def test_node_refuses_to_start_with_a_broken_model(tmp_path: Path, model_copy: Path) -> None:
    sorted(model_copy.glob("lung-*.safetensors"))[0].write_bytes(b"not weights")
    with pytest.raises(ModelLoadError, match="lung-00001-of-00003.safetensors"):
        Node(node_config(tmp_path / "var", model_copy))


def test_serve_exits_with_the_reason(tmp_path: Path, model_copy: Path) -> None:
    import subprocess
    import sys

    import yaml

    (model_copy / "knee.json").unlink()
    config = node_config(tmp_path / "var", model_copy)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    result = subprocess.run([sys.executable, "-m", "node.cli", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "knee.json: model card is missing" in result.stderr


@pytest.mark.parametrize("name", ["knee", "lung"])
def test_shipped_weights_match_their_cards(name: str) -> None:
    card = read_card(REPO / "weights" / f"{name}.json")
    assert card.architecture == "efficientnet_b4"
    assert str(card.metrics.get("split", "")).startswith("test") and "roc_auc" in card.metrics
    assert card.training.get("command", "").startswith("dfnode train")
    classifier = load_classifier(REPO / "weights" / f"{name}.json")
    assert classifier.version == card.weights.sha256[:12]
