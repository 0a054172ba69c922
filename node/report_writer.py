"""Writing a series' SR and key image into the reports folder, each file complete or absent.

Their UIDs derive from the series and its version, so writing again after a crash gives the same
objects. A report whose scores cannot be put into an SR is replaced by one that says NOT EVALUATED, so
that the PACS still gets an answer; a key image that cannot be made costs only the key image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from core.durable import write_atomically
from inference.model import Classifier
from inference.scoring import SeriesResult
from sr.key_image import build_key_image
from sr.report import REPORT_NOT_BUILT, NothingToCite, ReportIdentity, build_report, not_evaluated, report_uids
from sr.uids import ObjectIdentity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WrittenReport:
    """The files written for one version of a series, and the result its SR reports."""

    sop_instance_uid: str
    path: Path
    key_image_path: Path | None
    result: SeriesResult  # NOT EVALUATED when the SR of the scores could not be built


@dataclass(frozen=True)
class ReportSettings:
    """Who the reports say made them, where they go, and whether a key image goes with them."""

    device_uid: str
    ae_title: str
    reports_dir: Path
    key_image: bool


class ReportWriter:
    def __init__(self, settings: ReportSettings):
        self.settings = settings

    def write(self, series_uid: str, version: int, headers: list[Dataset], result: SeriesResult,
              files: dict[str, Path], classifier: Classifier, previous_path: str | None) -> WrittenReport:
        """The SR of `result` for version `version` (naming the report at `previous_path` as the one it
        replaces) and the key image of its focus; `NothingToCite` when no image can be cited."""
        sr_series_uid, sr_uid = report_uids(series_uid, version)
        identity = ReportIdentity(self.settings.device_uid, self.settings.ae_title, "dfnode", sr_series_uid, sr_uid,
                                  version)
        sr, result = self._report(series_uid, headers, result, identity, read_previous(previous_path))
        path = self.settings.reports_dir / f"{sr_uid}.dcm"
        write_atomically(path, lambda f: sr.save_as(f, enforce_file_format=True))
        key_path = self._write_key_image(series_uid, version, result, files, classifier)
        return WrittenReport(sr_uid, path, key_path, result)

    @staticmethod
    def _report(series_uid: str, headers: list[Dataset], result: SeriesResult, identity: ReportIdentity,
                previous: Dataset | None) -> tuple[Dataset, SeriesResult]:
        try:
            return build_report(headers, result, identity, previous), result
        except NothingToCite:
            raise
        except Exception:
            log.exception("series %s: the report could not be built; a NOT EVALUATED report is sent instead",
                          series_uid)
        fallback = not_evaluated(result, REPORT_NOT_BUILT)
        return build_report(headers, fallback, identity, previous), fallback

    def _write_key_image(self, series_uid: str, version: int, result: SeriesResult, files: dict[str, Path],
                         classifier: Classifier) -> Path | None:
        focus = result.focus
        if not self.settings.key_image or focus is None or focus.sop_instance_uid not in files:
            return None
        identity = ObjectIdentity.derived(series_uid, version, "key")
        path = self.settings.reports_dir / f"{identity.sop_instance_uid}.dcm"
        try:
            image = build_key_image(dcmread(files[focus.sop_instance_uid]), focus, result.verdict, result.score,
                                    classifier.card.preprocessing_spec(), identity, result.threshold)
            write_atomically(path, lambda f: image.save_as(f, enforce_file_format=True))
        except Exception:  # the SR goes out regardless
            log.exception("series %s: key image not made; the SR is sent alone", series_uid)
            return None
        return path


def read_previous(path: str | None) -> Dataset | None:
    """The report a new one replaces, or None when there is none or it cannot be read."""
    if path is None:
        return None
    try:
        return dcmread(path)
    except Exception:
        log.warning("previous report %s unreadable; the new one will not name its predecessor", path)
        return None
