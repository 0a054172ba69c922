"""The spooled file's Part 10 header: the same bytes pydicom writes for the same File Meta."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom import ALL_TRANSFER_SYNTAXES
from pynetdicom.dsutils import create_file_meta

from scp.file_meta import PREAMBLE, part10_header
from scp.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION


def pydicoms_header(sop_class: str, sop_instance: str, syntax: str, sending_ae: str = "PACS") -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    meta = create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax)
    meta.ImplementationClassUID, meta.ImplementationVersionName = IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
    meta.SendingApplicationEntityTitle = sending_ae
    write_file_meta_info(out, meta, enforce_standard=True)
    return PREAMBLE + out.getvalue()


@pytest.mark.parametrize("syntax", ALL_TRANSFER_SYNTAXES)
def test_header_equals_pydicoms_for_every_transfer_syntax(syntax: str) -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    assert part10_header(ct, "1.2.3.4", syntax, "PACS") == pydicoms_header(ct, "1.2.3.4", syntax)


@pytest.mark.parametrize("length", range(1, 65))
def test_header_equals_pydicoms_for_uids_of_every_length(length: int) -> None:
    uid = ("1.2." + "3" * 60)[:length]
    uid = uid[:-1] + "5" if uid.endswith(".") else uid  # a valid UID of exactly `length` characters
    assert len(uid) == length
    syntax = "1.2.840.10008.1.2.1"
    header = part10_header(uid, uid, syntax, "PACS")
    assert header == pydicoms_header(uid, uid, syntax)
    read = dcmread(DicomBytesIO(header + b"\x08\x00\x18\x00UI\x02\x001\x00"))
    assert read.file_meta.MediaStorageSOPInstanceUID == uid and read.SOPInstanceUID == "1"


@pytest.mark.parametrize("calling_ae", ["", "A", "PACS", "MODALITY_CT_0001"])
def test_header_names_the_sending_ae_as_pydicom_does(calling_ae: str) -> None:
    ct, syntax = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2"
    header = part10_header(ct, "1.2.3.4", syntax, calling_ae)
    assert header == pydicoms_header(ct, "1.2.3.4", syntax, calling_ae)
    read = dcmread(DicomBytesIO(header + b"\x08\x00\x18\x00\x02\x00\x00\x001\x00"))
    assert read.file_meta.SendingApplicationEntityTitle == calling_ae
