"""UIDs of the objects the node writes, derived from the source series and the evaluation version,
so that an object re-made after a crash has the same UID and the PACS sees a duplicate."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import generate_uid

SERIES_NUMBERS = {"sr": 9901, "key": 9902}


def derived_uids(source_series_uid: str, version: int, kind: str) -> tuple[str, str]:
    """(series UID, SOP Instance UID) of the `kind` object ("sr", "key") for a series and version."""
    series = generate_uid(entropy_srcs=[source_series_uid, f"dfnode-{kind}-series"])
    instance = generate_uid(entropy_srcs=[source_series_uid, str(version), f"dfnode-{kind}"])
    return series, instance


@dataclass(frozen=True)
class ObjectIdentity:
    """Where one written object goes: its series and instance UIDs and numbers."""

    series_uid: str
    sop_instance_uid: str
    instance_number: int
    series_number: int
    manufacturer: str = "dfnode"

    @classmethod
    def derived(cls, source_series_uid: str, version: int, kind: str) -> ObjectIdentity:
        series, instance = derived_uids(source_series_uid, version, kind)
        return cls(series, instance, version, SERIES_NUMBERS[kind])
