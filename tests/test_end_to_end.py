"""A PACS sends X-ray and CT over real associations; the SR comes back and honours the contract."""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest
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
from tests.sr_contract import check_report, image_groups, referenced_images


def test_echo_and_knee_radiograph_round_trip(running_node: Node, receiver: Receiver, tmp_path: Path) -> None:
    assert echo(running_node.port) == 0x0000
    files = [copy_with_new_uids(real_file("RG3_UNCR.dcm"), tmp_path / "in")]
    assert send(files, running_node.port) == [0x0000]
    sr = wait_for(lambda: receiver.reports(), timeout=60)[0]
    check_report(sr, files, tmp_path)
    assert len(image_groups(sr)) == 2
    table = wait_for(lambda: "1 sent" in (t := status_report(running_node.config)) and t, timeout=10)
    row = next(line for line in str(table).splitlines() if "knee-radiograph" in line)
    verdict = sr.SeriesDescription.removeprefix("DEEPFAKE SCREEN: ")
    assert "evaluated" in row and verdict in row and "CR" in row
    threshold = running_node.classifiers["knee"].card.threshold
    assert f" {threshold * 100:.0f}% " in row  # the decision threshold beside the score


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
    assert len(image_groups(sr)) == 61
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
    frames = {f for g in image_groups(enhanced_sr)[:-1] for _, f in referenced_images(g)}
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
    assert len(image_groups(second)) == 5


class CountingWake(threading.Event):
    """The ingest's wake-up call to the evaluator, counted on its way."""

    def __init__(self, evaluator_wake: threading.Event):
        super().__init__()
        self.evaluator_wake, self.count = evaluator_wake, 0

    def set(self) -> None:
        self.count += 1
        self.evaluator_wake.set()


def test_evaluator_is_woken_once_per_waiting_series(running_node: Node, receiver: Receiver, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Receiving wakes the evaluator only when a routed series starts to wait for it; an instance that
    arrives while its series is being evaluated still gets a superseding report."""
    wake = CountingWake(running_node.evaluate_wake)
    running_node.ingest.wake = wake
    mr = [copy_with_new_uids(real_file("MR_small.dcm"), tmp_path / "mr") for _ in range(3)]  # no route
    assert send(mr, running_node.port) == [0x0000] * 3
    assert wake.count == 0
    files = ct_series(tmp_path / "ct", slices=5)
    commit = running_node.evaluator.store.commit
    late: list[list[int | None]] = []

    def commit_after_a_late_slice(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not late:  # the evaluation has read its version: this slice waits for the next one
            late.append(send(files[3:4], running_node.port))
        return commit(*args, **kwargs)

    monkeypatch.setattr(running_node.evaluator.store, "commit", commit_after_a_late_slice)
    assert send(files[:3], running_node.port) == [0x0000] * 3
    assert wake.count == 1
    reports = wait_for(lambda: len(receiver.reports()) == 2 and receiver.reports(), timeout=60)
    assert late == [[0x0000]] and wake.count == 1
    assert [len(image_groups(sr)) for sr in reports] == [4, 5]
    assert send(files[4:], running_node.port) == [0x0000]
    assert wake.count == 2
    last = wait_for(lambda: len(receiver.reports()) == 3 and receiver.reports()[2], timeout=60)
    assert len(image_groups(last)) == 6
