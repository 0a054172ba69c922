"""Scoring a series while it waits to be stable.

Once nothing has arrived for a route's `early_scoring_seconds`, the evaluator scores the instances the
series has so far, a batch at a time whenever no series is due, so that at the stable time only what
came after is left to score. Results are kept in memory with the files they came from, as the index
listed them (path, size, time of writing), and are used only while those files are still the series'
first ones, unchanged: a copy sent again, an instance arriving out of order or purged starts over. A
restart forgets them; the series is then scored whole at its stable time. At most `MOST_FILES_KEPT`
files' results are kept at once (a CT slice's header is about 25 KiB in memory); beyond, series are
scored at their stable time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from inference.scoring import ScoredFiles
from node.config import Route
from node.db import Instance

MOST_FILES_KEPT = 4000


@dataclass(frozen=True)
class SeriesFile:
    """One spooled instance of a series, as the index records it."""

    sop_instance_uid: str
    path: Path
    size: int
    mtime_ns: int | None


def series_files(session: Session, series_id: int) -> list[SeriesFile]:
    """The series' instances still in the spool, in the order they arrived: the order they are scored in."""
    rows = session.execute(select(Instance.sop_instance_uid, Instance.path, Instance.size, Instance.file_mtime_ns)
                           .where(Instance.series_id == series_id, Instance.purged_at.is_(None))
                           .order_by(Instance.received_at, Instance.id))
    return [SeriesFile(uid, Path(path), size, mtime_ns) for uid, path, size, mtime_ns in rows]


def scores_early(route: Route) -> bool:
    """Whether the route's series are scored while they wait: every slice scored, and a quiet time
    shorter than the stable time."""
    early = route.early_scoring_seconds
    return route.slice_stride == 1 and early is not None and early < route.series_stable_seconds


@dataclass
class _Progress:
    files: list[SeriesFile] = field(default_factory=list)  # the series' first files, scored
    scored: ScoredFiles = field(default_factory=ScoredFiles.empty)
    caught_up_at: int | None = None  # the series' received version when nothing was left to score


class EarlyScores:
    """What has been scored of each series waiting to be stable."""

    def __init__(self) -> None:
        self._progress: dict[int, _Progress] = {}

    def caught_up(self, series_id: int, received_version: int) -> bool:
        """Whether everything the series had at `received_version` is scored (or could not be)."""
        progress = self._progress.get(series_id)
        return progress is not None and progress.caught_up_at == received_version

    def unscored(self, series_id: int, files: list[SeriesFile], received_version: int) -> list[SeriesFile]:
        """The files after those scored; all of them, forgetting the scores, if those are no longer the first."""
        progress = self._progress.setdefault(series_id, _Progress())
        if files[:len(progress.files)] != progress.files:
            progress = self._progress[series_id] = _Progress()
        rest = files[len(progress.files):]
        if not rest:
            progress.caught_up_at = received_version
        return rest

    def add(self, series_id: int, files: list[SeriesFile], scored: ScoredFiles) -> None:
        """Keep what scoring `files`, the next of the series after those scored, gave."""
        progress = self._progress[series_id]
        progress.files += files
        progress.scored.merge(scored)

    def give_up(self, series_id: int, received_version: int) -> None:
        """Score nothing more of the series until more arrives; it is scored whole at its stable time."""
        self._progress[series_id] = _Progress(caught_up_at=received_version)

    def take(self, series_id: int, files: list[SeriesFile]) -> tuple[ScoredFiles | None, list[SeriesFile]]:
        """(what was scored of `files`' first ones, the files left to score), forgetting the series."""
        progress = self._progress.pop(series_id, None)
        if progress is None or not progress.files or files[:len(progress.files)] != progress.files:
            return None, files
        return progress.scored, files[len(progress.files):]

    def keep_only(self, series_ids: set[int]) -> None:
        """Forget the series not among `series_ids` (evaluated, or no longer waiting)."""
        for series_id in set(self._progress) - series_ids:
            del self._progress[series_id]

    def full(self) -> bool:
        """Whether as many files' results are kept as memory allows (`MOST_FILES_KEPT`)."""
        return sum(len(p.files) for p in self._progress.values()) >= MOST_FILES_KEPT

    def scored_count(self, series_id: int) -> int:
        """How many of the series' files are scored so far (the console asks from its own thread: one
        lookup, no iteration)."""
        progress = self._progress.get(series_id)
        return len(progress.files) if progress else 0
