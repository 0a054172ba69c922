"""The web console over real HTTP (httpx against `Node`'s own uvicorn): sign-in and setup token, roles,
masked patient IDs, the series page, the queue and its retry button, the upload check, /metrics."""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import ConfigError
from node.audit import AuditQuery, query_events
from node.claims import Claims
from node.config import parse_config
from node.db import Series
from node.service import Node
from node.users import add_user, remove_user
from tests.conftest import node_config_raw
from tests.console import (
    ADMIN,
    PASSWORD,
    PATIENT_ID,
    VIEWER,
    client,
    close_clients,
    csrf,
    knee_study,
    series_id,
    sign_in,
    start_console_node,
)
from tests.helpers import Receiver, copy_with_new_uids, ct_series, echo, free_port, real_file, send, wait_for


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    close_clients()


@pytest.fixture
def console_node(tmp_path: Path, model_dir: Path, receiver: Receiver, classifiers) -> Iterator[Node]:
    node = start_console_node(tmp_path, model_dir, receiver, classifiers)
    add_user(node.db, ADMIN, PASSWORD, "admin")
    add_user(node.db, VIEWER, PASSWORD, "viewer")
    yield node
    node.stop()


def test_first_admin_comes_from_the_setup_token_once(tmp_path: Path, model_dir: Path, receiver: Receiver,
                                                     classifiers, caplog: pytest.LogCaptureFixture) -> None:
    node = start_console_node(tmp_path, model_dir, receiver, classifiers)
    try:
        token = re.search(r"one-time setup token (\S+)", caplog.text)
        assert token, "no setup token in the log"
        browser = client(node)
        assert browser.get("/").headers["location"].startswith("/login")
        assert browser.get("/login").headers["location"] == "/setup"
        page = browser.get("/setup").text
        wrong = browser.post("/setup", data={"token": "guess", "name": "root", "password": PASSWORD,
                                             "csrf": csrf(page)})
        assert wrong.status_code == 400 and "wrong setup token" in wrong.text
        short = browser.post("/setup", data={"token": token.group(1), "name": "root", "password": "short",
                                             "csrf": csrf(page)})
        assert short.status_code == 400 and "at least 10 characters" in short.text
        made = browser.post("/setup", data={"token": token.group(1), "name": "root", "password": PASSWORD,
                                            "csrf": csrf(page)})
        assert made.status_code == 303
        assert "root (admin)" in browser.get("/").text
        again = client(node)
        assert again.get("/setup").headers["location"] == "/login"  # the token is spent
        assert sign_in(node, "root").get("/").status_code == 200
        remove_user(node.db, "root")  # the last admin goes: the sign-in page leads to /setup again
        assert client(node).get("/login").headers["location"] == "/setup"
        assert len(re.findall(r"setup token (\S+)", caplog.text)) == 2
    finally:
        node.stop()


def test_sign_in_refusals_are_audited_and_forms_need_their_token(console_node: Node) -> None:
    browser = client(console_node)
    page = browser.get("/login").text
    refused = browser.post("/login", data={"name": ADMIN, "password": "not it at all", "csrf": csrf(page)})
    assert refused.status_code == 401 and "wrong user name or password" in refused.text
    assert browser.get("/queue").status_code == 303  # still signed out
    forged = browser.post("/login", data={"name": ADMIN, "password": PASSWORD, "csrf": "forged"})
    assert forged.status_code == 403
    events = [e.event for e in query_events(console_node.db, AuditQuery(event="console"))]
    assert "console.signin_refused" in events and "console.signin" not in events


def test_patient_ids_are_masked_and_only_admins_unmask(tmp_path: Path, console_node: Node,
                                                       receiver: Receiver) -> None:
    knee_study(tmp_path, console_node, receiver)
    viewer = sign_in(console_node, VIEWER)
    for url in ("/", "/?reveal=1"):
        page = viewer.get(url).text
        assert PATIENT_ID not in page and "P•••••••••YZ" in page
    assert "Show patient IDs" not in viewer.get("/").text
    admin = sign_in(console_node, ADMIN)
    assert PATIENT_ID not in admin.get("/").text
    assert PATIENT_ID in admin.get("/?reveal=1").text
    assert any(e.detail.startswith(f"user {ADMIN}")
               for e in query_events(console_node.db, AuditQuery(event="console.unmasked")))


def test_search_and_verdict_filter(tmp_path: Path, console_node: Node, receiver: Receiver) -> None:
    sr = knee_study(tmp_path, console_node, receiver)
    verdict = sr.SeriesDescription.removeprefix("DEEPFAKE SCREEN: ")
    browser = sign_in(console_node, VIEWER)
    assert "/series/" in browser.get("/", params={"q": "knee-radio"}).text  # the route's name
    assert "/series/" in browser.get("/", params={"verdict": verdict}).text
    other = next(v for v in ("SUSPECTED", "NOT SUSPECTED") if v != verdict)
    assert "/series/" not in browser.get("/", params={"verdict": other}).text
    assert "that matches" in browser.get("/", params={"q": "no such thing"}).text


def test_series_page_shows_scores_key_image_and_the_report(tmp_path: Path, console_node: Node,
                                                           receiver: Receiver) -> None:
    sr = knee_study(tmp_path, console_node, receiver)
    browser = sign_in(console_node, VIEWER)
    number = series_id(console_node)
    page = browser.get(f"/series/{number}").text
    source_uid = str(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                     .ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    assert source_uid in page  # the per-image score row names the image
    assert sr.SOPInstanceUID in page  # the report and its delivery
    assert "pacs: sent" in page
    assert re.search(r'<td title="[^"]*">first</td>', page)  # the series' first report, named as such
    assert "Manipulation score:" in page and "Manipulation suspected:" in page  # the SR content, readable
    threshold = console_node.classifiers["knee"].card.threshold
    assert re.search(rf'id="threshold">{threshold * 100:.1f}%<', page)  # beside the verdict and its score
    study = re.search(r'id="study">([^<]*)<', page)  # the source's own study description, date, accession
    assert study and study.group(1) == "Non-ossifying fibroma of distal tibia · 2004-08-26 · accession FUJI95706"
    key = browser.get(f"/series/{number}/key-image.png")
    assert key.status_code == 200 and key.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(key.content)).size[0] > 100
    assert browser.get("/series/99999").status_code == 404


def test_failed_delivery_is_listed_and_an_admin_sends_it_again(tmp_path: Path, console_node: Node,
                                                               receiver: Receiver) -> None:
    receiver.status = 0xC001  # the PACS refuses the SR: failed at once, not retried
    path = copy_with_new_uids(real_file("RG3_UNCR.dcm"), tmp_path / "in")
    assert send([path], console_node.port) == [0x0000]
    viewer = sign_in(console_node, VIEWER)
    wait_for(lambda: "0xC001" in viewer.get("/queue").text, timeout=60)
    queue = viewer.get("/queue").text
    found = re.search(r'id="delivery-(\d+)"', queue)
    assert found and "Retry now" not in queue  # viewers see it, without the button
    delivery = found.group(1)
    assert viewer.post(f"/deliveries/{delivery}/retry", data={"csrf": csrf(queue)}).status_code == 403
    receiver.status = 0x0000
    admin = sign_in(console_node, ADMIN)
    page = admin.get("/queue").text
    assert "Retry now" in page
    done = admin.post(f"/deliveries/{delivery}/retry", data={"csrf": csrf(page)}, follow_redirects=True)
    assert f"delivery {delivery} to pacs queued again" in done.text
    wait_for(lambda: f'id="delivery-{delivery}"' not in admin.get("/queue").text, timeout=30)  # sent
    assert receiver.reports()
    peers = admin.get("/queue").text
    peer_row = re.search(r"<td>pacs</td><td>PACS@127\.0\.0\.1:\d+</td><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td>",
                         peers)
    assert peer_row, "no row for the peer"
    assert peer_row.group(1) != "-" and peer_row.group(2) != "-"  # last success, last failure
    assert "refused by the peer" in peer_row.group(3)
    retry = query_events(console_node.db, AuditQuery(event="console.retry"))
    assert retry and retry[0].detail.startswith(f"user {ADMIN}")


def _png_bytes(size: int = 300) -> bytes:
    pixels = (np.random.default_rng(3).random((size, size)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_check_scores_png_and_dicom_and_refuses_bad_files(console_node: Node) -> None:
    browser = sign_in(console_node, VIEWER)
    token = csrf(browser.get("/check").text)
    png = browser.post("/check", data={"model": "knee", "csrf": token},
                       files={"image": ("knee.png", _png_bytes(), "image/png")})
    assert png.status_code == 200
    assert re.search(r'id="verdict"[^>]*>(SUSPECTED|NOT SUSPECTED)<', png.text)
    assert re.search(r'id="score">\d+\.\d%<', png.text)
    assert 'id="heatmap" src="data:image/png;base64,' in png.text
    dicom = browser.post("/check", data={"model": "", "csrf": token},
                         files={"image": ("x.dcm", real_file("RG3_UNCR.dcm").read_bytes(), "application/dicom")})
    assert dicom.status_code == 200 and "model <strong>knee</strong>" in dicom.text  # routed by its tags
    no_model = browser.post("/check", data={"model": "", "csrf": token},
                            files={"image": ("a.png", _png_bytes(), "image/png")})
    assert no_model.status_code == 422 and "a model must be chosen" in no_model.text
    garbage = browser.post("/check", data={"model": "", "csrf": token},
                           files={"image": ("b.dcm", b"not a dicom file" * 10, "application/dicom")})
    assert garbage.status_code == 422 and "cannot read" in garbage.text
    unknown = browser.post("/check", data={"model": "spleen", "csrf": token},
                           files={"image": ("a.png", _png_bytes(), "image/png")})
    assert unknown.status_code == 400
    assert browser.get("/queue").status_code == 200  # the console keeps serving


def test_upload_over_the_limit_is_refused(tmp_path: Path, model_dir: Path, receiver: Receiver, classifiers) -> None:
    node = start_console_node(tmp_path, model_dir, receiver, classifiers, max_upload_megabytes=0.05)
    try:
        add_user(node.db, ADMIN, PASSWORD, "admin")
        browser = sign_in(node, ADMIN)
        token = csrf(browser.get("/check").text)
        big = browser.post("/check", data={"model": "knee", "csrf": token},
                           files={"image": ("big.png", _png_bytes(600), "image/png")})
        assert big.status_code == 413 and "larger than 0.05 MB" in big.text
    finally:
        node.stop()


def test_metrics_count_what_happened(tmp_path: Path, console_node: Node, receiver: Receiver) -> None:
    knee_study(tmp_path, console_node, receiver)
    assert echo(console_node.port, calling="STRANGER") is None  # rejected: not a known peer
    wait_for(lambda: 'dfnode_delivery_jobs{state="sent"} 1.0' in client(console_node).get("/metrics").text,
             timeout=30)
    text = client(console_node).get("/metrics").text  # no sign-in: a scraper reads it
    assert 'dfnode_instances_total{outcome="stored"} 1.0' in text
    assert 'dfnode_associations_total{outcome="rejected"} 1.0' in text
    assert 'dfnode_report_sends_total{outcome="sent"} 1.0' in text
    assert 'dfnode_inference_seconds_count{model="knee"} 1.0' in text
    assert 'dfnode_series_jobs{state="waiting"} 0.0' in text


def test_user_command(tmp_path: Path, model_dir: Path) -> None:
    raw = node_config_raw(tmp_path / "var", model_dir)
    config_path = tmp_path / "config.yaml"
    import yaml
    config_path.write_text(yaml.safe_dump(raw))

    def user(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "node.cli", "user", *args, "--config", str(config_path)],
                              input=stdin, capture_output=True, text=True, timeout=120)

    added = user("add", "grace", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert "user grace (admin) saved" in added.stdout
    again = user("add", "grace", "--password-stdin", stdin=PASSWORD + "\n")
    assert again.returncode == 1 and "exists" in again.stderr
    short = user("add", "hopper", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least 10 characters" in short.stderr
    listed = user("list")
    assert re.search(r"grace\s+admin", listed.stdout) and "hopper" not in listed.stdout
    assert user("remove", "grace").returncode == 0
    assert user("remove", "grace").returncode == 1


def test_a_console_port_in_use_stops_the_start_with_the_key(tmp_path: Path, model_dir: Path, receiver: Receiver,
                                                            classifiers) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        raw = node_config_raw(tmp_path / "var", model_dir, receiver.port,
                              console={"enabled": True, "port": taken.getsockname()[1]})
        node = Node(parse_config(raw, "test-config"), classifiers)
        with pytest.raises(ConfigError, match="console.port: cannot listen on 127.0.0.1"):
            node.start(port=0)
        assert node.servers == []  # nothing else was started
        node.db.close()


def test_a_dicom_port_in_use_stops_the_console_started_before_it(tmp_path: Path, model_dir: Path,
                                                                 receiver: Receiver, classifiers) -> None:
    console_port = free_port()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        raw = node_config_raw(tmp_path / "var", model_dir, receiver.port, console={"enabled": True})
        node = Node(parse_config(raw, "test-config"), classifiers)
        with pytest.raises(ConfigError, match="node.port: cannot listen on 127.0.0.1"):
            node.start(port=taken.getsockname()[1], console_port=console_port)
        assert node.console is None
        with pytest.raises(ConnectionRefusedError):  # the console's port is given back
            socket.create_connection(("127.0.0.1", console_port), timeout=5).close()
        node.db.close()


def test_queue_shows_the_series_being_evaluated(tmp_path: Path, console_node: Node, receiver: Receiver) -> None:
    paths = ct_series(tmp_path / "ct", slices=80, size=96)
    assert set(send(paths, console_node.port)) == {0}
    viewer = sign_in(console_node, VIEWER)
    running = wait_for(lambda: re.search(r'id="running"><a href="/series/(\d+)">CT CHEST, 80 image',
                                         viewer.get("/queue").text), timeout=60, interval=0.05)
    assert running
    wait_for(receiver.reports, timeout=120)
    wait_for(lambda: 'id="running">Nothing.' in viewer.get("/queue").text, timeout=30)


def test_upload_check_takes_jpeg(console_node: Node) -> None:
    browser = sign_in(console_node, VIEWER)
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(5).random((256, 256)) * 255).astype(np.uint8)).save(buffer, format="JPEG")
    page = browser.post("/check", data={"model": "lung", "csrf": csrf(browser.get("/check").text)},
                        files={"image": ("slice.jpg", buffer.getvalue(), "image/jpeg")})
    assert page.status_code == 200 and "model <strong>lung</strong>" in page.text
    assert 'id="heatmap"' in page.text


def test_a_removed_user_is_signed_out_at_once(console_node: Node) -> None:
    viewer = sign_in(console_node, VIEWER)
    assert viewer.get("/queue").status_code == 200
    add_user(console_node.db, VIEWER, PASSWORD, "admin", replace=True)  # a role change counts at once
    assert f"{VIEWER} (admin)" in viewer.get("/queue").text
    remove_user(console_node.db, VIEWER)
    assert viewer.get("/queue").status_code == 303


def test_repeated_failed_sign_ins_are_throttled(console_node: Node) -> None:
    browser = client(console_node)
    token = csrf(browser.get("/login").text)
    for _ in range(5):
        wrong = browser.post("/login", data={"name": ADMIN, "password": "wrong guess!", "csrf": token})
        assert wrong.status_code == 401
    blocked = browser.post("/login", data={"name": ADMIN, "password": PASSWORD, "csrf": token})
    assert blocked.status_code == 429 and "too many failed sign-ins" in blocked.text
    assert browser.get("/").status_code == 303  # the right password did not get in while throttled


def test_queue_names_the_node_that_evaluates_a_waiting_series(tmp_path: Path, model_dir: Path,
                                                              receiver: Receiver, classifiers) -> None:
    """In a deployment sharing one database, the console on any node shows which node holds a series."""
    raw = node_config_raw(tmp_path / "var", model_dir, receiver.port, console={"enabled": True, "port": 0})
    for route in raw["routes"]:
        route["series_stable_seconds"] = 3600  # it waits; another node's evaluator holds it below
    node = Node(parse_config(raw, "test-config"), classifiers).start(port=0, console_port=0)
    try:
        add_user(node.db, ADMIN, PASSWORD, "admin")
        add_user(node.db, VIEWER, PASSWORD, "viewer")
        assert set(send(ct_series(tmp_path / "ct", slices=3, size=64), node.port)) == {0}
        viewer = sign_in(node, VIEWER)
        wait_for(lambda: re.search(r'<td class="holder">-</td>', viewer.get("/queue").text), timeout=30)
        elsewhere = Claims(node.db, Series, "evaluator-7", lease_seconds=600)
        assert len(elsewhere.claim(Series.route.is_not(None), order_by=Series.id)) == 1
        assert '<td class="holder">evaluator-7</td>' in viewer.get("/queue").text
        page = viewer.get(f"/series/{series_id(node)}").text
        assert "(evaluating on evaluator-7)" in page
    finally:
        node.stop()
