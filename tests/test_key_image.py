"""The key image beside the SR, and the region both of them show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from inference.model import load_classifier
from inference.scoring import Verdict
from node.service import Node
from sr.key_image import MAX_SIDE, banner_layout, banner_text, render
from tests.conftest import node_config, write_test_model
from tests.helpers import Receiver, copy_with_new_uids, ct_series, real_file, send, wait_for
from tests.sr_contract import check_key_image, check_report, region_box, region_groups


@pytest.fixture(scope="module")
def flagging_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models whose threshold flags everything: every series is suspected and gets a region."""
    folder = tmp_path_factory.mktemp("flagging")
    write_test_model(folder, "knee", "xray", threshold=0.01)
    write_test_model(folder, "lung", "ct", threshold=0.01)
    return folder


def _node(tmp_path: Path, models: Path, receiver: Receiver, **overrides) -> Node:
    classifiers = {name: load_classifier(models / f"{name}.json") for name in ("knee", "lung")}
    return Node(node_config(tmp_path / "var", models, receiver.port, **overrides), classifiers).start(port=0)


def test_suspected_radiograph_gets_a_region_and_an_outlined_key_image(
        tmp_path: Path, flagging_models: Path, receiver: Receiver) -> None:
    node = _node(tmp_path, flagging_models, receiver)
    try:
        files = [copy_with_new_uids(real_file("RG3_UNCR.dcm"), tmp_path / "in")]
        assert send(files, node.port) == [0x0000]
        wait_for(lambda: receiver.reports() and receiver.key_images(), timeout=60)
    finally:
        node.stop()
    sr, image = receiver.reports()[0], receiver.key_images()[0]
    check_report(sr, files, tmp_path)
    assert sr.SeriesDescription == "DEEPFAKE SCREEN: SUSPECTED"
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert len(region_groups(sr)) == 1 and region_box(region_groups(sr)[0])[0] == source.SOPInstanceUID
    check_key_image(image, sr, files)
    assert image.SeriesInstanceUID not in (sr.SeriesInstanceUID, source.SeriesInstanceUID)


def test_ct_key_image_shows_the_most_suspicious_slice(
        tmp_path: Path, flagging_models: Path, receiver: Receiver) -> None:
    node = _node(tmp_path, flagging_models, receiver)
    try:
        files = ct_series(tmp_path / "ct", slices=12)
        assert send(files, node.port) == [0x0000] * 12
        wait_for(lambda: receiver.reports() and receiver.key_images(), timeout=60)
    finally:
        node.stop()
    sr, image = receiver.reports()[0], receiver.key_images()[0]
    check_report(sr, files, tmp_path)
    check_key_image(image, sr, files)
    assert image.PatientOrientation == ["L", "P"]  # from the axial slices' orientation


def test_key_image_can_be_switched_off(tmp_path: Path, model_dir: Path, receiver: Receiver) -> None:
    node = _node(tmp_path, model_dir, receiver, reports={"key_image": False})
    try:
        files = [copy_with_new_uids(real_file("RG3_UNCR.dcm"), tmp_path / "in")]
        assert send(files, node.port) == [0x0000]
        wait_for(lambda: receiver.reports(), timeout=60)
        wait_for(lambda: "1 sent" in _status(node), timeout=10)
    finally:
        node.stop()
    assert receiver.key_images() == []


def _status(node: Node) -> str:
    from node.status import status_report

    return status_report(node.config)


def test_a_large_image_is_scaled_to_the_key_images_side_with_lanczos_in_every_channel() -> None:
    """The picture under the banner is the grey image scaled to MAX_SIDE with Lanczos, the same pixels in
    R, G and B (scaled while grey; scaling the RGB image gives the same bytes, at three times the work)."""
    grey = np.random.default_rng(3).random((2000, 1500), dtype=np.float32)
    pixels = render(grey, None, "DEEPFAKE SCREEN: NOT SUSPECTED 3%")
    size = (round(1500 * MAX_SIDE / 2000), MAX_SIDE)
    as_rgb = Image.fromarray(np.clip(grey * 255 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    expected = np.asarray(as_rgb.resize(size, Image.Resampling.LANCZOS))
    assert pixels.shape[1:] == (size[0], 3) and pixels.shape[0] > MAX_SIDE  # the banner strip on top
    np.testing.assert_array_equal(pixels[-MAX_SIDE:], expected)


@pytest.mark.parametrize("width", [128, 512, 3000])
def test_the_banner_is_whole_on_any_width(width: int) -> None:
    """Every word of the banner is drawn, none runs past the image's right edge."""
    text = banner_text(Verdict.SUSPECTED, 0.97, 0.86)
    assert text == "DEEPFAKE SCREEN: SUSPECTED 97% (threshold 86%)"
    _font, size, lines = banner_layout(text, min(width, MAX_SIDE))
    assert " ".join(lines) == text and size >= 10
    grey = np.zeros((width, width), dtype=np.float32)  # black, so that only the banner's text is white
    pixels = render(grey, None, text)
    strip = pixels[:pixels.shape[0] - min(width, MAX_SIDE)]
    white = np.argwhere(strip.min(axis=2) > 128)
    assert len(white) > 0
    assert white[:, 1].max() < pixels.shape[1] - 2  # nothing touches the right edge: not cut off
    if width >= 512:
        assert len(lines) == 1 and size >= 16
