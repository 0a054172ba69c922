"""Sample studies to try a node with: a real packaged radiograph and a synthetic chest CT series, written
as DICOM files ready for `storescu`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from inference.training.phantoms import lung_ct_slice
from inference.training.sources import package_file

RADIOGRAPH = ("data_store", "RG3_UNCR.dcm")  # pydicom-data: a real computed radiograph of the lower leg


def write_radiograph(folder: Path) -> Path:
    """The packaged real radiograph with fresh UIDs (each run a new study), as `folder/radiograph.dcm`."""
    source = package_file(*RADIOGRAPH)
    if source is None:
        raise FileNotFoundError("pydicom-data's RG3_UNCR.dcm is not installed (pip install pydicom-data)")
    ds = dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "radiograph.dcm"
    ds.save_as(out)
    return out


def write_ct_series(folder: Path, slices: int = 60, size: int = 128, seed: int = 0,
                    body_part: str = "CHEST") -> list[Path]:
    """A synthetic axial chest CT series written as DICOM files (one study, one series)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(seed)
    base = lung_ct_slice(rng, size)
    paths = []
    for i in range(slices):
        hu = base + rng.normal(0, 5, base.shape)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Lung", "PH-LUNG-1", "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "ACC1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.BodyPartExamined, ds.SeriesNumber, ds.InstanceNumber = "CT", body_part, 2, i + 1
        ds.StudyDescription, ds.SeriesDescription = "CT CHEST", "Axial lung"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, -i * 2.0], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.KVP, ds.Manufacturer = 120, "dfnode-sample"
        ds.PixelData = np.clip(hu + 1024, -32768, 32767).astype(np.int16).tobytes()
        path = folder / f"ct{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
