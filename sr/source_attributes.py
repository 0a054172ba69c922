"""The patient and study attributes an SR and a key image copy from their source, made safe to copy.

Real data lacks Type 2 attributes (deleted, or a header damaged on the way) and carries values a
strict builder refuses (a Patient's Sex of "MALE"). highdicom reads the SR's evidence by attribute,
so an absent Patient's Name would fail the whole report: the builders get a copy of the source in
which each of these is present, empty when the source has none or an unusable one.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

# (keyword, VR): what highdicom copies from the source into the SR's and the key image's patient
# and general study modules (all Type 2 there)
COPIED_FROM_SOURCE = (
    ("PatientName", "PN"), ("PatientID", "LO"), ("PatientBirthDate", "DA"), ("PatientSex", "CS"),
    ("AccessionNumber", "SH"), ("StudyID", "SH"), ("StudyDate", "DA"), ("StudyTime", "TM"),
    ("ReferringPhysicianName", "PN"),
)
_PATIENT_SEXES = {"M", "F", "O"}


def _usable(source: Dataset, keyword: str) -> bool:
    try:
        value = source.get(keyword)
        str(value)  # a value that cannot be decoded raises here
    except Exception:
        return False
    if keyword == "PatientSex":
        return value in (None, "") or str(value).strip().upper() in _PATIENT_SEXES
    return True


def with_copyable_attributes(source: Dataset) -> Dataset:
    """A copy of `source` (sharing its element values) in which every attribute of
    `COPIED_FROM_SOURCE` is present: its own value when usable, else empty."""
    copied = Dataset()
    copied.update(source)
    for attr in ("file_meta", "preamble"):
        if hasattr(source, attr):
            setattr(copied, attr, getattr(source, attr))
    copied.set_original_encoding(source.original_encoding[0], source.original_encoding[1],
                                 source.original_character_set)
    for keyword, vr in COPIED_FROM_SOURCE:
        if keyword not in source or not _usable(source, keyword):
            if keyword in copied:
                del copied[keyword]
            copied.add_new(keyword, vr, None)
        elif keyword == "PatientSex" and source.PatientSex:
            copied.PatientSex = str(source.PatientSex).strip().upper()
    return copied
