"""Shared by the console's tests: a node with its console on a free port, users, an HTTP client."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pydicom

from node.config import parse_config
from node.service import Node
from tests.conftest import node_config_raw
from tests.helpers import Receiver, copy_with_new_uids, real_file, send, wait_for

ADMIN, VIEWER, PASSWORD = "ada", "victor", "correct horse battery"
PATIENT_ID = "PAT-0042-XYZ"


def start_console_node(tmp_path: Path, model_dir: Path, receiver: Receiver, classifiers, **console) -> Node:
    raw = node_config_raw(tmp_path / "var", model_dir, receiver.port,
                          console={"enabled": True, "port": 0, **console})
    return Node(parse_config(raw, "test-config"), classifiers).start(port=0, console_port=0)


_OPEN: list[httpx.Client] = []


def close_clients() -> None:
    """Close every client `client` made (each test module calls this after each test)."""
    while _OPEN:
        _OPEN.pop().close()


def client(node: Node) -> httpx.Client:
    """A browser-like HTTP client of the node's console (its own cookies), closed after the test."""
    assert node.console is not None
    _OPEN.append(httpx.Client(base_url=f"http://127.0.0.1:{node.console.port}", timeout=60))
    return _OPEN[-1]


def csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no form token on the page"
    return found.group(1)


def sign_in(node: Node, name: str, password: str = PASSWORD) -> httpx.Client:
    browser = client(node)
    page = browser.get("/login").text
    response = browser.post("/login", data={"name": name, "password": password, "csrf": csrf(page), "next": "/"})
    assert response.status_code == 303, response.text
    return browser


def knee_study(tmp_path: Path, node: Node, receiver: Receiver) -> pydicom.Dataset:
    """One knee radiograph through the node, with a known patient ID; returns the SR the PACS got."""
    path = copy_with_new_uids(real_file("RG3_UNCR.dcm"), tmp_path / "in", PatientID=PATIENT_ID)
    assert send([path], node.port) == [0x0000]
    reports = wait_for(receiver.reports, timeout=60)
    assert isinstance(reports, list)
    return reports[0]


def series_id(node: Node) -> int:
    browser = sign_in(node, VIEWER)
    found = re.search(r'href="/series/(\d+)"', browser.get("/").text)
    assert found
    return int(found.group(1))
