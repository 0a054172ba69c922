"""Scale-out on PostgreSQL: what sharing one database costs and buys.

1. Receiving: a node whose index is in PostgreSQL against one on SQLite (in this process, no routes,
   so nothing is evaluated), 300 CT slices of 256 x 256 per round over one association, rounds
   alternating between the two; the database's statements per instance indexed.
2. Claiming: the time one evaluator takes to claim a due series among 1,000 waiting ones.
3. Series per minute with one and with two evaluator processes (tiny random-weight models, so that
   the figure is the node's own overhead, not the network's), 24 series of 20 slices, a receiver and a
   deliverer beside them, and a model of what N evaluators on GPU machines would give.

The PostgreSQL server is the tests' (`initdb` and `pg_ctl` in a temporary folder, fsync on).

    .venv/bin/python -m bench.scale [--rounds 3] [--series 24]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from sqlalchemy import event, func, insert, select

from bench.common import in_temp_folder, median, print_table
from node.claims import Claims
from node.config import parse_config
from node.db import Database, Series, sqlite_url
from node.service import Node
from tests.conftest import node_config_raw
from tests.helpers import Receiver, ct_series, free_port, send, wait_for
from tests.models import write_test_model
from tests.postgres import PostgresServer
from tests.serve_process import start_serve, write_config


def receive_rate(folder: Path, models: Path, url: str, files: list[Path]) -> tuple[float, float]:
    """(instances per second, database statements per instance) receiving `files` into a node on `url`."""
    raw = node_config_raw(folder, models, routes=[], storage={"database_url": url})
    node = Node(parse_config(raw, "bench"), {}).start(port=0)
    statements = [0]

    def count(*_: object) -> None:
        statements[0] += 1

    for engine in {node.db.engine, node.db.index_engine}:
        event.listen(engine, "before_cursor_execute", count)
    try:
        started = time.perf_counter()
        assert set(send(files, node.port)) == {0}
        wait_for(lambda: _indexed(node.db) == len(files), timeout=120, interval=0.005)
        seconds = time.perf_counter() - started
    finally:
        node.stop()
    return len(files) / seconds, statements[0] / len(files)


def _indexed(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.coalesce(func.sum(Series.instance_count), 0))) or 0)


def claim_latency(url: str, waiting: int = 1000, claims: int = 200) -> float:
    """Median milliseconds for one claim among `waiting` due series."""
    db = Database(url)
    try:
        with db.engine.begin() as connection:
            connection.execute(insert(Series), [
                {"series_uid": f"1.2.3.{n}", "study_uid": "1.2.3", "patient_id": "", "modality": "CT",
                 "body_part": "", "description": "", "calling_ae": "PACS", "route": "lung-ct", "model": "lung",
                 "first_received_at": 0.0, "last_received_at": 0.0, "stable_at": 0.0, "instance_count": 1,
                 "received_version": 1, "evaluated_version": 0} for n in range(waiting)])
        claiming = Claims(db, Series, "bench", lease_seconds=600)
        times = []
        for _ in range(claims):
            started = time.perf_counter()
            assert claiming.claim(Series.received_version > Series.evaluated_version, order_by=Series.stable_at)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)
    finally:
        db.close()


def series_per_minute(folder: Path, models: Path, url: str, evaluators: int, count: int) -> float:
    """Series reported per minute by `evaluators` evaluator processes, with a receiver and a deliverer."""
    folder.mkdir(parents=True)
    pacs = Receiver().start()
    processes = []
    try:
        def start(name: str, role: str, port: int = 0) -> None:
            raw = node_config_raw(folder / "var", models, pacs.port, storage={"database_url": url},
                                  node={"port": port or free_port(), "name": name, "roles": [role]})
            for route in raw["routes"]:
                route["series_stable_seconds"] = 0.5
                route["early_scoring_seconds"] = None
            config = write_config(raw, folder / f"{name}.yaml")
            processes.append(start_serve(config, port, folder / f"{name}.log"))

        port = free_port()
        start("receiver", "receiver", port)
        start("deliverer", "deliverer")
        for n in range(evaluators):
            start(f"evaluator-{n}", "evaluator")
        series = [ct_series(folder / f"s{evaluators}-{n}", slices=20, size=128, seed=n) for n in range(count)]
        started = time.perf_counter()
        for files in series:
            assert set(send(files, port)) == {0}
        wait_for(lambda: len(pacs.reports()) >= count, timeout=900, interval=0.05)
        return count / ((time.perf_counter() - started) / 60)
    finally:
        for process in processes:
            process.kill()
        pacs.stop()


def run(folder: Path, rounds: int, count: int) -> None:
    models = folder / "models"
    models.mkdir()
    write_test_model(models, "knee", "xray")
    write_test_model(models, "lung", "ct")
    folder.chmod(0o755)  # the postgres user reaches its cluster inside
    server = PostgresServer(folder / "postgres", durable=True).start()
    try:
        files = ct_series(folder / "ct", slices=300, size=256)
        sqlite_rates, pg_rates, sqlite_statements, pg_statements = [], [], 0.0, 0.0
        for r in range(rounds):
            rate, sqlite_statements = receive_rate(folder / f"sqlite-{r}", models,
                                                   sqlite_url(folder / f"sqlite-{r}" / "index.sqlite"), files)
            sqlite_rates.append(rate)
            rate, pg_statements = receive_rate(folder / f"pg-{r}", models, server.new_database(), files)
            pg_rates.append(rate)
        ratio = median(pg_rates) / median(sqlite_rates)
        claim_ms = claim_latency(server.new_database())
        one = series_per_minute(folder / "one", models, server.new_database(), 1, count)
        two = series_per_minute(folder / "two", models, server.new_database(), 2, count)
    finally:
        server.stop()
    rows = [
        ["receiving, 300 slices, one association (median of rounds)",
         f"SQLite {median(sqlite_rates):.0f}/s, PostgreSQL {median(pg_rates):.0f}/s", f"{ratio:.2f}x",
         ">= 0.8x", "yes" if ratio >= 0.8 else "no"],
        ["database statements per instance indexed", f"SQLite {sqlite_statements:.1f}, PostgreSQL "
         f"{pg_statements:.1f}", "", "(measured)", ""],
        ["claiming one due series among 1,000 waiting (median of 200)", f"{claim_ms:.2f} ms", "", "(measured)", ""],
        [f"series reported per minute ({count} series of 20 slices, tiny models)",
         f"1 evaluator {one:.0f}, 2 evaluators {two:.0f}", f"{two / one:.2f}x", "(measured)", ""],
    ]
    print_table("Scale-out: PostgreSQL against SQLite, claims, evaluators", ["what", "measured", "ratio",
                                                                           "target", "met"], rows)
    print(f"\nModel for N evaluators on machines of their own: series/min = min(N x r, 60,000 / c), where r "
          f"is one evaluator's rate on its machine (a GPU's, not this CPU's) and c = {claim_ms:.2f} ms the "
          f"claim's cost on the database: one claim per series, so the database is not the limit below "
          f"{60000 / claim_ms:,.0f} series a minute. Assumes the spool's filesystem and the receivers keep up "
          f"(here two evaluators share 2 cores with the receiver and the deliverer, so their ratio shows "
          f"contention, not the design).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--series", type=int, default=24)
    args = parser.parse_args()
    in_temp_folder("scale", lambda folder: run(folder, args.rounds, args.series))


if __name__ == "__main__":
    main()
