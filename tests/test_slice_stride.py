"""CT series screened every n-th slice: anatomical order, the neighbours of suspicious slices, the SR."""

from __future__ import annotations

import random
from pathlib import Path

import pydicom
import pytest

from inference.model import load_classifier
from inference.scoring import score_files
from inference.slices import neighbour_positions, sampled_positions, slice_order
from node.config import parse_config
from node.service import Node
from tests.conftest import node_config_raw, write_test_model
from tests.helpers import Receiver, ct_series, send, wait_for
from tests.sr_contract import image_groups


def _headers(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def test_slices_are_ordered_by_position_then_number_then_arrival(tmp_path: Path) -> None:
    paths = ct_series(tmp_path / "ct", slices=8, size=32)
    shuffled = random.Random(1).sample(paths, len(paths))
    headers = _headers(shuffled)
    assert [shuffled[n] for n in slice_order(headers)] == paths[::-1]  # z from -14 mm up to 0
    del headers[5].ImagePositionPatient
    assert [shuffled[n] for n in slice_order(headers)] == paths  # Instance Number 1 to 8
    del headers[3].InstanceNumber
    assert slice_order(headers) == list(range(8))


def test_sampled_and_neighbour_positions() -> None:
    assert sampled_positions(10, 3) == [0, 3, 6, 9]
    assert sampled_positions(11, 3) == [0, 3, 6, 9, 10]  # the last slice is always screened
    assert neighbour_positions([3], 3, 10, {0, 3, 6, 9}) == [1, 2, 4, 5]
    assert neighbour_positions([0, 10], 3, 11, {0, 3, 6, 9, 10}) == [1, 2, 8]


def test_strided_scoring_fills_in_around_the_suspicious_slice(tmp_path: Path) -> None:
    paths = ct_series(tmp_path / "ct", slices=24, size=64)
    every = load_classifier(write_test_model(tmp_path / "all", "lung", "ct"))
    full, _ = score_files(every, paths)
    score = {r.sop_instance_uid: r.score for r in full.images}
    uids = [str(ds.SOPInstanceUID) for ds in _headers(paths[::-1])]  # in slice order: z from -46 mm up
    sampled = sampled_positions(24, 4)
    peak = max(sampled, key=lambda p: score[uids[p]])  # the only sampled slice at the threshold
    threshold = score[uids[peak]]
    assert threshold is not None
    strided_model = load_classifier(write_test_model(tmp_path / "strided", "lung", "ct", threshold=threshold))

    result, headers = score_files(strided_model, random.Random(2).sample(paths, 24), slice_stride=4)

    expected = set(sampled) | set(range(max(0, peak - 3), min(24, peak + 4)))
    assert [r.sop_instance_uid for r in result.evaluated] == [uids[p] for p in sorted(expected)]
    for r in result.evaluated:
        assert r.score == pytest.approx(score[r.sop_instance_uid], abs=1e-4)
    skipped = [r for r in result.images if r.score is None]
    assert {r.sop_instance_uid for r in skipped} == {uids[p] for p in range(24) if p not in expected}
    assert {r.reason for r in skipped} == {"skipped by slice stride 4"}
    assert len(headers) == 24 and result.verdict.value == "SUSPECTED"
    assert result.focus is not None and result.focus.score >= threshold


def test_more_preparing_threads_give_the_same_results_in_the_same_order(tmp_path: Path) -> None:
    paths = ct_series(tmp_path / "ct", slices=30, size=64)
    broken = tmp_path / "ct" / "broken.dcm"
    broken.write_bytes(b"not a DICOM file")
    paths.insert(11, broken)
    classifier = load_classifier(write_test_model(tmp_path / "model", "lung", "ct"), batch_size=4)
    for stride in (1, 4):
        one, one_headers = score_files(classifier, paths, stride, preparing=1)
        many, many_headers = score_files(classifier, paths, stride, preparing=3)
        assert [(r.sop_instance_uid, r.reason) for r in many.images] == \
            [(r.sop_instance_uid, r.reason) for r in one.images]
        assert [r.score for r in many.images] == pytest.approx([r.score for r in one.images], abs=1e-6)
        assert [h.SOPInstanceUID for h in many_headers] == [h.SOPInstanceUID for h in one_headers]
        assert many.focus == one.focus and many.verdict is one.verdict
        assert [r.sop_instance_uid for r in many.images if r.reason and "cannot be read" in r.reason] == ["broken"]


def test_node_with_a_stride_reports_what_it_skipped(tmp_path: Path, model_dir: Path, receiver: Receiver,
                                                      classifiers) -> None:
    raw = node_config_raw(tmp_path / "var", model_dir, receiver.port)
    for route in raw["routes"]:
        route["slice_stride"] = 3
    node = Node(parse_config(raw, "test-config"), classifiers).start(port=0)
    try:
        paths = ct_series(tmp_path / "ct", slices=12, size=64)
        assert set(send(paths, node.port)) == {0}
        reports = wait_for(receiver.reports, timeout=60)
    finally:
        node.stop()
    sr = reports[0]
    groups = image_groups(sr)
    scored = len(groups) - 1  # the per-image groups, then the series group
    assert 5 <= scored < 12  # positions 0, 3, 6, 9, 11 and any neighbours of suspicious ones
    assert sr.CompletionFlag == "PARTIAL"
    assert sr.CompletionFlagDescription == f"{12 - scored}/12 not evaluated: skipped by slice stride 3"
    cited = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
             for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert len(cited) == 12  # every slice stays in the evidence, scored or not


def test_an_unreadable_slice_is_reported_whatever_its_place(tmp_path: Path, classifiers) -> None:
    paths = ct_series(tmp_path / "ct", slices=12, size=32)
    paths[5].write_bytes(b"\0" * 128 + b"DICM" + b"broken")  # position 6 of 12: not among 0, 4, 8, 11
    result, headers = score_files(classifiers["lung"], paths, slice_stride=4)
    broken = [r for r in result.images if r.sop_instance_uid == paths[5].stem]
    assert len(broken) == 1 and broken[0].reason is not None and broken[0].reason.startswith("cannot be read")
    assert len(headers) == 11
    assert sum(r.reason == "skipped by slice stride 4" for r in result.images) == 12 - 1 - len(result.evaluated)
