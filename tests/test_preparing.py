"""Preparing in processes (`inference.preparing_in: processes`): the threads' results, a dead worker
costs nothing, the workers stay without torch, a node runs with them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inference.model import Classifier, load_classifier
from inference.preparing import PreparingProcesses
from inference.scoring import SeriesResult, score_files
from node.config import parse_config
from node.service import Node
from tests.conftest import node_config_raw, write_test_model
from tests.helpers import Receiver, copy_with_new_uids, ct_series, real_file, send, wait_for
from tests.sr_contract import image_groups


def _series(folder: Path) -> list[Path]:
    """A CT series with an unreadable file and a colour image among its slices."""
    paths = ct_series(folder, slices=14, size=64)
    broken = folder / "broken.dcm"
    broken.write_bytes(b"not a DICOM file")
    paths.insert(5, broken)
    paths.insert(9, copy_with_new_uids(real_file("SC_rgb.dcm"), folder))
    return paths


def _same(a: SeriesResult, b: SeriesResult) -> None:
    assert [(r.sop_instance_uid, r.reason) for r in a.images] == [(r.sop_instance_uid, r.reason) for r in b.images]
    assert [r.score for r in a.images] == pytest.approx([r.score for r in b.images], abs=1e-6)
    assert a.focus == b.focus and a.verdict is b.verdict


@pytest.fixture
def classifier(tmp_path: Path) -> Classifier:
    return load_classifier(write_test_model(tmp_path / "model", "lung", "ct"), batch_size=4)


def test_processes_give_what_threads_give(tmp_path: Path, classifier: Classifier) -> None:
    paths = _series(tmp_path / "ct")
    processes = PreparingProcesses(2)
    try:
        for stride in (1, 4):
            threads, thread_headers = score_files(classifier, paths, stride, preparing=2)
            elsewhere, headers = score_files(classifier, paths, stride, preparing=processes)
            _same(elsewhere, threads)
            assert [h.SOPInstanceUID for h in headers] == [h.SOPInstanceUID for h in thread_headers]
            assert "PixelData" not in headers[0]
            if stride == 1:
                reasons = " ".join(r.reason or "" for r in elsewhere.images if r.score is None)
                assert "cannot be read" in reasons and "colour image" in reasons
        # the workers import what preparing needs, not torch
        assert processes._executor().submit(eval, "'torch' in __import__('sys').modules").result() is False
    finally:
        processes.close()


class _DiesInAWorker(type(Path())):  # type: ignore[misc]
    """A path that ends the process unpickling it: a preparing process dying at work, as one whose
    decoder crashes on a malformed file does."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return os._exit, (70,)


def test_a_dead_preparing_process_costs_no_result(tmp_path: Path, classifier: Classifier) -> None:
    paths = _series(tmp_path / "ct")
    expected, _ = score_files(classifier, paths)
    processes = PreparingProcesses(2)
    try:
        deadly = [*paths[:6], _DiesInAWorker(paths[6]), *paths[7:]]
        for _ in range(2):  # a death, then another in the pool that replaced the first
            result, headers = score_files(classifier, deadly, preparing=processes)
            _same(result, expected)
            assert len(headers) == len(paths) - 1  # all but the unreadable file
        result, _ = score_files(classifier, paths, preparing=processes)  # a working pool again
        _same(result, expected)
    finally:
        processes.close()


def test_a_node_preparing_in_processes_reports(tmp_path: Path, model_dir: Path, receiver: Receiver,
                                               classifiers) -> None:
    raw = node_config_raw(tmp_path / "var", model_dir, receiver.port)
    raw["inference"] = {"preparing_in": "processes", "preparing_threads": 2}
    node = Node(parse_config(raw, "test-config"), classifiers).start(port=0)
    try:
        assert set(send(ct_series(tmp_path / "ct", slices=12, size=64), node.port)) == {0}
        reports = wait_for(receiver.reports, timeout=90)
        assert isinstance(node.evaluator.scorer.preparing, PreparingProcesses)
    finally:
        node.stop()
    assert len(image_groups(reports[0])) == 13  # 12 slices and the series
    assert node.evaluator.scorer.preparing._pool is None  # stopped with the node
