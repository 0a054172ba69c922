"""Reading a screening report back: its scores per image and its content as indented text lines."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

SCORE_CODE = "DFN001"
SUSPECTED_CODE = "DFN002"
_GROUP, _CONTAINER = "125007", "126010"  # Measurement Group, Imaging Measurements
_DATES = {"DATETIME": "DateTime", "DATE": "Date", "TIME": "Time"}


@dataclass(frozen=True)
class GroupScore:
    """One measurement group: its label, the images it cites, the score (%) and the verdict."""

    label: str
    images: list[tuple[str, int | None]]  # (SOP Instance UID, frame)
    score_percent: float | None
    suspected: bool | None
    region: list[float] | None  # closed polyline (column, row pairs) of a region group


def _concept(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].CodeMeaning) if seq else ""


def _code_value(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].CodeValue) if seq else ""


def _images(item: Dataset) -> list[tuple[str, int | None]]:
    refs = []
    for ref in item.get("ReferencedSOPSequence", []):
        frames = ref.get("ReferencedFrameNumber")
        if isinstance(frames, MultiValue | list):
            frames = frames[0] if frames else None
        refs.append((str(ref.ReferencedSOPInstanceUID), int(frames) if frames is not None else None))
    return refs


def group_scores(sr: Dataset) -> list[GroupScore]:
    """Every measurement group of the report, in document order."""
    container = next((i for i in sr.get("ContentSequence", []) if _code_value(i) == _CONTAINER), None)
    groups = []
    for group in (container.get("ContentSequence", []) if container is not None else []):
        if _code_value(group) != _GROUP:
            continue
        label, images, score, suspected, region = "", [], None, None, None
        for item in group.get("ContentSequence", []):
            kind, code = item.get("ValueType"), _code_value(item)
            if kind == "TEXT" and _concept(item) == "Tracking Identifier":
                label = str(item.TextValue)
            elif kind == "IMAGE":
                images += _images(item)
            elif kind == "NUM" and code == SCORE_CODE:
                score = float(item.MeasuredValueSequence[0].NumericValue)
            elif kind == "CODE" and code == SUSPECTED_CODE:
                suspected = str(item.ConceptCodeSequence[0].CodeValue) == "373066001"
            elif kind == "SCOORD":
                region = [float(v) for v in item.GraphicData]
                for child in item.get("ContentSequence", []):
                    images += _images(child)
        groups.append(GroupScore(label, images, score, suspected, region))
    return groups


def _value(item: Dataset) -> str:
    kind = item.get("ValueType", "")
    if kind == "TEXT":
        return str(item.TextValue)
    if kind == "CODE":
        return str(item.ConceptCodeSequence[0].CodeMeaning)
    if kind == "NUM":
        measured = item.get("MeasuredValueSequence")
        if not measured:
            return "(no value)"
        unit = measured[0].MeasurementUnitsCodeSequence[0].CodeValue
        return f"{measured[0].NumericValue} {unit}"
    if kind == "UIDREF":
        return str(item.UID)
    if kind == "IMAGE":
        return ", ".join(f"image {uid}" + (f" frame {frame}" if frame else "") for uid, frame in _images(item))
    if kind == "SCOORD":
        return f"{item.GraphicType} {[round(float(v), 1) for v in item.GraphicData]}"
    if kind in _DATES:
        return str(item.get(_DATES[kind], ""))
    return ""


def content_lines(sr: Dataset, max_lines: int = 400) -> list[tuple[int, str]]:
    """(depth, text) for each content item, depth first, at most `max_lines` (then a line saying how many
    more there are)."""
    lines: list[tuple[int, str]] = []
    skipped = 0

    def walk(items: list[Dataset], depth: int) -> None:
        nonlocal skipped
        for item in items:
            if len(lines) >= max_lines:
                skipped += 1
            else:
                value = _value(item)
                lines.append((depth, f"{_concept(item)}: {value}" if value else _concept(item)))
            walk(list(item.get("ContentSequence", [])), depth + 1)

    lines.append((0, _concept(sr)))
    walk(list(sr.get("ContentSequence", [])), 1)
    if skipped:
        lines.append((0, f"... {skipped} more content items"))
    return lines
