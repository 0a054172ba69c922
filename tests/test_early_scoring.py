"""A series scored while it waits to be stable: what is scored early joins what arrives after, the
console's queue and the metrics show how much is scored, and a copy sent again is scored again."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from inference.scoring import score_files, score_paths
from node.config import parse_config
from node.db import AuditEvent, Series
from node.early_scoring import EarlyScores, SeriesFile
from node.service import Node
from node.users import add_user
from tests.conftest import node_config_raw
from tests.console import ADMIN, PASSWORD, client, close_clients, sign_in
from tests.helpers import Receiver, ct_series, send, wait_for
from tests.sr_contract import SCORE, image_groups, item, referenced_images


def _early_node(tmp_path: Path, model_dir: Path, receiver: Receiver, classifiers, stable: float,
                console: bool = False) -> Node:
    raw = node_config_raw(tmp_path / "var", model_dir, receiver.port, console={"enabled": console, "port": 0})
    for route in raw["routes"]:
        route["series_stable_seconds"], route["early_scoring_seconds"] = stable, 0.2
    node = Node(parse_config(raw, "test-config"), classifiers).start(port=0, console_port=0 if console else None)
    if console:
        add_user(node.db, ADMIN, PASSWORD, "admin")  # with no admin, /login leads to /setup
    return node


def _scores_in(sr: pydicom.Dataset) -> dict[str, float]:
    """Each image group's score (%) by the SOP Instance UID it references."""
    scores = {}
    for group in image_groups(sr)[:-1]:
        (uid, _frame), = referenced_images(group)
        scores[uid] = float(item(group, SCORE).MeasuredValueSequence[0].NumericValue)
    return scores


def _series_id(node: Node, paths: list[Path]) -> int:
    series_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    with node.db.session() as s:
        series_id = s.scalar(select(Series.id).where(Series.series_uid == series_uid))
    assert series_id is not None
    return series_id


def _evaluating_detail(node: Node) -> str:
    with node.db.session() as s:
        details = list(s.scalars(select(AuditEvent.detail).where(AuditEvent.event == "series.evaluating")))
    assert len(details) == 1
    return details[0]


def test_what_is_scored_while_waiting_joins_what_arrives_after(tmp_path: Path, model_dir: Path,
                                                              receiver: Receiver, classifiers) -> None:
    paths = ct_series(tmp_path / "ct", slices=14, size=64)
    whole, _ = score_files(classifiers["lung"], paths)
    node = _early_node(tmp_path, model_dir, receiver, classifiers, stable=4.0, console=True)
    try:
        assert set(send(paths[:9], node.port)) == {0}
        series_id = _series_id(node, paths)
        wait_for(lambda: node.evaluator.early.scored_count(series_id) == 9, timeout=30, interval=0.02)
        queue = sign_in(node, ADMIN).get("/queue").text
        metrics = client(node).get("/metrics").text
        assert not receiver.reports()  # scored, not yet reported: the series is not stable
        assert re.search(rf'href="/series/{series_id}">.*?<td>9</td><td class="scored">9</td>', queue)
        assert 'dfnode_images_scored_early_total{model="lung"} 9.0' in metrics
        assert set(send(paths[9:], node.port)) == {0}
        sr = wait_for(receiver.reports, timeout=60)[0]  # type: ignore[index]
        detail = _evaluating_detail(node)
    finally:
        close_clients()
        node.stop()
    assert detail.startswith("version 14: 14 file(s), model lung, ")
    assert int(detail.split(", ")[-1].split()[0]) >= 9  # the first nine at least, scored while it waited
    scores = _scores_in(sr)
    assert list(scores) == [r.sop_instance_uid for r in whole.images]  # the order of arrival
    assert list(scores.values()) == pytest.approx([100 * (r.score or 0) for r in whole.images], abs=0.01)


def test_a_copy_sent_again_while_waiting_is_scored_again(tmp_path: Path, model_dir: Path, receiver: Receiver,
                                                         classifiers) -> None:
    paths = ct_series(tmp_path / "ct", slices=6, size=64)
    changed = pydicom.dcmread(paths[2])
    changed.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]  # the modality corrects it: a scout, not scored
    corrected = tmp_path / "corrected.dcm"
    changed.save_as(corrected, enforce_file_format=True)
    node = _early_node(tmp_path, model_dir, receiver, classifiers, stable=4.0)
    try:
        assert set(send(paths, node.port)) == {0}
        series_id = _series_id(node, paths)
        wait_for(lambda: node.evaluator.early.scored_count(series_id) == 6, timeout=30, interval=0.02)
        assert set(send([corrected], node.port)) == {0}
        sr = wait_for(receiver.reports, timeout=60)[0]  # type: ignore[index]
    finally:
        node.stop()
    assert str(changed.SOPInstanceUID) not in _scores_in(sr)  # scored early as it first came, not reported so
    assert len(image_groups(sr)) == 6  # five images and the series
    assert sr.CompletionFlag == "PARTIAL" and "localizer" in sr.CompletionFlagDescription


def test_scores_joined_equal_the_series_scored_whole(tmp_path: Path, classifiers) -> None:
    paths = ct_series(tmp_path / "ct", slices=11, size=64)
    broken = tmp_path / "ct" / "broken.dcm"
    broken.write_bytes(b"not a DICOM file")
    paths.insert(3, broken)
    lung = classifiers["lung"]
    whole, whole_headers = score_files(lung, paths)
    joined, joined_headers = score_files(lung, paths[5:], scored_before=score_paths(lung, paths[:5]))
    assert [(r.sop_instance_uid, r.reason) for r in joined.images] == [(r.sop_instance_uid, r.reason)
                                                                       for r in whole.images]
    assert [r.score for r in joined.images] == pytest.approx([r.score for r in whole.images], abs=1e-6)
    assert [h.SOPInstanceUID for h in joined_headers] == [h.SOPInstanceUID for h in whole_headers]
    assert joined.focus == whole.focus and joined.verdict is whole.verdict
    with pytest.raises(ValueError, match="every slice"):
        score_files(lung, paths[5:], slice_stride=2, scored_before=score_paths(lung, paths[:5]))


def test_early_scores_are_used_only_for_the_same_first_files(classifiers, tmp_path: Path) -> None:
    paths = ct_series(tmp_path / "ct", slices=3, size=32)
    files = [SeriesFile(p.stem, p, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    early = EarlyScores()
    assert early.unscored(1, files[:2], received_version=2) == files[:2]
    early.add(1, files[:2], score_paths(classifiers["lung"], paths[:2]))
    assert early.unscored(1, files[:2], received_version=2) == [] and early.caught_up(1, 2)
    assert early.unscored(1, files, received_version=3) == files[2:] and not early.caught_up(1, 3)
    resent = [files[0], SeriesFile(files[1].sop_instance_uid, files[1].path, files[1].size + 2, files[1].mtime_ns)]
    scored, rest = early.take(1, resent + files[2:])
    assert scored is None and rest == resent + files[2:]  # a copy sent again: everything is scored again
    assert early.unscored(1, files, received_version=4) == files  # taken, so forgotten
    early.add(1, files[:1], score_paths(classifiers["lung"], paths[:1]))
    scored, rest = early.take(1, files)
    assert scored is not None and len(scored.evaluated) == 1 and rest == files[1:]
    assert early.scored_count(1) == 0


def test_early_scoring_keeps_a_bounded_number_of_results(classifiers, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("node.early_scoring.MOST_FILES_KEPT", 3)
    paths = ct_series(tmp_path / "ct", slices=4, size=32)
    files = [SeriesFile(p.stem, p, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    early = EarlyScores()
    for series_id, part in ((1, files[:2]), (2, files[2:3])):
        assert not early.full()
        early.unscored(series_id, part, received_version=1)
        early.add(series_id, part, score_paths(classifiers["lung"], [f.path for f in part]))
    assert early.full()  # three files' results kept: no more until some are taken
    early.take(2, files[2:3])
    assert not early.full()
