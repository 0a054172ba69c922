"""A PACS sends X-ray and CT over real associations; the SR comes back and honours the contract."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select

from node.db import Instance, Series
from node.service import Node
from node.status import status_report
from tests.helpers import (
    Receiver,
    copy_with_new_uids,
    ct_series,
    dciodvfy_errors,
    echo,
    real_file,
    send,
    wait_for,
)

SCORE = ("DFN001", "99DFNODE", "Manipulation score")
SUSPECTED = ("DFN002", "99DFNODE", "Manipulation suspected")
YES_NO = {"373066001", "373067005"}


def _groups(sr: Dataset) -> list[Dataset]:
    """The TID 1501 measurement groups of a TID 1500 report."""
    container = next(item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010")
    return [g for g in container.ContentSequence if g.ConceptNameCodeSequence[0].CodeValue == "125007"]


def _item(group: Dataset, concept: tuple[str, str, str]) -> Dataset:
    for item in group.ContentSequence:
        code = item.ConceptNameCodeSequence[0]
        if (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == concept:
            return item
    raise AssertionError(f"{concept} missing from group")


def _referenced(group: Dataset) -> set[tuple[str, int | None]]:
    refs = set()
    for item in group.ContentSequence:
        if item.ValueType == "IMAGE":
            ref = item.ReferencedSOPSequence[0]
            frames = ref.get("ReferencedFrameNumber")
            frame_list = [int(f) for f in (frames if isinstance(frames, list | pydicom.multival.MultiValue)
                                           else [frames])] if frames is not None else [None]
            refs.update((str(ref.ReferencedSOPInstanceUID), f) for f in frame_list)
    return refs


def check_report(sr: Dataset, sources: list[Path], tmp_path: Path) -> None:
    """Every point of DESIGN.md's SR contract, on an SR as the PACS received it."""
    first = pydicom.dcmread(sources[0], stop_before_pixels=True)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert sr.Modality == "SR"
    assert sr.StudyInstanceUID == first.StudyInstanceUID
    assert sr.SeriesInstanceUID != first.SeriesInstanceUID
    assert sr.PatientID == first.PatientID and sr.PatientName == first.PatientName
    assert sr.SeriesDescription.startswith("DEEPFAKE SCREEN: ")
    verdict = sr.SeriesDescription.removeprefix("DEEPFAKE SCREEN: ")
    assert verdict in ("SUSPECTED", "NOT SUSPECTED", "NOT EVALUATED")
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.CompletionFlag in ("PARTIAL", "COMPLETE")
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    observer = {i.ConceptNameCodeSequence[0].CodeValue: i for i in sr.ContentSequence}
    assert observer["121005"].ConceptCodeSequence[0].CodeValue == "121007"  # observer type: device
    groups = _groups(sr)
    assert len(groups) >= 2
    source_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources}
    per_image, series_group = groups[:-1], groups[-1]
    referenced = set()
    for group in groups:
        score = _item(group, SCORE)
        value = float(score.MeasuredValueSequence[0].NumericValue)
        assert 0 <= value <= 100
        assert score.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "%"
        assert _item(group, SUSPECTED).ConceptCodeSequence[0].CodeValue in YES_NO
        algorithm = {i.ConceptNameCodeSequence[0].CodeValue: i.TextValue for i in group.ContentSequence
                     if i.ValueType == "TEXT"}
        assert algorithm["111001"] and len(algorithm["111003"]) == 12  # TID 4019: name, version
    for group in per_image:
        refs = _referenced(group)
        assert len(refs) == 1
        referenced |= refs
    assert {uid for uid, _ in referenced} <= source_uids
    assert _referenced(series_group) == referenced
    series_score = float(_item(series_group, SCORE).MeasuredValueSequence[0].NumericValue)
    image_scores = [float(_item(g, SCORE).MeasuredValueSequence[0].NumericValue) for g in per_image]
    assert abs(series_score - max(image_scores)) < 0.02  # the cards' rule is max
    suspected = _item(series_group, SUSPECTED).ConceptCodeSequence[0].CodeValue == "373066001"
    assert verdict == ("SUSPECTED" if suspected else "NOT SUSPECTED")
    out = tmp_path / f"{sr.SOPInstanceUID}.dcm"
    sr.save_as(out, enforce_file_format=True)
    assert dciodvfy_errors(out) == []


def test_echo_and_knee_radiograph_round_trip(running_node: Node, receiver: Receiver, tmp_path: Path) -> None:
    assert echo(running_node.port) == 0x0000
    files = [copy_with_new_uids(real_file("RG3_UNCR.dcm"), tmp_path / "in")]
    assert send(files, running_node.port) == [0x0000]
    sr = wait_for(lambda: receiver.reports(), timeout=60)[0]
    check_report(sr, files, tmp_path)
    assert len(_groups(sr)) == 2
    table = wait_for(lambda: "1 sent" in (t := status_report(running_node.config)) and t, timeout=10)
    row = next(line for line in str(table).splitlines() if "knee-radiograph" in line)
    verdict = sr.SeriesDescription.removeprefix("DEEPFAKE SCREEN: ")
    assert "evaluated" in row and verdict in row and "CR" in row


def test_compressed_radiograph_is_evaluated(running_node: Node, receiver: Receiver, tmp_path: Path) -> None:
    files = [copy_with_new_uids(real_file("RG3_J2KR.dcm"), tmp_path / "in")]
    assert send(files, running_node.port) == [0x0000]
    sr = wait_for(lambda: receiver.reports(), timeout=60)[0]
    check_report(sr, files, tmp_path)


def test_ct_series_of_60_slices(running_node: Node, receiver: Receiver, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "ct", slices=60)
    assert send(files, running_node.port) == [0x0000] * 60
    sr = wait_for(lambda: receiver.reports(), timeout=120)[0]
    check_report(sr, files, tmp_path)
    assert len(_groups(sr)) == 61
    assert sr.CompletionFlag == "COMPLETE"


def test_real_ct_slices_and_enhanced_ct(running_node: Node, receiver: Receiver, tmp_path: Path) -> None:
    enhanced = copy_with_new_uids(real_file("eCT_Supplemental.dcm"), tmp_path / "in")
    slices = [copy_with_new_uids(real_file(n), tmp_path / "in") for n in ("693_J2KR.dcm", "CT_small.dcm")]
    assert send([enhanced], running_node.port) == [0x0000]
    assert send(slices, running_node.port) == [0x0000, 0x0000]
    reports = wait_for(lambda: len(receiver.reports()) >= 3 and receiver.reports(), timeout=120)
    by_study = {str(sr.StudyInstanceUID): sr for sr in reports}
    enhanced_sr = by_study[str(pydicom.dcmread(enhanced, stop_before_pixels=True).StudyInstanceUID)]
    check_report(enhanced_sr, [enhanced], tmp_path)
    frames = {f for g in _groups(enhanced_sr)[:-1] for _, f in _referenced(g)}
    assert frames == {1, 2}  # each frame of the Enhanced CT is a slice of its own
    for path in slices:
        check_report(by_study[str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)], [path], tmp_path)


def test_unrouted_series_is_acknowledged_recorded_and_not_processed(running_node: Node, receiver: Receiver,
                                                                   tmp_path: Path) -> None:
    chest = copy_with_new_uids(real_file("RG1_UNCR.dcm"), tmp_path / "in")  # CR CHEST: no route
    mr = copy_with_new_uids(real_file("MR_small.dcm"), tmp_path / "in")
    assert send([chest, mr], running_node.port) == [0x0000, 0x0000]
    with running_node.db.session() as s:
        rows = list(s.scalars(select(Series)))
        assert {r.route for r in rows} == {None}
        assert len(list(s.scalars(select(Instance)))) == 2
    for row in rows:
        assert Path(running_node.config.storage.spool_dir / row.study_uid / row.series_uid).is_dir()
    running_node.evaluator.run_once()
    assert receiver.reports() == []


def test_colour_image_is_reported_not_evaluated(running_node: Node, receiver: Receiver, tmp_path: Path) -> None:
    colour = copy_with_new_uids(real_file("SC_rgb.dcm"), tmp_path / "in", Modality="DX", BodyPartExamined="KNEE")
    assert send([colour], running_node.port) == [0x0000]
    sr = wait_for(lambda: receiver.reports(), timeout=60)[0]
    assert sr.SeriesDescription == "DEEPFAKE SCREEN: NOT EVALUATED"
    assert sr.CompletionFlag == "PARTIAL"
    out = tmp_path / "colour-sr.dcm"
    sr.save_as(out, enforce_file_format=True)
    assert dciodvfy_errors(out) == []


def test_late_instance_gives_a_superseding_report(running_node: Node, receiver: Receiver, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "ct", slices=4)
    assert send(files[:3], running_node.port) == [0x0000] * 3
    first = wait_for(lambda: receiver.reports(), timeout=60)[0]
    assert send(files[3:], running_node.port) == [0x0000]
    second = wait_for(lambda: len(receiver.reports()) == 2 and receiver.reports()[1], timeout=60)
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.SeriesInstanceUID == first.SeriesInstanceUID
    predecessor = second.PredecessorDocumentsSequence[0]
    assert predecessor.StudyInstanceUID == first.StudyInstanceUID
    ref = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert len(_groups(second)) == 5
