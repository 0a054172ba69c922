"""DICOM pixels to model input, for every kind of input the node accepts."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch

from core.errors import NotEvaluable
from inference import letterbox
from inference.letterbox import (
    clipped_box_means,
    compiled_box_means_built,
    fit_to_square,
    letterbox_geometry,
    numpy_clipped_box_means,
    reduced,
    reduction_factor,
)
from inference.model import binomial_blur, noise_residual
from inference.pixels import keep_header_only, native_frames, read_image, stored_frames
from inference.preprocess import (
    Preprocessing,
    frames_in_modality_units,
    percentiles,
    prepare_dataset,
    prepare_values,
    to_unit_range,
    window_bounds,
)
from tests.helpers import copy_with_new_uids, real_file

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


NATIVE_FILES = [
    "RG1_UNCR.dcm", "RG3_UNCR.dcm", "CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "eCT_Supplemental.dcm",
]


@pytest.mark.parametrize("name", NATIVE_FILES)
def test_uncompressed_pixels_are_read_as_pydicom_decodes_them(name: str) -> None:
    ds = pydicom.dcmread(real_file(name))
    native = native_frames(ds)
    assert native is not None
    np.testing.assert_array_equal(native, ds.pixel_array.reshape(native.shape))


def test_set_bits_above_bits_stored_are_masked_as_pydicom_does() -> None:
    ds = pydicom.dcmread(real_file("emri_small.dcm"))  # 12 bits stored in 16, unsigned
    assert (ds.BitsStored, ds.BitsAllocated, ds.PixelRepresentation) == (12, 16, 0)
    clean = ds.pixel_array.copy()
    dirty = np.frombuffer(ds.PixelData, dtype="<u2").copy()
    dirty[::7] |= 0x8000  # an overlay or junk in the unused high bit
    ds.PixelData = dirty.tobytes()
    assert native_frames(ds) is None
    np.testing.assert_array_equal(stored_frames(ds).reshape(clean.shape), clean)


def test_signed_values_outside_bits_stored_are_sign_extended_as_pydicom_does() -> None:
    ds = pydicom.dcmread(real_file("CT_small.dcm"))
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = (np.clip(ds.pixel_array, -2048, 2047).astype("<i2") | np.int16(0x7000)).tobytes()
    assert native_frames(ds) is None
    assert stored_frames(ds).max() < 2048 and stored_frames(ds).min() >= -2048


@pytest.mark.parametrize(("name", "prep", "slope", "intercept"), [
    ("RG1_UNCR.dcm", Preprocessing("xray", 160), None, None),
    ("RG3_UNCR.dcm", Preprocessing("xray", 160), 0.7, -33.3),
    ("CT_small.dcm", CT, None, None),
    ("CT_small.dcm", Preprocessing("ct", 32, window_center=40, window_width=80), 0.37, -1024),
    ("eCT_Supplemental.dcm", Preprocessing("ct", 160), None, None),
    ("emri_small.dcm", XRAY, None, None),
])
def test_stored_values_route_gives_the_modality_values_route_within_one_stored_step(
        name: str, prep: Preprocessing, slope: float | None, intercept: float | None) -> None:
    """Integer pixels are windowed on the stored values after box averaging; that must give the input
    of windowing the full-size modality values (to within one stored value's step)."""
    ds = pydicom.dcmread(real_file(name))
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    monochrome1 = ds.PhotometricInterpretation == "MONOCHROME1"
    fast = [frame.pixels for frame in prepare_dataset(ds, prep)]
    full = [prepare_values(values, prep, monochrome1) for values in frames_in_modality_units(ds)]
    _, width = window_bounds(frames_in_modality_units(ds)[0], prep)
    step = (slope or float(ds.get("RescaleSlope", 1.0))) / width  # one stored value, in [0, 1] units
    assert len(fast) == len(full)
    for a, b in zip(fast, full, strict=True):
        np.testing.assert_allclose(a, b, atol=step + 1e-5)


def test_box_averaging_before_the_resize_stays_close_to_filtering_the_whole_image() -> None:
    """A large radiograph is box-averaged before the antialiasing resize; the input it gives stays within
    a small fraction of a grey level of resizing the whole image (what PyTorch's antialiasing filter does)."""
    ds = pydicom.dcmread(real_file("RG1_UNCR.dcm"))
    image = to_unit_range(frames_in_modality_units(ds)[0], XRAY)
    size = 160
    assert reduction_factor(image.shape, size) == 6
    scale, top, left = letterbox_geometry(image.shape, size)
    nh, nw = round(image.shape[0] * scale), round(image.shape[1] * scale)
    whole = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], size=(nh, nw), mode="bilinear",
                                            antialias=True, align_corners=False)[0, 0].numpy()
    ours = fit_to_square(image, size)[top:top + nh, left:left + nw]
    assert np.abs(ours - whole).mean() < 2e-3
    assert np.abs(ours - whole).max() < 0.05


@pytest.mark.parametrize(("dtype", "low", "high"), [
    (np.uint8, 10, 240),  # row sums in 16 bits
    (np.uint16, 100, 4000),  # a 12-bit window: 16 bits
    (np.uint16, 1776, 23586),  # RG1_UNCR's window: 32 bits
    (np.int16, -1200, 300),  # signed CT values
    (np.uint16, 0, 65535),  # nothing clipped, widest values
])
@pytest.mark.parametrize("factor", [1, 2, 6, 7])
def test_integer_box_means_equal_averaging_the_clipped_image(dtype, low: int, high: int, factor: int) -> None:
    """The integer box sums give what Pillow's averaging of the clipped image gives, edge boxes included
    (203 x 157 leaves short boxes at the bottom and right for every factor but 1)."""
    info = np.iinfo(dtype)
    image = np.random.default_rng(factor).integers(info.min, info.max, size=(203, 157), endpoint=True).astype(dtype)
    ours = clipped_box_means(image, factor, low, high)
    pillow = reduced(np.clip(image, low, high).astype(np.float32), factor)
    assert ours.shape == pillow.shape == (-(-203 // factor), -(-157 // factor))
    np.testing.assert_allclose(ours, pillow, rtol=1e-6, atol=1e-3)


def test_the_install_compiled_the_one_pass_box_means() -> None:
    """`make test` builds `inference._clipped_box` (a C compiler is part of the developer's machine); a node
    installed without one falls back to numpy, which the tests below compare it with."""
    assert compiled_box_means_built()


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
@pytest.mark.parametrize(("rows", "cols"), [(203, 157), (1, 40), (40, 1), (3, 3), (64, 64), (257, 1031)])
@pytest.mark.parametrize("factor", [2, 3, 4, 5, 7, 16, 300])
def test_compiled_box_means_are_numpys_bit_for_bit(dtype, rows: int, cols: int, factor: int) -> None:
    """Every pixel type, images smaller than a box and with short edge boxes, windows from one value to the
    type's whole range: the compiled route gives exactly the numpy route's float32 means."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(rows * cols + factor)
    image = rng.integers(info.min, info.max, size=(rows, cols), endpoint=True).astype(dtype)
    middle = (int(info.min) + int(info.max)) // 2
    for low, high in [(info.min, info.max), (middle - 20, middle + 37), (middle, middle), (info.min, info.min + 1)]:
        compiled = clipped_box_means(image, factor, int(low), int(high))
        assert compiled.dtype == np.float32
        np.testing.assert_array_equal(compiled, numpy_clipped_box_means(image, factor, int(low), int(high)))


def test_box_means_of_a_strided_view_or_other_types_take_the_numpy_route() -> None:
    """What the compiled route does not take (a non-contiguous view, 32-bit pixels, a factor beyond its
    32-bit row sums) gives the same result through numpy."""
    image = np.random.default_rng(5).integers(0, 4000, size=(120, 90)).astype(np.uint16)
    view = image[:, ::2]
    np.testing.assert_array_equal(clipped_box_means(view, 3, 100, 3000),
                                  numpy_clipped_box_means(np.ascontiguousarray(view), 3, 100, 3000))
    wide = image.astype(np.int32) - 2000
    np.testing.assert_allclose(clipped_box_means(wide, 4, -70000, 1500),
                               reduced(np.clip(wide, -70000, 1500).astype(np.float32), 4), rtol=1e-6)
    line = np.full((1, 40000), 65535, np.uint16)
    np.testing.assert_array_equal(clipped_box_means(line, 40000, 0, 65535), [[65535.0]])


@pytest.mark.skipif(not compiled_box_means_built(), reason="inference._clipped_box not built")
def test_the_compiled_box_means_refuse_a_short_buffer_or_wrong_output() -> None:
    """Wrong sizes are a ValueError naming the problem, never a read or write past a buffer."""
    compiled = letterbox._clipped_box
    assert compiled is not None
    image = np.zeros((10, 10), np.uint16)
    with pytest.raises(ValueError, match="shorter"):
        compiled.clipped_box_means(image, 11, 10, "H", 2, 0, 10, np.empty((6, 5), np.float32))
    with pytest.raises(ValueError, match="shorter"):  # rows x cols beyond any size: no overflow
        compiled.clipped_box_means(image, 2**62, 2**62, "H", 2, 0, 10, np.empty((5, 5), np.float32))
    with pytest.raises(ValueError, match="output"):
        compiled.clipped_box_means(image, 10, 10, "H", 2, 0, 10, np.empty((5, 4), np.float32))
    with pytest.raises(ValueError, match="type code"):
        compiled.clipped_box_means(image, 10, 10, "I", 2, 0, 10, np.empty((5, 5), np.float32))
    with pytest.raises(ValueError, match="factor"):
        compiled.clipped_box_means(image, 10, 10, "H", 0, 0, 10, np.empty((5, 5), np.float32))
    with pytest.raises(TypeError):
        compiled.clipped_box_means(image, 10, 10, "H", 2, 0, 10, b"read-only")


def test_pixels_mapped_from_the_file_are_pydicoms(tmp_path) -> None:
    """`read_image` leaves a radiograph's pixel data in the file and maps it; same values, and the header
    kept for the report holds nothing that would read the file again."""
    path = copy_with_new_uids(real_file("RG1_UNCR.dcm"), tmp_path)
    ds = read_image(path)
    assert ds.get_item("PixelData", keep_deferred=True).value is None  # not read with the header
    native = native_frames(ds)
    assert native is not None
    np.testing.assert_array_equal(native[0], pydicom.dcmread(path).pixel_array)
    keep_header_only(ds)
    assert "PixelData" not in ds and ds.SOPInstanceUID


def test_a_file_removed_before_its_pixels_are_read_is_not_evaluable(tmp_path) -> None:
    path = copy_with_new_uids(real_file("RG1_UNCR.dcm"), tmp_path)
    ds = read_image(path)
    path.unlink()
    with pytest.raises(NotEvaluable, match="cannot be decoded"):
        prepare_dataset(ds, XRAY)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_percentiles_are_numpys(dtype) -> None:
    rng = np.random.default_rng(7)
    for size in (1, 2, 3, 17, 1000, 262_144):
        top = np.iinfo(dtype).max if np.dtype(dtype).kind == "u" else 4096
        values = rng.integers(0, top, size=size, endpoint=True).astype(dtype)
        qs = (0.0, 0.5, 37.3, 99.5, 100.0)
        np.testing.assert_allclose(percentiles(values, qs), np.percentile(values, qs), rtol=0, atol=1e-9)


@pytest.mark.parametrize("shape", [(3, 1, 64, 48), (1, 1, 7, 5)])
def test_binomial_blur_is_the_5x5_binomial_kernel_with_reflected_edges(shape) -> None:
    """The noise residual's blur (shifted sums) gives what convolving with the 5 x 5 binomial kernel gives."""
    batch = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = (torch.outer(taps, taps) / 256.0)[None, None]
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(batch, (2, 2, 2, 2), mode="reflect"), kernel)
    torch.testing.assert_close(binomial_blur(batch), expected, rtol=0, atol=1e-6)
    residual = noise_residual(batch)
    difference = batch - expected
    level = difference.abs().mean(dim=(2, 3), keepdim=True) * 1.2533 + 1e-4
    torch.testing.assert_close(residual, (difference / level).clamp(-5.0, 5.0) / 2.0, rtol=0, atol=1e-5)
