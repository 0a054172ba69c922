"""Routing rules: the first route whose match fits a series takes it.

BodyPartExamined is often blank, so keywords in StudyDescription, SeriesDescription and
ProtocolName stand in for it; a body part is "unknown" when it is blank and no description
names any body part at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from node.config import Route

# Words that name a body part (DICOM defined terms and their usual spellings in descriptions).
_BODY_PART_WORDS = {
    "head", "brain", "skull", "neck", "chest", "thorax", "lung", "lungs", "thx", "abdomen", "abd", "pelvis",
    "spine", "cspine", "lspine", "tspine", "shoulder", "arm", "elbow", "forearm", "wrist", "hand", "finger",
    "hip", "femur", "thigh", "knee", "leg", "tibia", "ankle", "foot", "toe", "breast", "heart", "cardiac",
    "liver", "kidney", "pancreas", "sinus", "face", "extremity", "extremities", "cervical", "lumbar",
}


@dataclass(frozen=True)
class SeriesTags:
    """What routing looks at, taken from the first instance of a series."""

    modality: str
    body_part: str
    descriptions: str  # study + series description + protocol name, lower case
    sop_class_uid: str
    calling_ae: str

    @classmethod
    def from_dataset(cls, ds: Dataset, calling_ae: str) -> SeriesTags:
        words = " ".join(str(ds.get(k, "") or "") for k in ("StudyDescription", "SeriesDescription", "ProtocolName"))
        return cls(str(ds.get("Modality", "") or "").upper(), str(ds.get("BodyPartExamined", "") or "").upper().strip(),
                   words.lower(), str(ds.get("SOPClassUID", "")), calling_ae.strip())

    def words(self) -> set[str]:
        return set(re.findall(r"[a-z]+", self.descriptions))


def _body_part_matches(route: Route, tags: SeriesTags) -> bool:
    m = route.match
    if not m.body_parts and not m.description_keywords and not m.include_unknown_body_part:
        return True
    if tags.body_part:
        return tags.body_part in m.body_parts
    words = tags.words()
    if any(k in words or (" " in k and k in tags.descriptions) for k in m.description_keywords):
        return True
    return m.include_unknown_body_part and not (words & _BODY_PART_WORDS)


def route_matches(route: Route, tags: SeriesTags) -> bool:
    m = route.match
    if m.modalities and tags.modality not in m.modalities:
        return False
    if m.sop_classes and tags.sop_class_uid not in m.sop_classes:
        return False
    if m.calling_ae_titles and tags.calling_ae not in m.calling_ae_titles:
        return False
    return _body_part_matches(route, tags)


def route_for(routes: list[Route], tags: SeriesTags) -> Route | None:
    """The first matching route, or None: the series is recorded but not processed."""
    return next((r for r in routes if route_matches(r, tags)), None)
