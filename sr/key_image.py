"""The key image: a Secondary Capture for viewers that do not render SR.

The series' most suspicious image, windowed as the model saw it, with the region behind the score
outlined in red and a burned-in banner: "DEEPFAKE SCREEN: SUSPECTED 97%". It is marked derived
(ImageType DERIVED\\SECONDARY, Burned In Annotation YES) and points at its source image.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from inference.localisation import Box
from inference.preprocess import Preprocessing, frames_in_modality_units, to_unit_range
from inference.scoring import Finding, Verdict
from sr.names import names_kept_out_of_warnings
from sr.source_attributes import with_copyable_attributes
from sr.uids import ObjectIdentity

MAX_SIDE = 1024  # the key image is for looking at; larger sources are scaled down
OUTLINE = (255, 40, 40)
KEY_IMAGE_DESCRIPTION = "DEEPFAKE SCREEN KEY IMAGE"


def banner_text(verdict: Verdict, score: float | None, threshold: float | None = None) -> str:
    text = f"DEEPFAKE SCREEN: {verdict.value}"
    if score is None:
        return text
    text = f"{text} {score * 100:.0f}%"
    return f"{text} (threshold {threshold * 100:.0f}%)" if threshold is not None else text


def _wrapped(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, room: float) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= room:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def banner_layout(text: str, width: int, largest: int = 40, readable: int = 10,
                  most_lines: int = 3) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, int, list[str]]:
    """The font, its size and the lines the banner takes on an image `width` pixels wide: the fewest
    lines (up to `most_lines`) at which the words fit at a readable size, at the largest such size (up
    to `largest`, about a 24th of the width); narrower than that, smaller type on as many lines as needed."""
    start = min(largest, max(readable + 2, width // 24))
    for lines_allowed in range(1, most_lines + 1):
        for size in range(start, readable - 1, -1):
            font = ImageFont.load_default(size=size)
            room = width - 4 - size // 2
            lines = _wrapped(text, font, room)
            if len(lines) <= lines_allowed and all(font.getlength(line) <= room for line in lines):
                return font, size, lines
    for size in range(readable - 1, 3, -1):
        font = ImageFont.load_default(size=size)
        room = width - 4 - size // 2
        lines = _wrapped(text, font, room)
        if all(font.getlength(line) <= room for line in lines):
            break
    return font, size, lines


def render(grey: np.ndarray, box: Box | None, banner: str) -> np.ndarray:
    """RGB uint8 pixels: the [0, 1] image (scaled to at most MAX_SIDE), the box, a banner strip on top."""
    scale = min(1.0, MAX_SIDE / max(grey.shape))
    picture = Image.fromarray(np.clip(grey * 255 + 0.5, 0, 255).astype(np.uint8))
    if scale < 1.0:  # scaled while grey: the same pixels as scaling in RGB, a third of the work
        picture = picture.resize((max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale))),
                                 Image.Resampling.LANCZOS)
    picture = picture.convert("RGB")
    width = picture.width
    font, font_size, lines = banner_layout(banner, width)
    line_height = round(font_size * 1.25)
    strip = line_height * len(lines) + font_size
    canvas = Image.new("RGB", (width, picture.height + strip), (0, 0, 0))
    canvas.paste(picture, (0, strip))
    draw = ImageDraw.Draw(canvas)
    for n, line in enumerate(lines):
        draw.text((font_size // 4 + 2, font_size // 2 + n * line_height + line_height // 2), line,
                  fill=(255, 255, 255), font=font, anchor="lm")
    if box is not None:
        thickness = max(2, width // 256)
        draw.rectangle((box.col0 * scale, strip + box.row0 * scale, (box.col1 - 1) * scale,
                        strip + (box.row1 - 1) * scale), outline=OUTLINE, width=thickness)
    return np.asarray(canvas, dtype=np.uint8)


def _display_values(source: Dataset, frame_number: int | None, prep: Preprocessing) -> np.ndarray:
    frames = frames_in_modality_units(source)
    values = frames[(frame_number or 1) - 1]
    return to_unit_range(values, prep, str(source.get("PhotometricInterpretation", "")) == "MONOCHROME1")


_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))


def _direction(cosines: list[float]) -> str:
    """The patient-direction letter of one direction-cosine vector's dominant axis."""
    axis = int(np.argmax(np.abs(cosines)))
    return _AXIS_LETTERS[axis][0 if cosines[axis] > 0 else 1]


def patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's row and column directions (e.g. ("L", "P") for an axial CT), None when unknown."""
    stated = source.get("PatientOrientation")
    if stated and len(stated) == 2 and all(stated):
        return str(stated[0])[:1], str(stated[1])[:1]
    cosines = source.get("ImageOrientationPatient")
    if cosines and len(cosines) == 6:
        values = [float(v) for v in cosines]
        return _direction(values[:3]), _direction(values[3:])
    return None


def build_key_image(source: Dataset, focus: Finding, verdict: Verdict, score: float | None,
                    prep: Preprocessing, identity: ObjectIdentity, threshold: float | None = None) -> hd.sc.SCImage:
    """The Secondary Capture for one evaluated series; `source` is the focus image with its pixels."""
    orientation = patient_orientation(source)
    pixels = render(_display_values(source, focus.frame_number, prep), focus.box,
                    banner_text(verdict, score, threshold))
    with names_kept_out_of_warnings():
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=with_copyable_attributes(source), pixel_array=pixels, photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT", patient_orientation=orientation or ("L", "F"),
            series_instance_uid=identity.series_uid, series_number=identity.series_number,
            sop_instance_uid=identity.sop_instance_uid, instance_number=identity.instance_number,
            manufacturer=identity.manufacturer)
    if orientation is None:
        image.add_new("PatientOrientation", "CS", None)  # Type 2: present and empty (unknown), never guessed
    # Type 2C for paired body parts: the source's own value, empty (unknown) when it has none
    image.Laterality = str(source.get("Laterality") or source.get("ImageLaterality") or "").strip()[:1]
    image.ImageType = ["DERIVED", "SECONDARY"]
    image.BurnedInAnnotation = "YES"
    image.SeriesDescription = KEY_IMAGE_DESCRIPTION
    image.DerivationDescription = "Manipulation screen: source image with the suspicious region outlined"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if focus.frame_number is not None:
        reference.ReferencedFrameNumber = focus.frame_number
    image.SourceImageSequence = [reference]
    return image
