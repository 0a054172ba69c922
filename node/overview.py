"""What the node received, found and sent, read from its database: for `dfnode status` and the console."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import pydicom
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from core.events import AuditEventName
from node.config import Config
from node.db import AuditEvent, Database, Delivery, DeliveryState, Instance, Report, Series


@dataclass(frozen=True)
class SeriesRow:
    """One received series and what became of it."""

    id: int
    study_uid: str
    series_uid: str
    patient_id: str
    modality: str
    body_part: str
    description: str
    route: str | None
    received_at: float
    instances: int
    state: str  # not routed, waiting, evaluated, error: ...
    score: float | None
    verdict: str | None
    deliveries: str  # e.g. "1 sent", "1 failed", "-"
    held_by: str | None = None  # the node (`node.name`) whose lease on it is running: it evaluates it now


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    series_id: int
    series_uid: str
    destination: str
    state: str
    attempts: int
    last_status: str | None
    last_error: str | None
    next_attempt_at: float
    sent_at: float | None


@dataclass(frozen=True)
class ReportRow:
    id: int
    version: int
    sop_instance_uid: str
    path: str
    key_image_path: str | None
    verdict: str
    score: float | None
    created_at: float
    superseded: bool
    deliveries: list[DeliveryRow]
    number: int = 1  # 1: the series' first report, 2: the one that replaced it ...


@dataclass(frozen=True)
class PeerRow:
    name: str
    address: str
    last_success: float | None
    last_failure: float | None
    last_failure_reason: str


def delivery_summary(states: list[str]) -> str:
    if not states:
        return "-"
    return ", ".join(f"{n} {state}" for state, n in sorted(Counter(states).items()))


def _state(se: Series) -> str:
    if se.route is None:
        return "not routed"
    if se.error:
        return "error: " + se.error
    if se.received_version > se.evaluated_version:
        return "waiting"
    return "evaluated"


def _latest_report(s: Session, series_id: int) -> Report | None:
    return s.scalars(select(Report).where(Report.series_id == series_id).order_by(Report.version.desc())).first()


def _row(s: Session, se: Series) -> SeriesRow:
    latest = _latest_report(s, se.id)
    states = list(s.scalars(select(Delivery.state).where(Delivery.report_id == latest.id))) if latest else []
    return SeriesRow(se.id, se.study_uid, se.series_uid, se.patient_id, se.modality, se.body_part, se.description,
                     se.route, se.last_received_at, se.instance_count, _state(se), se.score, se.verdict,
                     delivery_summary(states), _holder(se))


def _holder(se: Series) -> str | None:
    """Who evaluates the series now: the holder of a lease that has not run out (this machine's clock)."""
    held = se.lease_owner is not None and se.lease_expires_at is not None and se.lease_expires_at > time.time()
    return se.lease_owner if held else None


def recent_series(db: Database, limit: int = 50, search: str = "", verdict: str = "") -> list[SeriesRow]:
    """The most recently received series, newest first; `search` matches patient ID, UIDs, modality,
    body part, description or route; `verdict` one of the SR verdicts."""
    query = select(Series).order_by(Series.last_received_at.desc()).limit(limit)
    if search.strip():
        like = f"%{search.strip()}%"
        query = query.where(or_(Series.patient_id.ilike(like), Series.study_uid.like(like),
                                Series.series_uid.like(like), Series.modality.ilike(like),
                                Series.body_part.ilike(like), Series.description.ilike(like),
                                Series.route.ilike(like)))
    if verdict:
        query = query.where(Series.verdict == verdict)
    with db.session() as s:
        return [_row(s, se) for se in s.scalars(query)]


def series_row(db: Database, series_id: int) -> SeriesRow | None:
    with db.session() as s:
        se = s.get(Series, series_id)
        return _row(s, se) if se is not None else None


def _delivery_row(d: Delivery, se: Series) -> DeliveryRow:
    return DeliveryRow(d.id, se.id, se.series_uid, d.destination, d.state, d.attempts, d.last_status, d.last_error,
                       d.next_attempt_at, d.sent_at)


def series_reports(db: Database, series_id: int) -> list[ReportRow]:
    """The series' reports, newest first, each with its deliveries."""
    with db.session() as s:
        se = s.get(Series, series_id)
        if se is None:
            return []
        rows = []
        reports = list(s.scalars(select(Report).where(Report.series_id == series_id).order_by(Report.version.desc())))
        for n, r in enumerate(reports):
            deliveries = [_delivery_row(d, se) for d in s.scalars(select(Delivery).where(Delivery.report_id == r.id))]
            rows.append(ReportRow(r.id, r.version, r.sop_instance_uid, r.path, r.key_image_path, r.verdict, r.score,
                                  r.created_at, r.superseded, deliveries, number=len(reports) - n))
        return rows


def deliveries(db: Database, states: tuple[DeliveryState, ...] = (DeliveryState.PENDING, DeliveryState.FAILED),
               limit: int = 200) -> list[DeliveryRow]:
    """Deliveries in the given states, the most recent first."""
    with db.session() as s:
        rows = s.execute(select(Delivery, Series).join(Report, Report.id == Delivery.report_id)
                         .join(Series, Series.id == Report.series_id).where(Delivery.state.in_(states))
                         .order_by(Delivery.id.desc()).limit(limit)).all()
        return [_delivery_row(d, se) for d, se in rows]


def series_in_state(db: Database, state: str, limit: int = 200) -> list[SeriesRow]:
    """Series waiting for evaluation (`waiting`) or whose evaluation failed (`error`)."""
    query = select(Series).order_by(Series.last_received_at.desc()).limit(limit)
    if state == "waiting":
        query = query.where(Series.route.is_not(None), Series.received_version > Series.evaluated_version)
    else:
        query = query.where(Series.error.is_not(None))
    with db.session() as s:
        return [_row(s, se) for se in s.scalars(query)]


def peers(db: Database, config: Config) -> list[PeerRow]:
    """Each configured peer with its last delivered report and its last failed attempt."""
    rows = []
    with db.session() as s:
        for peer in config.peers:
            success = s.scalar(select(func.max(Delivery.sent_at)).where(Delivery.destination == peer.name))
            failure = s.scalars(select(AuditEvent).where(
                AuditEvent.event.in_((AuditEventName.DELIVERY_RETRY, AuditEventName.DELIVERY_FAILED)),
                AuditEvent.called_ae == peer.ae_title,
                AuditEvent.address == (peer.dicomweb_url or peer.host)).order_by(AuditEvent.at.desc())).first()
            address = peer.dicomweb_url or f"{peer.ae_title}@{peer.host}:{peer.port}"
            rows.append(PeerRow(peer.name, address, success, failure.at if failure else None,
                                failure.detail.split(": ", 1)[-1] if failure else ""))
    return rows


def requeue_delivery(db: Database, delivery_id: int) -> DeliveryRow | None:
    """Send a failed (or waiting) delivery again now, with a fresh count of attempts."""
    with db.write_lock, db.session() as s, s.begin():
        d = s.get(Delivery, delivery_id)
        if d is None or d.state not in (DeliveryState.FAILED, DeliveryState.PENDING):
            return None
        d.state, d.attempts, d.next_attempt_at = DeliveryState.PENDING, 0, time.time()
        report = s.get(Report, d.report_id)
        se = s.get(Series, report.series_id) if report else None
        assert se is not None
        return _delivery_row(d, se)


def spool_counts(db: Database) -> tuple[int, int, int, int]:
    """(series received, files held, bytes held, files deleted by retention)."""
    with db.session() as s:
        total = s.scalar(select(func.count(Series.id))) or 0
        held_files, held = s.execute(select(func.count(Instance.id), func.coalesce(func.sum(Instance.size), 0))
                                     .where(Instance.purged_at.is_(None))).one()
        purged = s.scalar(select(func.count(Instance.id)).where(Instance.purged_at.is_not(None))) or 0
    return total, held_files, held, purged


@dataclass(frozen=True)
class StudyFacts:
    """What the series page shows of the study, read from a received instance's header."""

    description: str = ""
    date: str = ""
    accession: str = ""


def study_facts(db: Database, series_id: int) -> StudyFacts:
    """Study description, date and accession number from the series' first held instance (blank when
    none is held any more, or its header cannot be read)."""
    with db.session() as s:
        path = s.scalar(select(Instance.path).where(Instance.series_id == series_id, Instance.purged_at.is_(None))
                        .order_by(Instance.id).limit(1))
    if path is None:
        return StudyFacts()
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["StudyDescription", "StudyDate", "AccessionNumber"])
        return StudyFacts(str(header.get("StudyDescription", "") or ""), _date(str(header.get("StudyDate", "") or "")),
                          str(header.get("AccessionNumber", "") or ""))
    except Exception:  # a header damaged on disk: the page shows the rest
        return StudyFacts()


def _date(value: str) -> str:
    """A DICOM DA (YYYYMMDD) as YYYY-MM-DD; anything else as it is."""
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value
