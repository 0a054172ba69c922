"""The evaluator's parts on their own, without sockets, on SQLite and PostgreSQL: the schedule claims a
due series once, the store commits only under a live lease and supersedes older reports, the scorer
joins what it scored early to the rest, and the writer always leaves an SR to send."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

import node.report_writer as report_writer
from inference.model import Classifier
from inference.scoring import Verdict
from node.audit import Audit
from node.claims import LeaseLost
from node.config import Config
from node.db import Database, Delivery, DeliveryState, Report, Series
from node.ingest import Ingest
from node.report_store import ReportStore
from node.report_writer import ReportSettings, ReportWriter, WrittenReport
from node.schedule import Schedule, Waiting
from node.scorer import Scorer
from node.spool_budget import SpoolBudget
from node.spool_recovery import spooled_instance
from sr.report import report_uids
from tests.conftest import node_config, on_database
from tests.helpers import ct_series, wait_for
from tests.sr_contract import check_report, image_groups


@dataclass
class Parts:
    config: Config
    db: Database
    ingest: Ingest
    schedule: Schedule
    store: ReportStore
    scorer: Scorer
    writer: ReportWriter

    def index(self, files: list[Path]) -> int:
        """Index `files` as received, and return their series' row id."""
        for path in files:
            spooled = spooled_instance(path)
            assert spooled is not None and self.ingest.index(spooled)
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        with self.db.session() as s:
            series_id = s.scalar(select(Series.id).where(Series.series_uid == uid))
        assert series_id is not None
        return series_id

    def write(self, series_id: int) -> tuple[int, WrittenReport]:
        """Score the series as it is now and write its report; (its version, the files written)."""
        series = self.store.read(series_id)
        assert series is not None
        route = self.config.route(series.route or "")
        assert route is not None
        scored = self.scorer.score(self.scorer.take_early(series_id, series.files), route)
        written = self.writer.write(series.series_uid, series.version, scored.headers, scored.result,
                                    {f.sop_instance_uid: f.path for f in series.files},
                                    self.scorer.classifiers[route.model], series.previous_report_path)
        return series.version, written


def _parts(tmp_path: Path, model_dir: Path, classifiers: dict[str, Classifier], database_url: str | None,
           name: str, db: Database | None = None) -> Parts:
    config = node_config(tmp_path / "var", model_dir, node={"name": name, "lease_seconds": 1},
                         **on_database(database_url))
    db = db or Database(config.storage.database)
    audit = Audit(db)
    schedule = Schedule(config, db)
    return Parts(config, db, Ingest(config, db, SpoolBudget(config.storage, db), audit), schedule,
                 ReportStore(db, audit, schedule.claims), Scorer(config, classifiers),
                 ReportWriter(ReportSettings("1.2.3.4", config.node.ae_title, config.storage.reports_dir,
                                             config.reports.key_image)))


@pytest.fixture
def parts(tmp_path: Path, model_dir: Path, classifiers: dict[str, Classifier],
          database_url: str | None) -> Iterator[tuple[Parts, Parts]]:
    """Two evaluators, "a" and "b", on one database, with one-second leases."""
    a = _parts(tmp_path, model_dir, classifiers, database_url, "a")
    b = _parts(tmp_path, model_dir, classifiers, database_url, "b", a.db)
    yield a, b
    a.db.close()


def test_a_due_series_is_claimed_by_one_evaluator(parts: tuple[Parts, Parts], tmp_path: Path) -> None:
    a, b = parts
    series_id = a.index(ct_series(tmp_path / "ct", slices=3, size=64))
    look = a.schedule.look(time.time())
    assert look.due == [] and look.unevaluated == {series_id}
    assert a.schedule.next_due_at is not None and 0 < a.schedule.next_due_at - time.time() <= 1.0  # lung-ct: 1 s
    assert a.schedule.claim_due() is None  # not stable yet on the database's clock
    lease = wait_for(a.schedule.claim_due, timeout=10, interval=0.05)
    assert b.schedule.claim_due() is None  # held by "a"
    assert b.schedule.look(time.time()).due == []  # "b" does not count it as due while "a" holds it
    taken_over = wait_for(b.schedule.claim_due, timeout=10, interval=0.05)  # "a"'s lease ran out
    assert taken_over.row_id == series_id and taken_over.epoch == lease.epoch + 1


def test_a_stale_lease_commits_nothing(parts: tuple[Parts, Parts], tmp_path: Path) -> None:
    a, b = parts
    series_id = a.index(ct_series(tmp_path / "ct", slices=3, size=64))
    stale = wait_for(a.schedule.claim_due, timeout=10, interval=0.05)
    version, written = a.write(series_id)
    wait_for(b.schedule.claim_due, timeout=10, interval=0.05)
    with pytest.raises(LeaseLost):
        a.store.commit(stale, version, written, ["pacs"], "late")
    with pytest.raises(LeaseLost):
        a.store.record_failure(stale, "late")
    with a.db.session() as s:
        series = s.get(Series, series_id)
        assert series is not None and series.evaluated_version == 0 and series.error is None
        assert s.scalars(select(Report)).all() == []


def test_a_new_version_supersedes_the_report_and_its_unsent_deliveries(parts: tuple[Parts, Parts],
                                                                       tmp_path: Path) -> None:
    a, _ = parts
    files = ct_series(tmp_path / "ct", slices=4, size=64)
    series_id = a.index(files[:3])
    first = wait_for(a.schedule.claim_due, timeout=10, interval=0.05)
    version, written = a.write(series_id)
    a.store.commit(first, version, written, ["pacs"], "first")
    a.index(files[3:])
    second = wait_for(a.schedule.claim_due, timeout=10, interval=0.05)
    newer_version, newer = a.write(series_id)
    a.store.commit(second, newer_version, newer, ["pacs"], "second")
    with pytest.raises(LeaseLost):  # the commit released the lease: it serves one commit
        a.store.commit(second, newer_version, newer, ["pacs"], "again")
    with a.db.session() as s:
        reports = s.scalars(select(Report).order_by(Report.version)).all()
        assert [(r.version, r.superseded) for r in reports] == [(3, True), (4, False)]
        states = {d.report_id: d.state for d in s.scalars(select(Delivery))}
        assert states == {reports[0].id: DeliveryState.SUPERSEDED, reports[1].id: DeliveryState.PENDING}
        series = s.get(Series, series_id)
        assert series is not None and series.evaluated_version == 4
    later = pydicom.dcmread(newer.path)
    assert later.SOPInstanceUID == report_uids(str(pydicom.dcmread(files[0]).SeriesInstanceUID), 4)[1]
    assert later.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == written.sop_instance_uid
    check_report(later, files, tmp_path)


def test_what_was_scored_early_joins_the_rest(parts: tuple[Parts, Parts], tmp_path: Path) -> None:
    a, _ = parts
    files = ct_series(tmp_path / "ct", slices=6, size=64)
    series_id = a.index(files[:4])
    route = a.config.route("lung-ct")
    assert route is not None
    waiting = [Waiting(series_id, 4, route)]
    while a.scorer.score_early(waiting, a.store.files):
        pass
    assert a.scorer.early.scored_count(series_id) == 4
    a.index(files[4:])
    to_score = a.scorer.take_early(series_id, a.store.files(series_id))
    assert to_score.scored_early == 4 and [f.path for f in to_score.rest] == files[4:]
    joined = a.scorer.score(to_score, route).result
    whole = a.scorer.score(a.scorer.take_early(series_id, a.store.files(series_id)), route).result
    assert [r.sop_instance_uid for r in joined.images] == [r.sop_instance_uid for r in whole.images]
    assert [r.score for r in joined.images] == pytest.approx([r.score for r in whole.images], abs=1e-6)
    assert joined.score == pytest.approx(whole.score, abs=1e-6)


def test_a_report_that_cannot_be_built_is_sent_as_not_evaluated(parts: tuple[Parts, Parts], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = parts
    files = ct_series(tmp_path / "ct", slices=3, size=64)
    series_id = a.index(files)
    build = report_writer.build_report
    calls: list[Verdict] = []

    def fails_with_scores(sources, result, identity, previous=None):  # type: ignore[no-untyped-def]
        calls.append(result.verdict)
        if result.verdict != Verdict.NOT_EVALUATED:
            raise ValueError("no room for this score")
        return build(sources, result, identity, previous)

    monkeypatch.setattr(report_writer, "build_report", fails_with_scores)
    _, written = a.write(series_id)
    assert calls[-1] == Verdict.NOT_EVALUATED and written.result.verdict == Verdict.NOT_EVALUATED
    sr = pydicom.dcmread(written.path)
    assert sr.SeriesDescription == "DEEPFAKE SCREEN: NOT EVALUATED"
    assert sr.SOPInstanceUID == written.sop_instance_uid and len(image_groups(sr)) == 3  # one per image
