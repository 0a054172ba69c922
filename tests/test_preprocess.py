"""DICOM pixels to model input, for every kind of input the node accepts."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from inference.preprocess import (
    Preprocessing,
    fit_to_square,
    frames_in_modality_units,
    prepare_dataset,
    to_unit_range,
)
from node.errors import NotEvaluable
from tests.helpers import real_file

XRAY = Preprocessing("xray", 64)
CT = Preprocessing("ct", 64, window_center=-600, window_width=1500)


def test_compressed_and_uncompressed_give_the_same_input() -> None:
    plain = prepare_dataset(pydicom.dcmread(real_file("RG3_UNCR.dcm")), XRAY)[0].pixels
    j2k = prepare_dataset(pydicom.dcmread(real_file("RG3_J2KR.dcm")), XRAY)[0].pixels
    np.testing.assert_allclose(plain, j2k, atol=1e-6)


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "SC_rgb_rle.dcm", "image_dfl.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm",
                                  "SC_rgb_jpeg_dcmtk.dcm"])
def test_compressed_transfer_syntaxes_decode(name: str) -> None:
    try:
        path = real_file(name)
    except FileNotFoundError:
        pytest.skip(f"{name} not shipped in this pydicom version")
    ds = pydicom.dcmread(path)
    if ds.get("SamplesPerPixel", 1) != 1:
        with pytest.raises(NotEvaluable, match="colour"):
            prepare_dataset(ds, XRAY)
        return
    frames = prepare_dataset(ds, XRAY)
    assert frames and frames[0].pixels.shape == (64, 64)


def test_monochrome1_is_inverted() -> None:
    ds = pydicom.dcmread(real_file("RG3_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    inverted = prepare_dataset(ds, XRAY)[0].pixels
    ds.PhotometricInterpretation = "MONOCHROME2"
    plain = prepare_dataset(ds, XRAY)[0].pixels
    content = plain > 0  # inside the letterbox
    np.testing.assert_allclose(inverted[content] + plain[content], 1.0, atol=1e-5)


def test_ct_rescale_and_lung_window() -> None:
    ds = pydicom.dcmread(real_file("CT_small.dcm"))
    hu = frames_in_modality_units(ds)[0]
    raw = ds.pixel_array.astype(np.float32)
    np.testing.assert_allclose(hu, raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    ds.RescaleIntercept = float(ds.RescaleIntercept) - 1000  # everything 1000 HU lower: air
    assert prepare_dataset(ds, CT)[0].pixels.max() < prepare_dataset(pydicom.dcmread(real_file("CT_small.dcm")),
                                                                      CT)[0].pixels.max()


def test_enhanced_ct_gives_one_input_per_frame() -> None:
    ds = pydicom.dcmread(real_file("eCT_Supplemental.dcm"))
    frames = prepare_dataset(ds, CT)
    assert [f.frame_number for f in frames] == [1, 2]
    assert all(f.pixels.shape == (64, 64) for f in frames)


def test_signed_8_and_16_bit_data() -> None:
    ds = pydicom.dcmread(real_file("CT_small.dcm"))
    assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
    eight = pydicom.dcmread(real_file("JPGLosslessP14SV1_1s_1f_8b.dcm"))  # 8-bit unsigned
    assert eight.BitsAllocated == 8
    values = frames_in_modality_units(eight)[0]
    assert values.max() - values.min() > 200  # 8-bit data decoded at full range
    unit = to_unit_range(values, XRAY)
    assert unit.min() == 0.0 and unit.max() == 1.0
    assert prepare_dataset(eight, XRAY)[0].pixels.shape == (64, 64)


@pytest.mark.parametrize(("change", "reason"), [
    (lambda ds: ds.__delattr__("PixelData"), "no pixel data"),
    (lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]), "localizer"),
])
def test_unusable_images_say_why(change, reason: str) -> None:
    ds = pydicom.dcmread(real_file("CT_small.dcm"))
    change(ds)
    with pytest.raises(NotEvaluable, match=reason):
        prepare_dataset(ds, CT)


def test_colour_image_is_not_evaluable() -> None:
    with pytest.raises(NotEvaluable, match="colour"):
        prepare_dataset(pydicom.dcmread(real_file("SC_rgb.dcm")), XRAY)


def test_pixel_data_shorter_than_rows_times_columns_is_not_evaluable() -> None:
    ds = pydicom.dcmread(real_file("CT_small.dcm"))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(NotEvaluable, match="cannot be decoded"):
        prepare_dataset(ds, CT)


def test_resize_keeps_the_aspect_ratio() -> None:
    image = np.ones((100, 50), dtype=np.float32)
    out = fit_to_square(image, 64)
    columns = np.nonzero(out.sum(axis=0))[0]
    assert out.shape == (64, 64)
    assert len(columns) == 32 and out[:, columns].min() > 0.99


@pytest.mark.parametrize(("slope", "intercept", "refused"), [(1e36, 0, True), ("1e39", 0, True), (1, "-1e39", True),
                                                             (1e20, 0, False), (1, -1024, False)])
def test_rescale_that_overflows_is_refused(slope, intercept, refused: bool) -> None:
    """Integer pixels through a finite rescale skip the pixel-by-pixel check; anything else gets it."""
    ds = pydicom.dcmread(real_file("CT_small.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if refused:
        with pytest.raises(NotEvaluable, match="not finite"):
            frames_in_modality_units(ds)
    else:
        assert np.isfinite(frames_in_modality_units(ds)[0]).all()
