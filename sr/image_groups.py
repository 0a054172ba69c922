"""The per-image parts of a report, encoded as bytes from templates: each image's TID 1501 group, and
each image's reference in the series group.

Both come in two shapes: citing a whole image, or one frame of a multi-frame image. See
`sr.item_template.CheckedTemplates`: the first of each shape is built by highdicom and written by
pydicom as usual, and the template must give the same bytes, or that shape keeps the usual way.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.valuerep import DS

from inference.scoring import ImageResult
from sr.groups import GroupValues, image_group, image_values, measurement_group, source_ref
from sr.item_template import CheckedTemplates, ItemTemplate, Sentinel, encode_items

_SENTINEL_PERCENT = 12.25
_SOURCE_SENTINELS = (
    Sentinel("sop_class", "UI", "2.25.102"),
    Sentinel("sop_instance", "UI", "2.25.103"),
    Sentinel("frame", "IS", 7777),
)
_GROUP_SENTINELS = _SOURCE_SENTINELS + (
    Sentinel("label", "UT", "dfnode template label"),
    Sentinel("tracking_uid", "UI", "2.25.101"),
    Sentinel("percent_text", "DS", _SENTINEL_PERCENT),
    Sentinel("percent_float", "FD", _SENTINEL_PERCENT),
    Sentinel("verdict_code", "SH", "dfnode-code"),
    Sentinel("verdict_meaning", "LO", "dfnode template meaning"),
)
_SENTINEL = {s.key: s.value for s in _GROUP_SENTINELS}

_Image = tuple[ImageResult, Dataset]  # an image's result and its header
_Group = tuple[int, ImageResult, Dataset]  # the same, numbered from 1 in the report


def _cites_frame(image: _Image) -> bool:
    return image[0].frame_number is not None


def _sentinels(all_of: tuple[Sentinel, ...], cites_frame: Any) -> list[Sentinel]:
    return [s for s in all_of if cites_frame or s.key != "frame"]


def _sentinel_source(cites_frame: Any) -> hd.sr.SourceImageForMeasurementGroup:
    return hd.sr.SourceImageForMeasurementGroup(_SENTINEL["sop_class"], _SENTINEL["sop_instance"],
                                                [_SENTINEL["frame"]] if cites_frame else None)


def _source_holes(image: _Image) -> dict[str, Any]:
    result, header = image
    return {"sop_class": str(header.SOPClassUID), "sop_instance": str(header.SOPInstanceUID),
            "frame": result.frame_number}


class ImageGroupWriter:
    """Encodes the per-image parts of one report."""

    def __init__(self, report_uid: str, threshold: float, algorithm: hd.sr.AlgorithmIdentification,
                 encodings: list[str]) -> None:
        self._report_uid = report_uid
        self._threshold = threshold
        self._algorithm = algorithm
        self._encodings = encodings
        self._groups = CheckedTemplates[_Group](
            "per-image SR groups", lambda g: _cites_frame(g[1:]), self._usual_group, self._group_template,
            self._group_holes)
        self._sources = CheckedTemplates[_Image](
            "SR image references", _cites_frame, self._usual_source, self._source_template, _source_holes)

    def group(self, n: int, result: ImageResult, image: Dataset) -> bytes:
        """The n-th (1-based) per-image group (one sequence item), citing `image` (and the result's frame)."""
        return self._groups.encode((n, result, image))

    def source(self, result: ImageResult, image: Dataset) -> bytes:
        """A Source of Measurement item citing `image` (and the result's frame), as in the series group."""
        return self._sources.encode((result, image))

    def _values(self, group: _Group) -> GroupValues:
        return image_values(self._report_uid, group[0], group[1], self._threshold)

    def _usual_group(self, group: _Group) -> bytes:
        _, result, image = group
        made = image_group(self._values(group), self._algorithm, image, result.frame_number)
        return encode_items(list(made), self._encodings)

    def _group_holes(self, group: _Group) -> dict[str, Any]:
        values = self._values(group)
        return {**_source_holes(group[1:]), "label": values.label, "tracking_uid": values.tracking_uid,
                "percent_text": DS(values.percent, auto_format=True), "percent_float": values.percent,
                "verdict_code": values.verdict.value, "verdict_meaning": values.verdict.meaning}

    def _group_template(self, cites_frame: Any) -> ItemTemplate:
        values = GroupValues(_SENTINEL["tracking_uid"], _SENTINEL["label"], _SENTINEL_PERCENT,
                             hd.sr.CodedConcept(_SENTINEL["verdict_code"], "SCT", _SENTINEL["verdict_meaning"]))
        made = measurement_group(values, self._algorithm, [_sentinel_source(cites_frame)])
        return ItemTemplate(made[0], _sentinels(_GROUP_SENTINELS, cites_frame), self._encodings)

    def _usual_source(self, image: _Image) -> bytes:
        return encode_items([source_ref(image[1], image[0].frame_number)], self._encodings)

    def _source_template(self, cites_frame: Any) -> ItemTemplate:
        return ItemTemplate(_sentinel_source(cites_frame), _sentinels(_SOURCE_SENTINELS, cites_frame),
                            self._encodings)
