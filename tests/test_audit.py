"""Promise 7: every association, instance, job state change and report sent is in the database and in
JSON log lines, with UIDs and never a patient's name or ID; `dfnode audit` finds them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from node.audit_report import parse_time
from tests.conftest import node_config_raw
from tests.helpers import Receiver, copy_with_new_uids, free_port, real_file, send, wait_for
from tests.serve_process import start_serve, write_config

PATIENT_NAME, PATIENT_ID = "SECRETNAME", "PID-8675309"  # one component: highdicom would quote it
EVERY_KIND = {"node.started", "association.accepted", "association.rejected", "series.new", "instance.stored",
              "instance.refused", "series.evaluating", "report.created", "delivery.sent", "node.stopped"}


def dfnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> tuple[Path, Path, pydicom.Dataset]:
    """One `dfnode serve` run with `logging.format: json`: a knee study with a patient name stored, evaluated and
    reported; an unknown AE turned away; a dataset with a bad UID refused. Returns (config, log, study)."""
    folder = tmp_path_factory.mktemp("audit")
    receiver = Receiver().start()
    port = free_port()
    config = write_config(node_config_raw(folder / "var", model_dir, receiver.port, node={"port": port},
                                           logging={"format": "json"}),
                          folder / "config.yaml")
    knee = copy_with_new_uids(real_file("RG1_UNCR.dcm"), folder / "in", BodyPartExamined="KNEE",
                              PatientName=PATIENT_NAME, PatientID=PATIENT_ID)
    bad = copy_with_new_uids(real_file("CT_small.dcm"), folder / "in", PatientName=PATIENT_NAME,
                             PatientID=PATIENT_ID)
    without_study = pydicom.dcmread(bad)
    del without_study.StudyInstanceUID
    without_study.save_as(bad)
    log = folder / "serve.log"
    serve = start_serve(config, port, log)
    try:
        assert send([knee], port, calling="INTRUDER") == [None]
        assert send([knee, bad], port) == [0x0000, 0xC000]
        wait_for(receiver.reports, timeout=120)
        wait_for(lambda: "delivery.sent" in log.read_text(), timeout=30)
    finally:
        code, _ = serve.terminate()
        receiver.stop()
    assert code == 0
    return config, log, pydicom.dcmread(knee, stop_before_pixels=True)


def test_every_log_line_is_json_with_the_audit_fields_and_no_patient_data(audited_run) -> None:
    _, log, study = audited_run
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    events = {line["event"]: line for line in lines if "event" in line}
    assert EVERY_KIND <= set(events), EVERY_KIND - set(events)
    assert events["instance.stored"]["sop_instance_uid"] == study.SOPInstanceUID
    assert events["instance.stored"]["calling_ae"] == "PACS"
    assert events["association.rejected"]["calling_ae"] == "INTRUDER"
    assert "not a known peer" in events["association.rejected"]["detail"]
    assert events["instance.refused"]["detail"].startswith("0xC000: StudyInstanceUID")
    assert events["delivery.sent"]["series_uid"] == study.SeriesInstanceUID
    text = log.read_text()
    assert "SECRETNAME" not in text and PATIENT_ID not in text


def test_dfnode_audit_finds_events_by_kind_uid_ae_and_time(audited_run) -> None:
    config, _, study = audited_run
    everything = dfnode("audit", "--config", str(config), "--json")
    assert everything.returncode == 0, everything.stderr
    rows = [json.loads(line) for line in everything.stdout.splitlines()]
    assert EVERY_KIND <= {r["event"] for r in rows}
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)

    deliveries = dfnode("audit", "--config", str(config), "--event", "delivery", "--json").stdout.splitlines()
    assert deliveries and all(json.loads(r)["event"].startswith("delivery.") for r in deliveries)

    series = dfnode("audit", "--config", str(config), "--uid", study.SeriesInstanceUID, "--json").stdout
    assert [json.loads(r)["event"] for r in series.splitlines()] == [
        "series.new", "instance.stored", "series.evaluating", "report.created", "delivery.sent"]

    intruder = dfnode("audit", "--config", str(config), "--ae", "INTRUDER")
    assert intruder.returncode == 0
    table = intruder.stdout.splitlines()
    assert table[0].split()[:2] == ["time", "event"] and len(table) == 3
    assert "association.rejected" in table[2] and "INTRUDER -> DFNODE" in table[2]

    assert dfnode("audit", "--config", str(config), "--since", "1m", "--limit", "2", "--json").stdout.count("\n") == 2
    assert "no audit events match" in dfnode("audit", "--config", str(config), "--until", "2000-01-01").stdout
    wrong = dfnode("audit", "--config", str(config), "--since", "yesterday")
    assert wrong.returncode == 1 and "'yesterday' is not a time" in wrong.stderr


def test_parse_time_reads_relative_and_iso_times() -> None:
    now = time.time()
    assert parse_time("90s", now) == now - 90
    assert parse_time("2h", now) == now - 7200
    assert parse_time("2026-11-22T08:00:00+00:00") == 1795334400.0
